"""Wrap mode: ``adapter run [options] -- CMD ARGS...``.

The adapter starts the app itself, so it can do what a shell pipe cannot:
read stdout and stderr as two streams (each record says which), pass on the
signals the container runtime sends (SIGTERM, SIGINT, SIGHUP) and, once the
app has exited and everything it wrote is flushed, exit with the app's own
status (128+N when the app was killed by signal N), which is what the
kubelet and a restart policy look at.

The app runs in its own process group, so a Ctrl-C in a terminal reaches it
once, through us, rather than twice. Its stdin is ours.
"""

from __future__ import annotations

import errno
import logging
import subprocess
from collections.abc import AsyncIterator

import trio

from sidecar_common.jsonlog import get_logger, log_event

from . import Dispatcher

__all__ = ["PIPE_GRACE", "exit_status", "run_wrapped"]

log = get_logger("adapter.wrap")

READ_SIZE = 65536
#: After the app exits, how long a grandchild holding its stdout open may keep writing.
PIPE_GRACE = 5.0


def exit_status(returncode: int) -> int:
    """The status a shell would report: the code, or 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


async def _pump(stream: trio.abc.ReceiveStream, name: str, dispatcher: Dispatcher) -> None:
    source = dispatcher.open(name)
    async with stream:
        while data := await stream.receive_some(READ_SIZE):
            await dispatcher.feed(source, data)
    await dispatcher.close(source)


async def run_wrapped(cmd: list[str], dispatcher: Dispatcher, signals: AsyncIterator[int]) -> int:
    """Run ``cmd`` until it exits, its output through ``dispatcher``; returns its exit status."""
    try:
        process = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0
        )
    except OSError as exc:
        # The shell's convention: 127 not found, 126 found but not executable.
        status = 127 if exc.errno == errno.ENOENT else 126
        log_event(
            log,
            "cannot start the app",
            level=logging.ERROR,
            command=cmd,
            error=exc.strerror or str(exc),
            exit_status=status,
        )
        return status
    log_event(log, "app started", command=cmd, pid=process.pid)
    assert process.stdout is not None and process.stderr is not None
    async with trio.open_nursery() as nursery:
        pumps_done = trio.Event()

        async def pumps() -> None:
            async with trio.open_nursery() as inner:
                assert process.stdout is not None and process.stderr is not None
                inner.start_soon(_pump, process.stdout, "stdout", dispatcher)
                inner.start_soon(_pump, process.stderr, "stderr", dispatcher)
            pumps_done.set()

        async def forward_signals() -> None:
            async for signum in signals:
                if process.returncode is None:
                    log_event(log, "signal forwarded to the app", signal=signum, pid=process.pid)
                    process.send_signal(signum)

        nursery.start_soon(pumps)
        nursery.start_soon(forward_signals)
        returncode = await process.wait()
        with trio.move_on_after(PIPE_GRACE):
            await pumps_done.wait()
        if not pumps_done.is_set():
            log_event(
                log,
                "the app exited but its output pipes stay open; closing them",
                level=logging.WARNING,
                pid=process.pid,
            )
        nursery.cancel_scope.cancel()
    status = exit_status(returncode)
    log_event(log, "app exited", pid=process.pid, exit_status=status)
    return status
