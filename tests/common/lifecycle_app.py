"""A small sidecar for test_lifecycle, run as a real child process.

``python tests/common/lifecycle_app.py MARKER_DIR DRAIN_WORK DRAIN_DEADLINE``

It serves TCP on 127.0.0.1 (a free port, logged in the ``serving`` event):
each connection gets ``ready\\n`` or, once draining, ``draining\\n``. On drain it
stops accepting, then does ``DRAIN_WORK`` seconds of "flushing" and writes
``MARKER_DIR/drained``; if the drain is cut off (deadline or second signal)
it writes ``MARKER_DIR/cut-off`` instead. All logs are JSON lines on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from sidecar_common.jsonlog import get_logger, log_event, setup_logging
from sidecar_common.lifecycle import Lifecycle, run_sidecar

log = get_logger("lifecycle_app")


async def serve(lifecycle: Lifecycle, task_status: trio.TaskStatus[int]) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"draining\n" if lifecycle.draining else b"ready\n")

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


def make_main(marker_dir: Path, drain_work: float) -> Callable[[Lifecycle], Awaitable[None]]:
    async def main(lifecycle: Lifecycle) -> None:
        async with trio.open_nursery() as nursery:
            serve_scope = trio.CancelScope()

            async def run_server(task_status: trio.TaskStatus[int]) -> None:
                with serve_scope:
                    await serve(lifecycle, task_status)

            port = await nursery.start(run_server)
            log_event(log, "serving", port=port)
            await lifecycle.wait_drain()
            serve_scope.cancel()  # stop accepting
        log_event(log, "drain work started", seconds=drain_work)
        try:
            await trio.sleep(drain_work)  # "flush buffers"
        except trio.Cancelled:
            (marker_dir / "cut-off").write_text("cut off\n")
            raise
        (marker_dir / "drained").write_text("drained\n")
        log_event(log, "drain work done")

    return main


if __name__ == "__main__":
    marker_dir, drain_work, deadline = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    setup_logging("info")
    main = make_main(marker_dir, drain_work)
    sys.exit(run_sidecar(main, drain_deadline=deadline, name="lifecycle_app"))
