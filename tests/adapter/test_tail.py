"""File tail: rotation by rename and by copytruncate, checkpoint and restart.

The tailer is driven round by round (``poll_once``) on real files, so each
step is deterministic; time (the rotate wait) is trio's virtual clock. Then
the real command, stopped and restarted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from adapter.inputs import Dispatcher
from adapter.inputs.tail import Tailer, load_checkpoint
from adapter.outputs.stdout import StdoutOutput
from adapter.pipeline import Pipeline, PipelineConfig, encode_json

ADAPTER = str(Path(sys.executable).with_name("adapter"))


class Harness:
    """A dispatcher whose stdout output writes into a list."""

    def __init__(self, **config: Any) -> None:
        self.written: list[bytes] = []
        cfg = PipelineConfig(environ={}, **{"multiline": False, **config})
        self.output = StdoutOutput(encode_json, self._sink)
        self.dispatcher = Dispatcher(lambda: Pipeline(cfg), self.output, max_line_bytes=4096)

    async def _sink(self, data: bytes) -> None:
        self.written.append(data)

    async def settle(self) -> None:
        await self.output.drain(trio.current_time() + 5)

    def take(self) -> list[tuple[str, str]]:
        """(file name, message) of every record written since the last call."""
        out = [
            (Path(r["log"]["file"]["path"]).name, r["message"])
            for data in self.written
            for r in map(json.loads, data.splitlines())
        ]
        self.written.clear()
        return out


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    async with trio.open_nursery() as nursery:
        await nursery.start(h.output.run)
        await nursery.start(h.dispatcher.run_timer)
        yield h
        nursery.cancel_scope.cancel()


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


async def poll(tailer: Tailer, h: Harness) -> list[tuple[str, str]]:
    await tailer.poll_once()
    await h.settle()
    return h.take()


async def test_follows_appends_and_holds_a_partial_line(tmp_path: Path, harness: Harness) -> None:
    log = tmp_path / "app.log"
    log.write_text("one\ntwo\npart")
    tailer = Tailer([str(tmp_path / "*.log")], harness.dispatcher)
    assert await poll(tailer, harness) == [("app.log", "one"), ("app.log", "two")]
    append(log, "ial\nthree\n")
    assert await poll(tailer, harness) == [("app.log", "partial"), ("app.log", "three")]
    assert await poll(tailer, harness) == []
    # A file created later is picked up from its start.
    (tmp_path / "other.log").write_text("hello\n")
    assert await poll(tailer, harness) == [("other.log", "hello")]


async def test_rotation_by_rename_loses_nothing(
    tmp_path: Path, harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    log = tmp_path / "app.log"
    log.write_text("a1\na2\n")
    tailer = Tailer([str(log)], harness.dispatcher, rotate_wait=2.0)
    assert await poll(tailer, harness) == [("app.log", "a1"), ("app.log", "a2")]
    with log.open("a") as old:  # the app keeps its descriptor across the rename
        old.write("a3\n")
        old.flush()
        log.rename(tmp_path / "app.log.1")
        log.write_text("b1\n")
        old.write("a4 written late through the old descriptor\n")
    got = await poll(tailer, harness)
    assert sorted(got) == [
        ("app.log", "a3"),  # the open file keeps the name it was opened with
        ("app.log", "a4 written late through the old descriptor"),
        ("app.log", "b1"),
    ]
    assert [m for _, m in got if m.startswith("a")] == [
        "a3",
        "a4 written late through the old descriptor",
    ]
    assert len(harness.dispatcher.sources) == 2
    await trio.sleep(2.5)  # past the rotate wait: the old file is let go
    assert await poll(tailer, harness) == []
    assert len(harness.dispatcher.sources) == 1
    append(log, "b2\n")
    assert await poll(tailer, harness) == [("app.log", "b2")]


async def test_copytruncate_reads_again_from_the_start(tmp_path: Path, harness: Harness) -> None:
    log = tmp_path / "app.log"
    log.write_text("c1\nc2\n")
    tailer = Tailer([str(log)], harness.dispatcher)
    assert await poll(tailer, harness) == [("app.log", "c1"), ("app.log", "c2")]
    shutil.copy(log, tmp_path / "app.log.1")
    with log.open("r+") as f:
        f.truncate(0)
    append(log, "d1\n")
    assert await poll(tailer, harness) == [("app.log", "d1")]
    append(log, "d2\n")
    assert await poll(tailer, harness) == [("app.log", "d2")]


async def restart_once(log: Path, checkpoint: Path) -> list[tuple[str, str]]:
    """One short life of the adapter: resume from ``checkpoint``, read ``log`` once, stop;
    the records it sent."""
    h = Harness()
    async with trio.open_nursery() as nursery:
        await nursery.start(h.output.run)
        tailer = Tailer([str(log)], h.dispatcher, checkpoint=checkpoint)
        tailer._resume()
        await tailer.poll_once()
        await tailer.finish()
        await h.settle()
        nursery.cancel_scope.cancel()
    return h.take()


async def test_restart_from_checkpoint_neither_loses_nor_repeats(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    checkpoint = tmp_path / "tail.pos"
    log.write_text("l1\nl2\nunfinish")
    first = Harness()
    async with trio.open_nursery() as nursery:
        await nursery.start(first.output.run)
        tailer = Tailer([str(log)], first.dispatcher, checkpoint=checkpoint)
        async with trio.open_nursery() as inner:
            await inner.start(tailer.run)
            await trio.sleep(0.3)
            inner.cancel_scope.cancel()
        await tailer.finish()
        await first.settle()
        nursery.cancel_scope.cancel()
    assert first.take() == [("app.log", "l1"), ("app.log", "l2")]
    (entry,) = load_checkpoint(checkpoint).values()
    assert (entry.path, entry.offset) == (str(log), len("l1\nl2\n"))

    append(log, "ed line\nl4\n")  # written while the adapter was down
    second = await restart_once(log, checkpoint)
    assert second == [("app.log", "unfinished line"), ("app.log", "l4")]
    (entry,) = load_checkpoint(checkpoint).values()
    assert entry.offset == log.stat().st_size


async def test_restart_finds_a_file_rotated_while_down(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    checkpoint = tmp_path / "tail.pos"
    log.write_text("r1\n")
    first = await restart_once(log, checkpoint)
    assert first == [("app.log", "r1")]

    append(log, "r2 before rotation\n")
    log.rename(tmp_path / "app.log.1")  # out of the glob's sight
    log.write_text("s1 after rotation\n")
    second = await restart_once(log, checkpoint)
    assert sorted(m for _, m in second) == ["r2 before rotation", "s1 after rotation"]


async def test_periodic_checkpoint_never_covers_a_pending_record(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    log = tmp_path / "app.log"
    log.write_text("first plain line\n")
    h = Harness(multiline=True, flush_timeout=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(h.output.run)
        await nursery.start(h.dispatcher.run_timer)
        tailer = Tailer([str(log)], h.dispatcher, checkpoint=tmp_path / "pos")
        tailer._resume()
        await tailer.poll_once()
        # The line is held (a continuation may follow): a crash now must re-read it.
        (entry,) = tailer.entries(final=False)
        assert entry.offset == 0
        await trio.sleep(1.5)  # flush timeout: the record leaves
        (entry,) = tailer.entries(final=False)
        assert entry.offset == log.stat().st_size
        await h.settle()
        assert h.take() == [("app.log", "first plain line")]
        nursery.cancel_scope.cancel()


def _wait_for_records(proc: subprocess.Popen[bytes], n: int) -> list[str]:
    assert proc.stdout is not None
    out: list[str] = []
    deadline = time.monotonic() + 30
    while len(out) < n and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out.append(json.loads(line)["message"])
    return out


def test_command_tails_rotates_and_resumes(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    checkpoint = tmp_path / "tail.pos"
    log.write_text("".join(f"line {i}\n" for i in range(5)))
    cmd = [
        ADAPTER,
        "run",
        "--log-level",
        "warning",
        "--no-multiline",
        "--tail",
        str(tmp_path / "*.log"),
        "--checkpoint",
        str(checkpoint),
        "--tail-interval",
        "50ms",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        seen = _wait_for_records(proc, 5)
        log.rename(tmp_path / "app.log.1")  # not matched by *.log any more
        log.write_text("line 5\n")
        seen += _wait_for_records(proc, 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    seen += [json.loads(line)["message"] for line in out.splitlines()]
    assert seen == [f"line {i}" for i in range(6)]

    append(log, "line 6\nline 7\n")  # while stopped
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        again = _wait_for_records(proc, 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    again += [json.loads(line)["message"] for line in out.splitlines()]
    assert again == ["line 6", "line 7"]
    assert proc.returncode == 0
    assert os.path.exists(checkpoint)
