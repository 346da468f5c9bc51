"""The trio <-> asyncio bridge: one asyncio loop in a thread, results, errors, cancellation."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from ambassador.errors import BridgeClosed
from ambassador.pgbridge import open_asyncio_bridge


async def test_results_errors_and_the_loop_thread() -> None:
    async with open_asyncio_bridge() as bridge:
        assert bridge.running

        async def answer() -> tuple[int, str, bool]:
            await asyncio.sleep(0)
            running = asyncio.get_running_loop() is bridge.loop
            return 42, threading.current_thread().name, running

        assert await bridge.run(answer) == (42, "ambassador-asyncio", True)

        async def boom() -> None:
            raise KeyError("from asyncio")

        with pytest.raises(KeyError, match="from asyncio"):
            await bridge.run(boom)
    assert not bridge.running
    assert bridge.loop.is_closed()


async def test_many_concurrent_calls_share_one_loop() -> None:
    results: dict[int, int] = {}
    threads: set[int] = set()
    async with open_asyncio_bridge() as bridge:

        async def work(i: int) -> int:
            threads.add(threading.get_ident())
            await asyncio.sleep(0.001 * (i % 7))
            return i * i

        async def one(i: int) -> None:
            results[i] = await bridge.run(lambda: work(i))

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert results == {i: i * i for i in range(200)}
    assert len(threads) == 1 and threading.get_ident() not in threads


async def test_a_trio_cancel_cancels_the_asyncio_task_and_the_loop_stays_usable() -> None:
    cancelled = threading.Event()
    async with open_asyncio_bridge() as bridge:

        async def hang() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with trio.move_on_after(0.05) as scope:
            await bridge.run(hang)
        assert scope.cancelled_caught
        # The asyncio task saw its cancellation (in its own thread, soon after).
        assert await trio.to_thread.run_sync(cancelled.wait, 10.0)

        async def still_there() -> str:
            return "ok"

        assert await bridge.run(still_there) == "ok"
        pending = asyncio.run_coroutine_threadsafe(_task_count(), bridge.loop).result(5)
        assert pending == 1  # only the counting task itself: nothing leaked


async def _task_count() -> int:
    return len(asyncio.all_tasks())


async def test_closing_cancels_what_is_left_on_the_loop() -> None:
    cleaned = threading.Event()
    started = trio.Event()

    async def lingering() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.set()

    async with open_asyncio_bridge() as bridge:
        token = trio.lowlevel.current_trio_token()

        def submit() -> None:
            asyncio.run_coroutine_threadsafe(lingering(), bridge.loop)
            token.run_sync_soon(started.set)

        await trio.to_thread.run_sync(submit)
        await started.wait()
    assert cleaned.is_set()


async def test_a_closed_bridge_refuses_work() -> None:
    async with open_asyncio_bridge() as bridge:
        pass

    async def never() -> None:  # pragma: no cover - must not run
        raise AssertionError

    with pytest.raises(BridgeClosed):
        await bridge.run(never)


async def test_the_bridge_closes_when_its_owner_is_cancelled() -> None:
    with trio.move_on_after(0.05):
        async with open_asyncio_bridge() as bridge:
            await trio.sleep_forever()
    assert not bridge.running and bridge.loop.is_closed()
