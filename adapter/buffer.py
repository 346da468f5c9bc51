"""The forward output's chunk queue: bounded memory, then a directory of chunk files.

A chunk is one complete Fluentd forward message (PackedForward mode with the
``chunk`` option), built once and sent as-is, resent as-is until its ``ack``
arrives; so the queue stores bytes, never records, and the bytes on disk are
exactly what goes on the wire.

Order is the queue's order (a sequence number in each chunk, also in each
file name), whatever medium a chunk sits on: the head is sent first. While
the collector answers, chunks stay in memory; when memory is full, new chunks
go to disk (up to ``disk_max_bytes``); when both are full, the drop policy
decides: ``block`` makes the caller wait (backpressure up to the app), the
``drop-*`` policies drop a whole chunk and say so in ``dropped``. Chunk files
left by a previous run are loaded first, ahead of anything new.

Disk I/O here is synchronous: chunk files are small (bounded by the chunk
size), live on local disk (an emptyDir), and are only touched while the
collector is down or at start and exit; the forward shell calls these methods
from a worker thread where latency matters.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Chunk", "ChunkQueue", "QueueFull", "read_chunk_file", "write_atomically"]

_SUFFIX = ".chunk"


class QueueFull(Exception):
    """No room in memory or on disk, and the policy is ``block``: wait and push again."""


@dataclass
class Chunk:
    """One forward message of ``records`` entries; ``payload`` is None while only on disk."""

    seq: int
    chunk_id: str
    records: int
    size: int
    payload: bytes | None = None
    path: Path | None = None
    sent: int = 0  # delivery attempts so far (more than one = retried)

    @staticmethod
    def new_id() -> str:
        # os.urandom is what secrets.token_hex reads; ``secrets`` itself would
        # import hashlib and load OpenSSL (~3.5 MiB resident) for nothing.
        return os.urandom(16).hex()


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one.

    Write a temporary file in the same directory, fsync it, rename it over the
    target (atomic on POSIX), then fsync the directory so the rename survives.
    """
    tmp = path.with_name(f".tmp-{path.name}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_chunk_file(path: Path) -> bytes:
    return path.read_bytes()


@dataclass
class _Totals:
    records: int = 0
    bytes: int = 0


@dataclass
class ChunkQueue:
    """Chunks waiting for their ack, oldest first; see the module docstring.

    ``dropped`` counts records dropped by the policy, by reason. The head may
    be marked in flight (``peek(in_flight=True)``): a ``drop-oldest`` never
    drops the chunk being sent.
    """

    memory_max_bytes: int
    disk_max_bytes: int = 0
    directory: Path | None = None
    drop_policy: str = "block"
    dropped: dict[str, int] = field(default_factory=dict)
    memory: _Totals = field(default_factory=_Totals)
    disk: _Totals = field(default_factory=_Totals)

    def __post_init__(self) -> None:
        self.disk_error: str | None = None  # the last disk failure, for the log
        self.disk_failures = 0
        self._chunks: deque[Chunk] = deque()
        self._next_seq = 0
        self._head_in_flight = False

    # -- state ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def records(self) -> int:
        return self.memory.records + self.disk.records

    def chunks(self) -> list[Chunk]:
        return list(self._chunks)

    def next_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    # -- start-up ------------------------------------------------------------

    def load(self) -> int:
        """Queue the chunk files a previous run left, in order; returns their records."""
        if self.directory is None:
            return 0
        self.directory.mkdir(parents=True, exist_ok=True)
        found: list[Chunk] = []
        for entry in os.scandir(self.directory):
            if entry.name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)  # a write interrupted by a crash
                continue
            chunk = _parse_name(Path(entry.path))
            if chunk is not None:
                chunk.size = entry.stat().st_size
                found.append(chunk)
        found.sort(key=lambda c: c.seq)
        loaded = 0
        for chunk in found:
            self._chunks.append(chunk)
            self.disk.records += chunk.records
            self.disk.bytes += chunk.size
            loaded += chunk.records
            self._next_seq = max(self._next_seq, chunk.seq + 1)
        return loaded

    # -- producer side -------------------------------------------------------

    def push(self, chunk: Chunk, *, force: bool = False) -> list[Chunk]:
        """Queue ``chunk``; returns the chunks the policy dropped (possibly ``chunk`` itself).

        Raises ``QueueFull`` under the ``block`` policy when there is no room.
        ``force`` queues it in memory whatever the limit (at exit, before ``spill``).
        A chunk always fits an empty queue, so an oversized chunk cannot block forever.
        """
        assert chunk.payload is not None
        if force or self.memory.bytes + chunk.size <= self.memory_max_bytes or not self._chunks:
            self._append_memory(chunk)
            return []
        if self._try_disk(chunk):
            return []
        if self.drop_policy == "drop-newest":
            self._count_drop("drop-newest", chunk.records)
            return [chunk]
        if self.drop_policy == "drop-oldest":
            dropped: list[Chunk] = []
            while not self._fits(chunk.size):
                victim = self._oldest_droppable()
                if victim is None:
                    break
                self._remove(victim)
                self._count_drop("drop-oldest", victim.records)
                dropped.append(victim)
            if self.memory.bytes + chunk.size <= self.memory_max_bytes or not self._chunks:
                self._append_memory(chunk)
                return dropped
            if self._try_disk(chunk):
                return dropped
            self._count_drop("drop-oldest", chunk.records)
            return [*dropped, chunk]
        raise QueueFull

    def _fits(self, size: int) -> bool:
        return self.memory.bytes + size <= self.memory_max_bytes or self._disk_has_room(size)

    def _disk_has_room(self, size: int) -> bool:
        return self.directory is not None and self.disk.bytes + size <= self.disk_max_bytes

    def _oldest_droppable(self) -> Chunk | None:
        start = 1 if self._head_in_flight else 0
        return self._chunks[start] if len(self._chunks) > start else None

    def _count_drop(self, reason: str, records: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + records

    def _append_memory(self, chunk: Chunk) -> None:
        self._chunks.append(chunk)
        self.memory.records += chunk.records
        self.memory.bytes += chunk.size

    def _try_disk(self, chunk: Chunk) -> bool:
        """Queue ``chunk`` on disk if there is room and the write works.

        A failing disk (full, read-only, gone) counts as no room: the policy
        then decides, as when the limit is reached; ``disk_error`` says why.
        """
        if not self._disk_has_room(chunk.size):
            return False
        try:
            self._append_disk(chunk)
        except OSError as exc:
            self.disk_error = f"{chunk.path or self.directory}: {exc.strerror or exc}"
            self.disk_failures += 1
            chunk.path = None
            return False
        return True

    def _append_disk(self, chunk: Chunk) -> None:
        self._store(chunk)
        chunk.payload = None
        self._chunks.append(chunk)
        self.disk.records += chunk.records
        self.disk.bytes += chunk.size

    def _store(self, chunk: Chunk) -> None:
        assert self.directory is not None and chunk.payload is not None
        path = self.directory / f"{chunk.seq:016d}-{chunk.records}-{chunk.chunk_id}{_SUFFIX}"
        write_atomically(path, chunk.payload)
        chunk.path = path

    # -- consumer side -------------------------------------------------------

    def peek(self) -> Chunk | None:
        """The head chunk, with its payload (read back from disk if need be), now in flight.

        A chunk file that cannot be read back (deleted or damaged behind our
        back) is dropped and counted under ``unreadable``, never retried forever.
        """
        while self._chunks:
            chunk = self._chunks[0]
            if chunk.payload is None:
                assert chunk.path is not None
                try:
                    chunk.payload = read_chunk_file(chunk.path)
                except OSError as exc:
                    self.disk_error = f"{chunk.path}: {exc.strerror or exc}"
                    self._remove(chunk)
                    self._count_drop("unreadable", chunk.records)
                    continue
            self._head_in_flight = True
            return chunk
        return None

    def done(self, chunk: Chunk) -> None:
        """``chunk`` (the head) was acked: forget it and delete its file."""
        self._remove(chunk)
        self._head_in_flight = False

    def _remove(self, chunk: Chunk) -> None:
        self._chunks.remove(chunk)
        if chunk.path is not None:
            self.disk.records -= chunk.records
            self.disk.bytes -= chunk.size
            with contextlib.suppress(FileNotFoundError):
                os.unlink(chunk.path)
            chunk.path = None
        else:
            self.memory.records -= chunk.records
            self.memory.bytes -= chunk.size

    def release_head(self) -> None:
        """The head is no longer being sent (the connection broke); drop its disk copy from RAM."""
        self._head_in_flight = False
        if self._chunks:
            head = self._chunks[0]
            if head.path is not None:
                head.payload = None

    # -- shutdown ------------------------------------------------------------

    def spill(self) -> int:
        """Move every in-memory chunk to disk (at exit); returns the records that could not go."""
        if self.directory is None:
            return self.memory.records
        left = 0
        for chunk in list(self._chunks):
            if chunk.path is not None:
                continue
            # At exit the disk limit yields: losing records is worse than a full buffer dir.
            try:
                self._store(chunk)
            except OSError as exc:
                self.disk_error = f"{self.directory}: {exc.strerror or exc}"
                self.disk_failures += 1
                left += chunk.records
                continue
            self.memory.records -= chunk.records
            self.memory.bytes -= chunk.size
            chunk.payload = None
            self.disk.records += chunk.records
            self.disk.bytes += chunk.size
        return left


def _parse_name(path: Path) -> Chunk | None:
    """``<seq>-<records>-<chunk id>.chunk`` back to a Chunk (without payload)."""
    if not path.name.endswith(_SUFFIX):
        return None
    parts = path.name[: -len(_SUFFIX)].split("-")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return Chunk(seq=int(parts[0]), chunk_id=parts[2], records=int(parts[1]), size=0, path=path)
