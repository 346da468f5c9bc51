"""JSON lines on stdout, each record written as soon as it is complete.

No batching window: ``write`` appends the encoded lines to a pending buffer
and wakes the writer task, which writes whatever is pending in one system
call. Under load the buffer naturally coalesces many records per write (the
writer is busy while more arrive); when idle, a single record goes out at
once. The write never blocks the event loop (see :func:`fd_sink`), so a slow
reader downstream never stalls it (and with it the admin server); a full
pending buffer makes ``write`` wait, which is the backpressure the app's pipe
feels.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

import trio

from .. import OutputError
from . import OutputStats, Record

__all__ = ["StdoutOutput", "fd_sink"]

Sink = Callable[[bytes], Awaitable[None]]
#: Above this many pending bytes ``write`` waits for the writer to catch up.
MAX_PENDING_BYTES = 1 << 20


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# Errors of a descriptor that cannot be written without blocking (a regular file, a terminal
# on some kernels): written from a worker thread instead.
_NO_NOWAIT = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ESPIPE, errno.ENOSYS})


def fd_sink(fd: int) -> Sink:
    """A sink writing to file descriptor ``fd`` without ever blocking the event loop.

    A pipe or socket (what stdout is under a container runtime or ``| next``) is written
    with ``RWF_NOWAIT``, waiting for it to become writable in trio when it is full: no
    thread, no change to the descriptor's flags (which other processes may share). A
    descriptor that does not support that is written from a worker thread.
    """
    nowait = hasattr(os, "RWF_NOWAIT")

    async def sink(data: bytes) -> None:
        nonlocal nowait
        view = memoryview(data)
        try:
            while view and nowait:
                try:
                    view = view[os.pwritev(fd, [view], -1, os.RWF_NOWAIT) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(fd)
                except OSError as exc:
                    if exc.errno not in _NO_NOWAIT:
                        raise
                    nowait = False
            if view:
                await trio.to_thread.run_sync(_write_all, fd, view)
        except OSError as exc:  # EPIPE: the reader went away; nothing more can be written
            raise OutputError(f"cannot write to fd {fd}: {exc.strerror or exc}") from exc

    return sink


class StdoutOutput:
    """Records as JSON lines to ``sink`` (stdout by default)."""

    name = "stdout"

    def __init__(
        self,
        encode: Callable[[Record], bytes],
        sink: Sink | None = None,
        *,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self._encode = encode
        self._sink = sink if sink is not None else fd_sink(1)
        self._max_pending = max_pending_bytes
        self._pending = bytearray()
        self._pending_records = 0
        self._writing = 0
        self._wakeup = trio.Event()
        self._progress = trio.Event()
        self.stats = OutputStats()

    async def write(self, records: list[Record]) -> None:
        if not records:
            return
        # Appended one by one: each encoded line is freed at once. (Joining them first held a
        # read's worth of small objects at the same time: +4 MB of peak RSS on short lines.)
        encode = self._encode
        pending = self._pending
        for record in records:
            pending += encode(record)
            pending += b"\n"
        self._pending_records += len(records)
        self.stats.queued = self._pending_records + self._writing
        self._wakeup.set()
        while len(self._pending) > self._max_pending:
            await self._wait_progress()

    async def _wait_progress(self) -> None:
        if self._progress.is_set():
            self._progress = trio.Event()
        await self._progress.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._pending:
                data = bytes(self._pending)
                self._pending.clear()
                self._writing, self._pending_records = self._pending_records, 0
                # Shielded: a write cut off half-way would leave a torn JSON line.
                with trio.CancelScope(shield=True):
                    await self._sink(data)
                self.stats.delivered += self._writing
                self._writing = 0
                self.stats.queued = self._pending_records
                self._progress.set()

    async def drain(self, deadline: float) -> None:
        """Wait until everything taken has been written (the deadline is the caller's)."""
        with trio.move_on_at(deadline):
            while self._pending or self._writing:
                self._wakeup.set()
                await self._wait_progress()
