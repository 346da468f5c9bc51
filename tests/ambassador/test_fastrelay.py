"""The splice relay on real loopback sockets, and its stream fallback on memory streams.

Each test is a conversation: the app on one end, the backend on the other, the
relay in the middle (``client`` is the ambassador's accepted socket, ``upstream``
its connection to the backend). Assertions on what each end sees, the outcome,
and the exact byte counts. The relay does not close the streams: like the
listener, the test closes them after it returns (which sends RST after a reset).
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from ambassador import fastrelay
from ambassador.errors import RelayHubFailed
from ambassador.fastrelay import (
    RelayCounters,
    RelayResult,
    can_splice,
    check_settings,
    relay,
    relay_mode,
)
from sidecar_common.errors import ConfigError

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="needs os.splice (Linux)")


@pytest.fixture(autouse=True, params=["splice", "splice-loop"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the hub in its own thread and as a task of the trio loop."""
    monkeypatch.setenv("AMBASSADOR_RELAY", request.param)
    return str(request.param)


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of a real loopback TCP connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            accepted: list[trio.SocketStream] = []

            async def accept() -> None:
                accepted.append(await listeners[0].accept())

            nursery.start_soon(accept)
            connected = await trio.open_tcp_stream("127.0.0.1", port)
        return connected, accepted[0]
    finally:
        for lst in listeners:
            await lst.aclose()


class Proxy:
    """app <-> client ==relay== upstream <-> backend, all real sockets."""

    app: trio.SocketStream
    client: trio.SocketStream
    upstream: trio.SocketStream
    backend: trio.SocketStream
    counters: RelayCounters
    done: trio.Event
    result: RelayResult | None = None


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def rst(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.fixture
async def proxy(nursery: trio.Nursery) -> AsyncIterator[Proxy]:
    p = Proxy()
    p.app, p.client = await tcp_pair()
    p.upstream, p.backend = await tcp_pair()
    p.counters = RelayCounters()
    p.done = done = trio.Event()

    async def run() -> None:
        try:
            p.result = await relay(p.client, p.upstream, p.counters)
        finally:
            # What the listener does after the relay returns.
            await trio.aclose_forcefully(p.upstream)
            await trio.aclose_forcefully(p.client)
            done.set()

    nursery.start_soon(run)
    yield p
    for s in (p.app, p.backend):
        await trio.aclose_forcefully(s)


async def wait_result(p: Proxy) -> RelayResult:
    with trio.fail_after(10):
        await p.done.wait()
    assert p.result is not None
    return p.result


def hub() -> fastrelay.SpliceHub:
    (h,) = fastrelay._HUBS.get()
    assert h.threaded == (os.environ["AMBASSADOR_RELAY"] == "splice")
    return h


async def test_streams_are_spliceable(proxy: Proxy) -> None:
    assert can_splice(proxy.client) and can_splice(proxy.upstream)
    a, _b = trio.testing.memory_stream_pair()
    assert not can_splice(a)
    await proxy.app.send_eof()
    await proxy.backend.send_eof()
    await wait_result(proxy)


async def test_relayed_sockets_may_queue_more_than_trios_16_kib_unsent(proxy: Proxy) -> None:
    # trio's streams come with TCP_NOTSENT_LOWAT 16 KiB (the app's end keeps it);
    # the hub's sockets go back to the kernel's default (0), so bulk splices are not
    # cut into 16 KiB pieces.
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
    await proxy.app.send_all(b"x")  # the relay has started once a byte crossed
    assert await read_exactly(proxy.backend, 1) == b"x"
    assert proxy.app.socket.getsockopt(socket.IPPROTO_TCP, lowat) == 1 << 14
    for stream in (proxy.client, proxy.upstream):
        assert stream.socket.getsockopt(socket.IPPROTO_TCP, lowat) == 0
    await proxy.app.send_eof()
    await proxy.backend.send_eof()
    await wait_result(proxy)


async def test_request_response_and_half_close_from_client(proxy: Proxy) -> None:
    await proxy.app.send_all(b"hello")
    assert await read_exactly(proxy.backend, 5) == b"hello"
    await proxy.backend.send_all(b"world!")
    assert await read_exactly(proxy.app, 6) == b"world!"
    # The app is done sending; the answer keeps flowing after its EOF.
    await proxy.app.send_eof()
    assert await proxy.backend.receive_some(10) == b""
    await proxy.backend.send_all(b"more after your EOF")
    assert await read_exactly(proxy.app, 19) == b"more after your EOF"
    assert proxy.result is None  # still relaying the other direction
    await proxy.backend.send_eof()
    assert await proxy.app.receive_some(10) == b""
    result = await wait_result(proxy)
    assert result == RelayResult("closed", 5, 6 + 19)
    assert (proxy.counters.bytes_in, proxy.counters.bytes_out) == (5, 25)
    assert not hub().by_fd


async def test_half_close_from_upstream(proxy: Proxy) -> None:
    await proxy.backend.send_all(b"banner")
    await proxy.backend.send_eof()
    assert await read_all(proxy.app) == b"banner"
    # The backend stopped sending, it still reads.
    await proxy.app.send_all(b"x" * 1000)
    assert await read_exactly(proxy.backend, 1000) == b"x" * 1000
    await proxy.app.send_eof()
    assert await proxy.backend.receive_some(10) == b""
    assert await wait_result(proxy) == RelayResult("closed", 1000, 6)


async def test_ping_pong_of_every_size_counts_exactly(proxy: Proxy) -> None:
    """Request/response turns take the hub's inline path; a whole chunk goes on in a burst."""
    chunk = fastrelay.PIPE_SIZE
    sizes = [1, 1024, chunk - 1, chunk, chunk + 1, 3 * chunk, 7]
    sent_in = sent_out = 0
    for i, n in enumerate(sizes):
        request = bytes([i]) * n
        response = bytes([100 + i]) * (n // 2 + 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proxy.app.send_all, request)
            assert await read_exactly(proxy.backend, n) == request
        sent_in += n
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proxy.backend.send_all, response)
            assert await read_exactly(proxy.app, len(response)) == response
        sent_out += len(response)
    await proxy.app.send_eof()
    await proxy.backend.send_eof()
    assert await read_all(proxy.app) == b""
    assert await wait_result(proxy) == RelayResult("closed", sent_in, sent_out)


async def test_live_byte_counts_are_exact_when_settled(proxy: Proxy) -> None:
    """What /metrics reads of a connection still open (it settles the counters on scrape)."""
    await proxy.app.send_all(b"q" * 1000)
    assert await read_exactly(proxy.backend, 1000) == b"q" * 1000
    await proxy.backend.send_all(b"r" * 10)
    assert await read_exactly(proxy.app, 10) == b"r" * 10
    fastrelay.settle_counters()
    assert (proxy.counters.bytes_in, proxy.counters.bytes_out) == (1000, 10)
    assert not proxy.done.is_set()


async def test_large_transfers_both_ways_at_once(proxy: Proxy) -> None:
    size = 8 * 1024 * 1024 + 123
    up = os.urandom(size)
    down = os.urandom(size // 2)
    got: dict[str, bytes] = {}

    async def send(stream: trio.SocketStream, data: bytes) -> None:
        for i in range(0, len(data), 100_000):
            await stream.send_all(data[i : i + 100_000])
        await stream.send_eof()

    async def recv(name: str, stream: trio.SocketStream) -> None:
        got[name] = await read_all(stream)

    async with trio.open_nursery() as n:
        n.start_soon(send, proxy.app, up)
        n.start_soon(send, proxy.backend, down)
        n.start_soon(recv, "backend", proxy.backend)
        n.start_soon(recv, "app", proxy.app)
    assert hashlib.sha256(got["backend"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got["app"]).digest() == hashlib.sha256(down).digest()
    assert await wait_result(proxy) == RelayResult("closed", len(up), len(down))


async def test_slow_reader_back_pressure(proxy: Proxy) -> None:
    """A reader slower than its writer: data waits in the pipe, nothing is lost."""
    size = 6 * 1024 * 1024
    data = os.urandom(size)

    async def writer() -> None:
        await proxy.backend.send_all(data)
        await proxy.backend.send_eof()

    async with trio.open_nursery() as n:
        n.start_soon(writer)
        await trio.sleep(0.2)  # let every buffer on the way fill up
        buf = bytearray()
        while chunk := await proxy.app.receive_some(4096):
            buf += chunk
            if len(buf) % (256 * 1024) < 4096:
                await trio.sleep(0.001)
    assert bytes(buf) == data
    await proxy.app.send_eof()
    assert await wait_result(proxy) == RelayResult("closed", 0, size)


async def test_client_reset_propagates_to_upstream(proxy: Proxy) -> None:
    await proxy.app.send_all(b"partial request")
    assert await read_exactly(proxy.backend, 15) == b"partial request"
    rst(proxy.app)
    await proxy.app.aclose()
    result = await wait_result(proxy)
    assert result == RelayResult("client_reset", 15, 0)
    # The backend sees a reset, not a clean EOF it could take for a whole request.
    with pytest.raises(trio.BrokenResourceError):
        with trio.fail_after(5):
            while await proxy.backend.receive_some(100):
                pass


async def test_upstream_reset_propagates_to_client(proxy: Proxy) -> None:
    await proxy.backend.send_all(b"half an ans")
    assert await read_exactly(proxy.app, 11) == b"half an ans"
    rst(proxy.backend)
    await proxy.backend.aclose()
    result = await wait_result(proxy)
    assert result == RelayResult("upstream_reset", 0, 11)
    with pytest.raises(trio.BrokenResourceError):
        with trio.fail_after(5):
            while await proxy.app.receive_some(100):
                pass


async def test_reset_after_half_close(proxy: Proxy) -> None:
    """The client half-closed (nothing read from it any more), then resets: seen."""
    await proxy.app.send_eof()
    assert await proxy.backend.receive_some(10) == b""
    await proxy.backend.send_all(b"abc")
    assert await read_exactly(proxy.app, 3) == b"abc"
    rst(proxy.app)
    await proxy.app.aclose()
    result = await wait_result(proxy)
    assert result.outcome == "client_reset"
    assert (result.bytes_in, result.bytes_out) == (0, 3)


async def test_idle_timeout_real_sockets() -> None:
    app, client = await tcp_pair()
    upstream, backend = await tcp_pair()
    counters = RelayCounters()
    await app.send_all(b"ping")
    result = await relay(client, upstream, counters, idle_timeout=0.3)
    assert result == RelayResult("idle_timeout", 4, 0)
    assert await read_exactly(backend, 4) == b"ping"
    for s in (app, client, upstream, backend):
        await s.aclose()


async def test_cancel_releases_sockets_and_pipes() -> None:
    app, client = await tcp_pair()
    upstream, backend = await tcp_pair()
    counters = RelayCounters()
    async with trio.open_nursery() as n:
        n.start_soon(relay, client, upstream, counters)
        # The backend floods a client that does not read: data piles up in a pipe.
        with trio.move_on_after(0.5):
            await backend.send_all(b"z" * (16 * 1024 * 1024))
        n.cancel_scope.cancel()
    h = hub()
    assert not h.by_fd
    # No pipe is lost: the full one was closed, the others are pooled.
    assert h.pipes_open == len(h.pool) + 1  # + the spare
    for s in (app, client, upstream, backend):
        await s.aclose()


async def test_many_connections_share_a_small_pipe_pool() -> None:
    n_conns = 40
    ends = [(await tcp_pair(), await tcp_pair()) for _ in range(n_conns)]
    results: list[RelayResult] = []

    async def one(i: int) -> None:
        (app, client), (upstream, backend) = ends[i]
        counters = RelayCounters()
        async with trio.open_nursery() as n:

            async def run() -> None:
                results.append(await relay(client, upstream, counters))

            n.start_soon(run)
            msg = f"request {i}".encode()
            for _ in range(20):
                await app.send_all(msg)
                assert await read_exactly(backend, len(msg)) == msg
                await backend.send_all(msg * 2)
                assert await read_exactly(app, 2 * len(msg)) == msg * 2
            await app.send_eof()
            await backend.send_eof()
        for s in (app, client, upstream, backend):
            await s.aclose()

    async with trio.open_nursery() as n:
        for i in range(n_conns):
            n.start_soon(one, i)
    assert len(results) == n_conns
    assert all(r.outcome == "closed" for r in results)
    assert sum(r.bytes_in for r in results) * 2 == sum(r.bytes_out for r in results)
    h = hub()
    assert not h.by_fd
    assert h.pipes_open == len(h.pool) + 1 <= fastrelay.POOL_MAX + 1


async def test_out_of_descriptors_for_a_pipe_resets_that_connection_and_the_hub_recovers() -> None:
    """A destination fills up while no pipe can be made (EMFILE): the hub may not stall or mix.

    The bytes that wait for the slow destination have nowhere to go: that
    connection is reset, the spare pipe holding them is closed, and once
    pipes can be made again the next connection is relayed as usual.
    """
    (h,) = fastrelay.hubs()
    real = h._new_pipe

    def exhausted() -> tuple[int, int]:
        raise OSError(errno.EMFILE, "Too many open files")

    h._new_pipe = exhausted  # type: ignore[method-assign]
    app, client = await tcp_pair()
    upstream, backend = await tcp_pair()
    result: list[RelayResult] = []
    with trio.fail_after(20):  # the hub stalled here once: a failure, not a hang
        async with trio.open_nursery() as n:

            async def run() -> None:
                result.append(await relay(client, upstream, RelayCounters()))

            n.start_soon(run)
            # The backend reads nothing: the upstream socket fills, a direction must wait.
            with trio.move_on_after(10):
                while not result:
                    await app.send_all(b"z" * 65536)
    assert result[0].outcome == "upstream_reset"
    for s in (app, client, upstream, backend):
        await trio.aclose_forcefully(s)
    del h._new_pipe  # pipes can be made again
    assert h._new_pipe == real
    app, client = await tcp_pair()
    upstream, backend = await tcp_pair()
    with trio.fail_after(20):
        async with trio.open_nursery() as n:

            async def run_again() -> None:
                result.append(await relay(client, upstream, RelayCounters()))

            n.start_soon(run_again)
            await app.send_all(b"ping")
            assert await read_exactly(backend, 4) == b"ping"
            await backend.send_all(b"pong")
            assert await read_exactly(app, 4) == b"pong"
            await app.send_eof()
            await backend.send_eof()
    assert result[1] == RelayResult("closed", 4, 4)
    assert h.spare[0] >= 0 and h.pipes_open == len(h.pool) + 1
    for s in (app, client, upstream, backend):
        await s.aclose()


async def test_stream_mode_forced_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBASSADOR_RELAY", "stream")
    app, client = await tcp_pair()
    upstream, backend = await tcp_pair()
    async with trio.open_nursery() as n:
        results: list[RelayResult] = []

        async def run() -> None:
            results.append(await relay(client, upstream, RelayCounters()))

        n.start_soon(run)
        await app.send_all(b"q")
        assert await read_exactly(backend, 1) == b"q"
        with pytest.raises(LookupError):
            hub()  # the splice hub never started
        await app.send_eof()
        await backend.send_eof()
    assert results == [RelayResult("closed", 1, 0)]
    for s in (app, client, upstream, backend):
        await s.aclose()


async def test_two_hub_threads_share_the_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBASSADOR_RELAY", "splice")
    monkeypatch.setenv("AMBASSADOR_RELAY_THREADS", "2")
    pairs = [(await tcp_pair(), await tcp_pair()) for _ in range(2)]
    results: list[RelayResult] = []
    async with trio.open_nursery() as n:
        for (_, client), (upstream, _) in pairs:

            async def run(c: trio.SocketStream = client, u: trio.SocketStream = upstream) -> None:
                results.append(await relay(c, u, RelayCounters()))

            n.start_soon(run)
        await trio.sleep(0.1)
        both = fastrelay._HUBS.get()
        assert len(both) == 2 and all(h.threaded and len(h.by_fd) == 2 for h in both)
        for i, ((app, _), (_, backend)) in enumerate(pairs):
            await app.send_all(b"hub %d" % i)
            assert await read_exactly(backend, 5) == b"hub %d" % i
            await app.send_eof()
            await backend.send_eof()
    assert results == [RelayResult("closed", 5, 0)] * 2
    for ends in pairs:
        for pair in ends:
            for s in pair:
                await s.aclose()


def test_relay_settings() -> None:
    assert check_settings({}) == ("splice", 1)
    assert check_settings({"AMBASSADOR_RELAY_THREADS": " 2 "}) == ("splice", 2)
    with pytest.raises(ConfigError, match="AMBASSADOR_RELAY_THREADS"):
        check_settings({"AMBASSADOR_RELAY_THREADS": "0"})


def test_relay_mode_setting() -> None:
    assert relay_mode({}) == "splice"
    assert relay_mode({"AMBASSADOR_RELAY": "splice-loop"}) == "splice-loop"
    assert relay_mode({"AMBASSADOR_RELAY": "Stream"}) == "stream"
    with pytest.raises(ConfigError, match="AMBASSADOR_RELAY"):
        relay_mode({"AMBASSADOR_RELAY": "zero-copy"})


# --------------------------------------------------------------------------- fallback


async def test_fallback_on_memory_streams(autojump_clock: trio.testing.MockClock) -> None:
    """Non-socket streams go through the stream relay: same contract, virtual time."""
    app, client = trio.testing.memory_stream_pair()
    upstream, backend = trio.testing.memory_stream_pair()
    counters = RelayCounters()
    results: list[RelayResult] = []
    async with trio.open_nursery() as n:

        async def run() -> None:
            results.append(await relay(client, upstream, counters))

        n.start_soon(run)
        await app.send_all(b"SELECT 1")
        assert await read_exactly(backend, 8) == b"SELECT 1"
        await app.send_eof()
        assert await backend.receive_some() == b""
        await backend.send_all(b"1 row")
        await backend.send_eof()
        assert await read_all(app) == b"1 row"
    assert results == [RelayResult("closed", 8, 5)]


async def test_fallback_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    _app, client = trio.testing.memory_stream_pair()
    upstream, _backend = trio.testing.memory_stream_pair()
    start = trio.current_time()
    result = await relay(client, upstream, RelayCounters(), idle_timeout=30.0)
    assert result == RelayResult("idle_timeout", 0, 0)
    assert trio.current_time() - start == pytest.approx(30.0)


async def test_a_connection_the_hub_finished_is_released_without_the_lock() -> None:
    """The hub's lock is held while it splices: the trio side must not wait on it per connection.

    A connection the hub ended is released (its last act on it), so ``discard``
    returns at once; were it to take the lock it would deadlock here, where the
    lock is held by this very thread.
    """
    app, client = await tcp_pair()
    upstream, backend = await tcp_pair()
    (h,) = fastrelay.hubs()
    conn = h.add(client, upstream, RelayCounters())
    await app.send_all(b"hi")
    assert await read_exactly(backend, 2) == b"hi"
    await app.send_eof()
    await backend.send_eof()
    assert conn.done is not None
    with trio.fail_after(10):
        await conn.done.wait()
    assert conn.released and conn.outcome == "closed"
    assert (conn.counters.bytes_in, conn.counters.bytes_out) == (2, 0)
    with h.lock:
        h.discard(conn)
    assert not h.by_fd
    for s in (app, client, upstream, backend):
        await s.aclose()


def plain_pair() -> tuple[trio.SocketStream, socket.socket]:
    """A loopback connection: a trio stream at one end, a plain non-blocking socket at the other."""
    lst = socket.socket()
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        near = socket.create_connection(lst.getsockname())
        far, _ = lst.accept()
    finally:
        lst.close()
    far.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(near)), far


async def test_a_detached_connection_ends_in_its_callback_with_its_sockets_closed() -> None:
    """No task waits: the hub closes both sockets and the end reaches trio by itself.

    Nobody collects it here (no accept loop), so the hub wakes trio for it
    after ``END_DELAY``; an accept loop would collect it earlier (``flush_ended``).
    """
    app, client = plain_pair()
    backend, upstream = plain_pair()
    hub = fastrelay.detached_available()
    assert hub is not None
    ended = trio.Event()
    conn = hub.add(client, upstream, RelayCounters(), ended.set)
    assert conn.done is None
    await app.send_all(b"ping")
    assert await read_exactly(backend, 4) == b"ping"
    await backend.send_all(b"pong!")
    assert await read_exactly(app, 5) == b"pong!"
    await app.send_eof()
    assert await backend.receive_some() == b""
    await backend.send_eof()
    assert await app.receive_some() == b""
    with trio.fail_after(10):
        await ended.wait()
    assert conn.released and conn.outcome == "closed"
    assert (conn.counters.bytes_in, conn.counters.bytes_out) == (4, 5)
    assert client.fileno() == -1 and upstream.fileno() == -1
    assert not hub.by_fd and not hub.ended
    # Cut after the end: nothing to do, the callback has run already.
    assert not hub.cut(conn, "closed")
    for s in (app, backend):
        await s.aclose()


async def test_cutting_a_detached_connection_stops_the_hub_and_skips_its_callback() -> None:
    app, client = await tcp_pair()
    upstream, backend = await tcp_pair()
    hub = fastrelay.detached_available()
    assert hub is not None
    called: list[bool] = []
    conn = hub.add(client, upstream, RelayCounters(), lambda: called.append(True))
    await app.send_all(b"x")
    assert await read_exactly(backend, 1) == b"x"
    assert hub.cut(conn, "idle_timeout")
    assert conn.released and conn.outcome == "idle_timeout"
    assert not hub.cut(conn, "closed")  # once only
    # The hub lets go of the sockets (the caller closes them) and never calls back.
    await app.send_all(b"more")
    await trio.sleep(0.05)
    assert client.socket.fileno() != -1 and not hub.by_fd and called == []
    for s in (app, client, upstream, backend):
        await s.aclose()


def test_a_failed_hub_thread_ends_the_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``epoll_wait`` failing in the hub thread ends the trio run, not the thread alone.

    A thread that ended quietly would leave every relayed connection stalled;
    the hub's task raises instead, which ends the sidecar (status 1, logged by
    ``run_sidecar``) so the kubelet restarts it. The epoll descriptor is
    replaced under the hub by one that is not an epoll set (EINVAL).
    """
    monkeypatch.setenv("AMBASSADOR_RELAY", "splice")
    relayed: list[bytes] = []

    async def main() -> None:
        app, client = await tcp_pair()
        upstream, backend = await tcp_pair()
        async with trio.open_nursery() as n:
            n.start_soon(relay, client, upstream, RelayCounters())
            await app.send_all(b"before")
            relayed.append(await read_exactly(backend, 6))
            (h,) = fastrelay._HUBS.get()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, h.epoll.fileno())
            os.close(null)
            os.write(h.wake_w, b"x")  # the thread's next epoll_wait fails
            await trio.sleep(10)

    with pytest.raises(trio.TrioInternalError) as info:
        trio.run(main)
    cause = info.value.__cause__
    assert isinstance(cause, BaseExceptionGroup)
    group = cause.subgroup(RelayHubFailed)
    assert group is not None
    while isinstance(group, BaseExceptionGroup):
        (group,) = group.exceptions
    assert "OSError(22, 'Invalid argument')" in str(group)
    assert relayed == [b"before"]
    assert any(r.getMessage() == "relay hub failed" for r in caplog.records)
