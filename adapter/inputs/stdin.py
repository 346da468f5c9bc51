"""The stdin input: ``app | adapter run``; read until EOF, then flush everything.

A pipe or socket on stdin is read through trio (``FdStream`` on a duplicate of
fd 0: the read end of a pipe is ours alone, so making it non-blocking affects
no one else). A regular file or a terminal cannot be polled with epoll, so
those are read in a worker thread instead.
"""

from __future__ import annotations

import os
import stat

import trio

from . import Dispatcher

__all__ = ["READ_SIZE", "read_fd", "run_stdin"]

READ_SIZE = 65536


async def read_fd(fd: int, dispatcher: Dispatcher, stream: str = "stdout") -> None:
    """Feed everything readable from ``fd`` into a new source until EOF, then close it."""
    source = dispatcher.open(stream)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:  # no stdin at all (fd 0 closed): an empty input
        await dispatcher.close(source)
        return
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        async with trio.lowlevel.FdStream(os.dup(fd)) as pipe:
            while data := await pipe.receive_some(READ_SIZE):
                await dispatcher.feed(source, data)
    else:
        while data := await trio.to_thread.run_sync(os.read, fd, READ_SIZE, abandon_on_cancel=True):
            await dispatcher.feed(source, data)
    # Cancelled (a signal) before EOF, the source stays open: the app closes
    # every source at shutdown, so what was read is still flushed.
    await dispatcher.close(source)


async def run_stdin(dispatcher: Dispatcher) -> int:
    """Read stdin to its end; exit status 0."""
    await read_fd(0, dispatcher)
    return 0
