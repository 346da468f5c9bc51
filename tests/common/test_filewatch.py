"""The ConfigMap-aware file watcher: a pure tracker on virtual time, then real disks.

The on-disk tests reproduce kubelet's AtomicWriter exactly (timestamped
directory, ``..data`` symlink, ``..data_tmp`` renamed over it, old directory
removed: ``demo.configmap.write_configmap``, the project's one copy) and an
editor's save, and run them against ``watch_paths`` with the real clock, a short poll
interval and a short debounce.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from demo.configmap import write_configmap
from sidecar_common import filewatch
from sidecar_common.filewatch import Change, ChangeTracker, DigestCache, snapshot_paths, watch_paths


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# Pure core: (time, snapshot) steps -> changes fired at that step.

A, B, C = "a" * 64, "b" * 64, "c" * 64

Step = tuple[float, dict[str, str | None], list[Change]]

TABLES: dict[str, list[Step]] = {
    "baseline fires nothing": [
        (0.0, {"/f": A}, []),
        (5.0, {"/f": A}, []),
    ],
    "one change fires once after the window": [
        (0.0, {"/f": A}, []),
        (1.0, {"/f": B}, []),
        (1.4, {"/f": B}, []),
        (1.5, {"/f": B}, [Change("/f", A, B)]),
        (2.0, {"/f": B}, []),
        (9.0, {"/f": B}, []),
    ],
    "burst inside the window is one change": [
        (0.0, {"/f": A}, []),
        (1.0, {"/f": B}, []),
        (1.2, {"/f": C}, []),
        (1.4, {"/f": B}, []),
        (1.6, {"/f": C}, []),
        (2.0, {"/f": C}, []),
        (2.1, {"/f": C}, [Change("/f", A, C)]),
        (3.0, {"/f": C}, []),
    ],
    "touch without change fires nothing": [
        (0.0, {"/f": A}, []),
        (1.0, {"/f": A}, []),
        (2.0, {"/f": A}, []),
    ],
    "change and change back inside the window fires nothing": [
        (0.0, {"/f": A}, []),
        (1.0, {"/f": None}, []),
        (1.1, {"/f": A}, []),
        (5.0, {"/f": A}, []),
    ],
    "missing path appears later is one change": [
        (0.0, {"/f": None}, []),
        (3.0, {"/f": None}, []),
        (4.0, {"/f": A}, []),
        (4.5, {"/f": A}, [Change("/f", None, A)]),
        (6.0, {"/f": A}, []),
    ],
    "deleted path is one change": [
        (0.0, {"/f": A}, []),
        (1.0, {"/f": None}, []),
        (1.5, {"/f": None}, [Change("/f", A, None)]),
        (3.0, {"/f": None}, []),
    ],
    "deleted from a directory snapshot (key gone) is one change": [
        (0.0, {"/d/x": A, "/d/y": B}, []),
        (1.0, {"/d/x": A}, []),
        (1.5, {"/d/x": A}, [Change("/d/y", B, None)]),
    ],
    "several keys of one update are one batch": [
        (0.0, {"/d/x": A, "/d/y": A}, []),
        (1.0, {"/d/x": B, "/d/y": A}, []),
        (1.3, {"/d/x": B, "/d/y": C}, []),
        (1.8, {"/d/x": B, "/d/y": C}, [Change("/d/x", A, B), Change("/d/y", A, C)]),
    ],
    "a second real change fires again": [
        (0.0, {"/f": A}, []),
        (1.0, {"/f": B}, []),
        (1.5, {"/f": B}, [Change("/f", A, B)]),
        (2.0, {"/f": A}, []),
        (2.5, {"/f": A}, [Change("/f", B, A)]),
    ],
}


@pytest.mark.parametrize("name", list(TABLES))
def test_tracker_table(name: str) -> None:
    tracker = ChangeTracker(debounce=0.5)
    for now, snap, expected in TABLES[name]:
        assert tracker.observe(now, snap) == expected, (name, now)


def test_tracker_deadline_follows_last_difference() -> None:
    tracker = ChangeTracker(debounce=0.5)
    tracker.observe(0.0, {"/f": A})
    assert tracker.deadline() is None and not tracker.pending
    tracker.observe(1.0, {"/f": B})
    assert tracker.deadline() == 1.5
    tracker.observe(1.2, {"/f": C})
    assert tracker.deadline() == 1.7
    assert tracker.observe(1.7, {"/f": C}) == [Change("/f", A, C)]
    assert tracker.deadline() is None


def test_tracker_zero_debounce_fires_on_the_next_observation() -> None:
    tracker = ChangeTracker(debounce=0.0)
    tracker.observe(0.0, {"/f": A})
    assert tracker.observe(0.1, {"/f": B}) == [Change("/f", A, B)]


def test_tracker_rejects_negative_debounce() -> None:
    with pytest.raises(ValueError):
        ChangeTracker(debounce=-1)


# --------------------------------------------------------------------------
# snapshot_paths on a real directory.


def test_snapshot_file_directory_and_missing(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"one")
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "x").write_bytes(b"x")
    (d / "sub" / "y").write_bytes(b"y")
    (d / "..hidden").write_bytes(b"kubelet bookkeeping")
    snap = snapshot_paths([tmp_path / "f", d, tmp_path / "missing"])
    assert snap == {
        str(tmp_path / "f"): sha(b"one"),
        str(d / "x"): sha(b"x"),
        str(d / "sub" / "y"): sha(b"y"),
        str(tmp_path / "missing"): None,
    }


def test_snapshot_survives_a_symlink_loop(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "loop").symlink_to(d)
    (d / "x").write_bytes(b"x")
    snap = snapshot_paths([d])
    assert snap[str(d / "x")] == sha(b"x")


def test_digest_cache_rehashes_only_when_identity_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = filewatch._hash_file

    def counting(path: str) -> str | None:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(filewatch, "_hash_file", counting)
    f = tmp_path / "f"
    f.write_bytes(b"one")
    cache = DigestCache()
    assert cache.digest(str(f)) == sha(b"one")
    assert cache.digest(str(f)) == sha(b"one")
    assert len(calls) == 1
    f.write_bytes(b"two!")
    assert cache.digest(str(f)) == sha(b"two!")
    assert len(calls) == 2


# --------------------------------------------------------------------------
# Real disks through watch_paths (real clock, short interval and debounce).

INTERVAL = 0.02
DEBOUNCE = 0.1
# Quiet period in which no further batch may arrive: many debounce windows.
QUIET = 0.6


def timestamped_dirs(volume: Path) -> list[str]:
    """The volume's timestamped data directories (kubelet's ``..<time>``), not its links."""
    return sorted(
        p.name
        for p in volume.iterdir()
        if p.name.startswith("..") and p.name not in ("..data", "..data_tmp")
    )


async def collect_batches(
    paths: list[Path], action: object, *, quiet: float = QUIET
) -> list[list[Change]]:
    """Start watch_paths, run ``action`` (sync callable), then gather batches."""
    send, recv = trio.open_memory_channel[list[Change]](10)
    batches: list[list[Change]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: watch_paths(
                paths,
                send_channel=send,
                interval=INTERVAL,
                debounce=DEBOUNCE,
                task_status=task_status,
            )
        )
        assert callable(action)
        action()
        with trio.move_on_after(quiet):
            async for batch in recv:
                batches.append(batch)
        nursery.cancel_scope.cancel()
    return batches


async def test_configmap_atomic_writer_update_fires_exactly_once(tmp_path: Path) -> None:
    vol = tmp_path / "config"
    write_configmap(vol, {"app.conf": "level=info\n", "extra.conf": "same\n"})
    [first] = timestamped_dirs(vol)

    def update() -> None:
        write_configmap(vol, {"app.conf": "level=debug\n", "extra.conf": "same\n"})

    batches = await collect_batches([vol], update)
    assert batches == [[Change(str(vol / "app.conf"), sha(b"level=info\n"), sha(b"level=debug\n"))]]
    # The old timestamped directory is gone: the update really was a swap.
    assert timestamped_dirs(vol) == [os.readlink(vol / "..data")]
    assert first not in timestamped_dirs(vol)


async def test_configmap_single_key_watched_through_its_symlink(tmp_path: Path) -> None:
    vol = tmp_path / "secret"
    write_configmap(vol, {"token": "old"})

    def update() -> None:
        write_configmap(vol, {"token": "new"})

    batches = await collect_batches([vol / "token"], update)
    assert batches == [[Change(str(vol / "token"), sha(b"old"), sha(b"new"))]]


async def test_configmap_rewrite_with_same_content_fires_nothing(tmp_path: Path) -> None:
    vol = tmp_path / "config"
    write_configmap(vol, {"app.conf": "x"})
    batches = await collect_batches([vol], lambda: write_configmap(vol, {"app.conf": "x"}))
    assert batches == []


async def test_editor_temp_file_and_rename_fires_at_most_once(tmp_path: Path) -> None:
    d = tmp_path / "conf"
    d.mkdir()
    target = d / "app.conf"
    target.write_bytes(b"a=1\n")

    def editor_save() -> None:
        # vim: probe file, backup, write a swap/temp file, rename over the target.
        probe = d / "4913"
        probe.write_bytes(b"")
        probe.unlink()
        (d / "app.conf~").write_bytes(target.read_bytes())
        tmp = d / ".app.conf.swp"
        tmp.write_bytes(b"a=2\n")
        os.rename(tmp, target)
        (d / "app.conf~").unlink()

    batches = await collect_batches([d], editor_save)
    assert len(batches) <= 1
    changes = [c for batch in batches for c in batch]
    assert changes == [Change(str(target), sha(b"a=1\n"), sha(b"a=2\n"))]


async def test_touch_without_change_fires_nothing(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"same")
    batches = await collect_batches([f], lambda: os.utime(f, ns=(1, 1)))
    assert batches == []


async def test_burst_of_writes_fires_once(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"v0")

    def burst() -> None:
        for i in range(1, 20):
            f.write_bytes(f"v{i}".encode())

    batches = await collect_batches([f], burst)
    assert batches == [[Change(str(f), sha(b"v0"), sha(b"v19"))]]


async def test_missing_path_is_waited_for_then_fires_once(tmp_path: Path) -> None:
    vol = tmp_path / "later"

    def appear() -> None:
        write_configmap(vol, {"k": "v"})

    batches = await collect_batches([vol / "k"], appear)
    assert batches == [[Change(str(vol / "k"), None, sha(b"v"))]]


async def test_deleted_file_fires_once(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"bye")
    batches = await collect_batches([f], f.unlink)
    assert batches == [[Change(str(f), sha(b"bye"), None)]]


# --------------------------------------------------------------------------
# Property: whatever the sequence, the fired changes chain correctly and end
# at the final state once things are quiet; nothing fires inside the window.

_digest = st.sampled_from([None, A, B, C])
_steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
        st.fixed_dictionaries({"/x": _digest, "/y": _digest}),
    ),
    max_size=30,
)


@given(first=st.fixed_dictionaries({"/x": _digest, "/y": _digest}), steps=_steps)
def test_tracker_property(
    first: dict[str, str | None], steps: list[tuple[float, dict[str, str | None]]]
) -> None:
    debounce = 0.5
    tracker = ChangeTracker(debounce)
    tracker.observe(0.0, first)
    state = {k: v for k, v in first.items() if v is not None}
    now = 0.0
    last_difference = 0.0
    previous = state.copy()
    for dt, snap in steps:
        now += dt
        current = {k: v for k, v in snap.items() if v is not None}
        if current != previous:
            last_difference = now
            previous = current
        fired = tracker.observe(now, snap)
        if fired:
            # The tracker's contract, in its own arithmetic: the deadline is last + debounce
            # (now - last can round below debounce when now equals that deadline exactly).
            assert now >= last_difference + debounce
        for change in fired:
            assert change.old_digest == state.get(change.path) != change.new_digest
            if change.new_digest is None:
                del state[change.path]
            else:
                state[change.path] = change.new_digest
    final = steps[-1][1] if steps else first
    for change in tracker.observe(now + debounce, final):
        if change.new_digest is None:
            state.pop(change.path)
        else:
            state[change.path] = change.new_digest
    assert state == {k: v for k, v in final.items() if v is not None}
