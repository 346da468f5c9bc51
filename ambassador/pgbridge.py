"""Run asyncio coroutines (asyncpg) from trio: one asyncio loop in one dedicated thread.

asyncpg only speaks asyncio; the ambassador is trio. Rather than a thread per
call, ONE asyncio event loop runs forever in a daemon thread for the life of
the bridge, and trio tasks submit coroutines to it:

- ``run(factory)`` schedules ``factory()`` on the loop with
  ``asyncio.run_coroutine_threadsafe`` and sleeps on a ``trio.Event``; the
  future's done-callback (run in the asyncio thread) wakes it through the trio
  token, so a waiting trio task costs no thread.
- Cancellation crosses the bridge: when the trio caller is cancelled (its
  cancel scope expired), the concurrent future is cancelled, which cancels the
  asyncio task in its own thread; the trio caller returns at once and the loop
  stays usable for the next call.
- ``open_asyncio_bridge()`` is the only way to get one: entering starts the
  thread, leaving cancels whatever is still running on the loop, lets it finish
  its cleanup, stops the loop, joins the thread and closes the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from .errors import BridgeClosed

T = TypeVar("T")

#: How long closing waits for tasks still running on the loop to finish their cleanup.
_SHUTDOWN_GRACE = 5.0


class AsyncioBridge:
    """Handle on the asyncio loop thread; get one from ``open_asyncio_bridge()``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._loop = loop
        self._thread = thread
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def running(self) -> bool:
        return not self._closed and self._loop.is_running()

    async def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Await ``factory()`` on the asyncio loop; its result or exception comes back here.

        ``factory`` is called in the asyncio thread (so asyncio objects are created
        where they live). A trio cancellation of the caller cancels the asyncio
        task. Raises ``BridgeClosed`` if the bridge is not running or closes
        under the call.
        """
        if self._closed:
            raise BridgeClosed("the asyncio bridge is closed")

        async def runner() -> T:
            return await factory()

        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: concurrent.futures.Future[T]) -> None:
            # If the trio run is over, nobody is waiting any more.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        coro = runner()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError as exc:  # the loop was closed
            coro.close()
            raise BridgeClosed("the asyncio bridge is closed") from exc
        future.add_done_callback(wake)
        try:
            await done.wait()
        finally:
            if not future.done():
                # Cancelled (or any other exit while waiting): cancel the asyncio
                # task too. Future.cancel() schedules task.cancel() on the loop.
                future.cancel()
        try:
            return future.result()
        except concurrent.futures.CancelledError as exc:
            raise BridgeClosed("the asyncio task was cancelled by the bridge closing") from exc

    async def _shutdown_loop(self) -> None:
        """Run on the loop: cancel every other task, let them clean up, stop the loop."""
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_SHUTDOWN_GRACE)
        await self._loop.shutdown_asyncgens()
        self._loop.stop()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._shutdown_loop(), self._loop)
            del future  # the loop stops itself; joining the thread is the wait
        # Joining must not block trio; the shutdown is bounded by _SHUTDOWN_GRACE.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)
        self._loop.close()


def _serve_loop(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    loop.run_forever()


@asynccontextmanager
async def open_asyncio_bridge(name: str = "ambassador-asyncio") -> AsyncIterator[AsyncioBridge]:
    """Start the asyncio thread; stop it cleanly on exit (even when cancelled)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    thread = threading.Thread(target=_serve_loop, args=(loop, started), name=name, daemon=True)
    thread.start()
    await trio.to_thread.run_sync(started.wait)
    bridge = AsyncioBridge(loop, thread)
    try:
        yield bridge
    finally:
        await bridge.aclose()
