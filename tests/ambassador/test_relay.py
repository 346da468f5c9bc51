"""The relay on in-memory streams, under trio's virtual clock.

Each test is a scripted conversation: the app on one end, the backend on the
other, the relay in the middle; assertions on what each end sees, the exact
byte counts and (with autojump_clock) the exact virtual time.
"""

from __future__ import annotations

import trio
import trio.testing
from trio.abc import HalfCloseableStream

from ambassador.relay import RelayCounters, RelayResult, relay


class Resettable(HalfCloseableStream):
    """A memory stream whose peer can "reset" it: the next receive/send breaks."""

    def __init__(self, inner: HalfCloseableStream) -> None:
        self.inner = inner
        self.reset = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.reset.is_set():
            raise trio.BrokenResourceError("connection reset by peer")
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        async with trio.open_nursery() as nursery:
            result: list[bytes] = []

            async def receive() -> None:
                result.append(bytes(await self.inner.receive_some(max_bytes)))
                nursery.cancel_scope.cancel()

            nursery.start_soon(receive)
            await self.reset.wait()
            nursery.cancel_scope.cancel()
        if result:
            return result[0]
        raise trio.BrokenResourceError("connection reset by peer")

    async def aclose(self) -> None:
        await self.inner.aclose()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some():
        chunks.append(chunk)
    return b"".join(chunks)


async def run_relay(
    client: HalfCloseableStream,
    upstream: HalfCloseableStream,
    out: list[RelayResult],
    counters: RelayCounters,
    idle_timeout: float | None = None,
) -> None:
    out.append(await relay(client, upstream, counters, idle_timeout=idle_timeout))


async def test_bytes_pass_unchanged_both_ways_and_are_counted(autojump_clock: object) -> None:
    app, client_side = trio.testing.memory_stream_pair()
    upstream_side, backend = trio.testing.memory_stream_pair()
    counters = RelayCounters()
    results: list[RelayResult] = []
    request = bytes(range(256)) * 1000  # 256000 bytes, several chunks
    reply = b"\x00\xffreply" * 7777
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, client_side, upstream_side, results, counters)

        async def backend_side() -> None:
            received = await read_all(backend)
            assert received == request
            await backend.send_all(reply)
            await backend.send_eof()

        nursery.start_soon(backend_side)
        await app.send_all(request)
        await app.send_eof()
        assert await read_all(app) == reply
    assert results == [RelayResult("closed", len(request), len(reply))]
    assert (counters.bytes_in, counters.bytes_out) == (len(request), len(reply))


async def test_client_half_close_keeps_the_reply_direction_open(autojump_clock: object) -> None:
    app, client_side = trio.testing.memory_stream_pair()
    upstream_side, backend = trio.testing.memory_stream_pair()
    results: list[RelayResult] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, client_side, upstream_side, results, RelayCounters())
        await app.send_all(b"query")
        await app.send_eof()
        # The backend sees the request and then EOF...
        assert await read_all(backend) == b"query"
        # ...and answers long after, slowly, in pieces: the client still gets all of it.
        for piece in (b"one ", b"two ", b"three"):
            await trio.sleep(5)
            await backend.send_all(piece)
        await backend.send_eof()
        assert await read_all(app) == b"one two three"
    assert results == [RelayResult("closed", 5, 13)]
    assert trio.current_time() == 15


async def test_backend_half_close_keeps_the_request_direction_open(autojump_clock: object) -> None:
    app, client_side = trio.testing.memory_stream_pair()
    upstream_side, backend = trio.testing.memory_stream_pair()
    results: list[RelayResult] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, client_side, upstream_side, results, RelayCounters())
        await backend.send_all(b"banner")
        await backend.send_eof()
        assert await read_all(app) == b"banner"
        await trio.sleep(3)
        await app.send_all(b"still talking")
        assert await backend.receive_some() == b"still talking"
        await app.send_eof()
        assert await backend.receive_some() == b""
    assert results == [RelayResult("closed", 13, 6)]


async def test_backend_reset_is_reported_and_ends_both_directions(autojump_clock: object) -> None:
    app, client_side = trio.testing.memory_stream_pair()
    upstream_inner, backend = trio.testing.memory_stream_pair()
    upstream_side = Resettable(upstream_inner)
    results: list[RelayResult] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, client_side, upstream_side, results, RelayCounters())
        await app.send_all(b"abc")
        assert await backend.receive_some() == b"abc"
        await backend.send_all(b"de")
        assert await app.receive_some() == b"de"
        upstream_side.reset.set()
    assert results == [RelayResult("upstream_reset", 3, 2)]


async def test_client_reset_is_reported(autojump_clock: object) -> None:
    app, client_inner = trio.testing.memory_stream_pair()
    client_side = Resettable(client_inner)
    upstream_side, backend = trio.testing.memory_stream_pair()
    results: list[RelayResult] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, client_side, upstream_side, results, RelayCounters())
        await app.send_all(b"x" * 10)
        assert await backend.receive_some() == b"x" * 10
        await trio.sleep(1)
        client_side.reset.set()
    assert results == [RelayResult("client_reset", 10, 0)]
    assert trio.current_time() == 1


async def test_send_to_a_gone_client_is_a_client_reset(autojump_clock: object) -> None:
    app, client_side = trio.testing.memory_stream_pair()
    upstream_side, backend = trio.testing.memory_stream_pair()
    results: list[RelayResult] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, client_side, upstream_side, results, RelayCounters())
        await app.aclose()  # the app vanished entirely (not a half-close)
        await backend.send_all(b"late answer")
    assert results[0].outcome == "client_reset"
    assert results[0].bytes_out == 0


async def test_idle_timeout_closes_a_silent_connection(autojump_clock: object) -> None:
    app, client_side = trio.testing.memory_stream_pair()
    upstream_side, backend = trio.testing.memory_stream_pair()
    results: list[RelayResult] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, client_side, upstream_side, results, RelayCounters(), 10.0)
        await trio.sleep(4)
        await app.send_all(b"ping")  # activity at t=4 moves the deadline to t=14
        assert await backend.receive_some() == b"ping"
    assert results == [RelayResult("idle_timeout", 4, 0)]
    assert trio.current_time() == 14


async def test_traffic_keeps_an_idle_timeout_away(autojump_clock: object) -> None:
    app, client_side = trio.testing.memory_stream_pair()
    upstream_side, backend = trio.testing.memory_stream_pair()
    results: list[RelayResult] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, client_side, upstream_side, results, RelayCounters(), 2.0)
        for _ in range(10):  # 15 s of traffic, never 2 s of silence
            await trio.sleep(1.5)
            await backend.send_all(b"tick")
            assert await app.receive_some() == b"tick"
        await app.send_eof()
        await backend.send_eof()
    assert results == [RelayResult("closed", 0, 40)]
    assert trio.current_time() == 15


async def test_counters_are_live_while_relaying(autojump_clock: object) -> None:
    app, client_side = trio.testing.memory_stream_pair()
    upstream_side, backend = trio.testing.memory_stream_pair()
    counters = RelayCounters()
    results: list[RelayResult] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_relay, client_side, upstream_side, results, counters)
        await app.send_all(b"12345")
        assert await backend.receive_some() == b"12345"
        await trio.testing.wait_all_tasks_blocked()
        # Metrics read these on scrape, before the connection ends.
        assert (counters.bytes_in, counters.bytes_out) == (5, 0)
        await app.send_eof()
        await backend.send_eof()
    assert results == [RelayResult("closed", 5, 0)]
