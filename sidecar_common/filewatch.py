"""A file and directory watcher that survives Kubernetes ConfigMap and Secret volumes.

kubelet never edits a projected file in place. Its AtomicWriter writes every key
into a new timestamped directory (``..2026_11_25_20_30_00.123``), points a
``..data_tmp`` symlink at it, renames that over ``..data`` and removes the old
directory; the user-visible ``key`` is a symlink to ``..data/key``. An inotify
watch on ``key`` therefore sees nothing, and a watch on the directory sees a
storm of events for one logical change.

So we poll and compare content: a snapshot maps every watched file (symlinks
followed, so the ``..data`` swap is seen) to a sha256 digest, and a pure
:class:`ChangeTracker` turns a sequence of snapshots into changes with a
trailing-edge debounce. One real content change fires exactly once; a touch,
a burst of writes, or an editor's temp-file-and-rename dance fires at most once;
a missing path is simply ``None`` until it appears. Polling costs a few
``stat`` calls per interval: a file is re-hashed only when its identity
(dev, inode, size, mtime, ctime) changed.
"""

from __future__ import annotations

import importlib
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

__all__ = [
    "Change",
    "ChangeTracker",
    "DigestCache",
    "snapshot_paths",
    "watch_paths",
]

Snapshot = Mapping[str, str | None]

# Read files in 64 KiB chunks: a Secret is small, but a watched directory may
# hold a large bundle and we never want it whole in memory.
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Change:
    """One path whose content differs from the last fired state.

    ``old_digest`` is None when the path appeared, ``new_digest`` is None when
    it was deleted. Digests are lowercase hex sha256 of the content; the
    content itself is never kept (Secrets).
    """

    path: str
    old_digest: str | None
    new_digest: str | None


class ChangeTracker:
    """Turn snapshots taken over time into debounced changes (no I/O).

    The first snapshot is the baseline and fires nothing. After that, any
    difference from the previous snapshot restarts a single debounce timer for
    the whole watched set (a ConfigMap update touches several keys at once and
    must be one reload, not one per key). When the snapshots have been stable
    for ``debounce`` seconds, every path whose digest differs from the last
    fired state is reported once, in one batch. A value that changes and comes
    back inside the window (touch, editor dance) differs from nothing and
    fires nothing.
    """

    def __init__(self, debounce: float) -> None:
        if debounce < 0:
            raise ValueError("debounce must be >= 0")
        self.debounce = debounce
        # Only present paths are stored: "missing" is the absence of a key.
        self._fired: dict[str, str] | None = None
        self._last: dict[str, str] = {}
        self._last_change_at: float | None = None

    @property
    def pending(self) -> bool:
        """True while a difference is waiting for the debounce window to pass."""
        return self._last_change_at is not None

    def deadline(self) -> float | None:
        """The time at which pending changes will fire if nothing else moves."""
        if self._last_change_at is None:
            return None
        return self._last_change_at + self.debounce

    def observe(self, now: float, snapshot: Snapshot) -> list[Change]:
        """Feed the snapshot taken at ``now``; return the changes that fire now."""
        current = {path: digest for path, digest in snapshot.items() if digest is not None}
        if self._fired is None:
            self._fired = dict(current)
            self._last = dict(current)
            return []
        if current != self._last:
            self._last = current
            self._last_change_at = now
        if self._last_change_at is None or now < self._last_change_at + self.debounce:
            return []
        self._last_change_at = None
        changes = [
            Change(path, self._fired.get(path), current.get(path))
            for path in sorted(self._fired.keys() | current.keys())
            if self._fired.get(path) != current.get(path)
        ]
        self._fired = dict(current)
        return changes


@dataclass(frozen=True)
class _Identity:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


class DigestCache:
    """Remembers each file's digest by its stat identity, so polling stays cheap.

    A rename over a file gives a new inode, an in-place write a new mtime or
    size; ctime also catches writers that restore mtime. Only then is the file
    read again.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[_Identity, str]] = {}

    def digest(self, path: str) -> str | None:
        """The sha256 of ``path`` (symlinks followed), or None if it cannot be read."""
        try:
            st = os.stat(path)
        except OSError:
            self._entries.pop(path, None)
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        ident = _Identity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._entries.get(path)
        if cached is not None and cached[0] == ident:
            return cached[1]
        digest = _hash_file(path)
        if digest is None:
            self._entries.pop(path, None)
            return None
        self._entries[path] = (ident, digest)
        return digest

    def forget_except(self, keep: Iterable[str]) -> None:
        """Drop entries for files no longer present (bounded memory)."""
        keep_set = set(keep)
        for path in list(self._entries):
            if path not in keep_set:
                del self._entries[path]


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def _builtin_sha256() -> Callable[[], _Digest]:
    """CPython's own sha256 (``_sha2`` from 3.12, ``_sha256`` in 3.11), not OpenSSL's.

    Why: ``import hashlib`` loads OpenSSL's libcrypto (about 3.5 MiB resident)
    in every process that watches a file, and the ambassador without TLS has no
    other use for it (``sidecar_common.leanstart`` defers ``ssl``). The digests
    are the same; the built-in code is slower, which does not matter for a few
    config files re-hashed only when their identity changes. Falls back to
    ``hashlib`` where the built-in module is missing.
    """
    for name in ("_sha2", "_sha256"):
        try:
            factory: Callable[[], _Digest] = importlib.import_module(name).sha256
        except (ImportError, AttributeError):
            continue
        return factory
    import hashlib

    return hashlib.sha256


_sha256 = _builtin_sha256()


def _hash_file(path: str) -> str | None:
    h = _sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError:
        # Vanished between stat and open (the old kubelet directory is removed
        # right after the swap), or unreadable: "missing" for this poll; the
        # debounce hides the transient state.
        return None
    return h.hexdigest()


def _walk_dir(root: str, out: list[str]) -> None:
    """Collect the visible regular files under ``root``, following symlinks.

    Names starting with ``..`` are kubelet's bookkeeping (``..data``,
    ``..2026_...``) and are skipped; the user-visible symlinks lead to the
    same files. Directories already visited (by dev/inode) are not re-entered,
    so a symlink loop cannot hang the poll.
    """
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    out.append(entry.path)
            except OSError:
                continue


def snapshot_paths(
    paths: Iterable[str | os.PathLike[str]], *, cache: DigestCache | None = None
) -> dict[str, str | None]:
    """Digest every watched file now (blocking; call it in a thread from trio).

    A file maps to its digest; a directory maps each visible file under it
    (recursively) to its digest; a missing path maps to None, so it is waited
    for rather than an error. Pass the same ``cache`` on every poll to avoid
    re-reading unchanged files.
    """
    cache = cache if cache is not None else DigestCache()
    result: dict[str, str | None] = {}
    for raw in paths:
        path = os.fspath(raw)
        if os.path.isdir(path):
            files: list[str] = []
            _walk_dir(path, files)
            for file in files:
                result[file] = cache.digest(file)
        else:
            result[path] = cache.digest(path)
    cache.forget_except(result)
    return result


async def watch_paths(
    paths: Iterable[str | os.PathLike[str]],
    *,
    send_channel: trio.MemorySendChannel[list[Change]],
    interval: float = 0.25,
    debounce: float = 0.5,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Poll ``paths`` every ``interval`` seconds and send each debounced batch of changes.

    ``task_status.started()`` is called once the baseline snapshot is taken:
    a change made after ``nursery.start(watch_paths, ...)`` returns is seen.
    Never returns; cancel it. The polls run in a worker thread because hashing
    is blocking file I/O.
    """
    watched = [os.fspath(p) for p in paths]
    cache = DigestCache()
    tracker = ChangeTracker(debounce)

    async def poll() -> list[Change]:
        snap = await trio.to_thread.run_sync(lambda: snapshot_paths(watched, cache=cache))
        return tracker.observe(trio.current_time(), snap)

    await poll()
    task_status.started()
    while True:
        # Wake at the debounce deadline if it comes before the next poll, so
        # a change fires ``debounce`` after it settled, not up to one
        # ``interval`` later.
        wake = trio.current_time() + interval
        deadline = tracker.deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        await trio.sleep_until(wake)
        changes = await poll()
        if changes:
            await send_channel.send(changes)
