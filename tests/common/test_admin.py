"""The admin server: dispatch core without sockets, the trio shell on memory
streams with virtual time, and end-to-end against real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import h11
import pytest
import trio
import trio.testing

from sidecar_common.admin import (
    AdminApp,
    AdminError,
    AdminLimits,
    AdminServer,
    Request,
    Response,
    is_loopback_client,
    json_response,
    serve_admin,
)
from sidecar_common.metrics import CONTENT_TYPE, Registry, parse_text
from tests.support.wait import eventually

# --------------------------------------------------------------------------- helpers

MemoryStream = trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]


class Probe:
    """A readiness/liveness answer the test can flip."""

    def __init__(self, ok: bool, reason: str) -> None:
        self.ok = ok
        self.reason = reason

    def __call__(self) -> tuple[bool, str]:
        return self.ok, self.reason


def make_app() -> tuple[AdminApp, Registry, Probe]:
    registry = Registry()
    ready = Probe(False, "warming up")
    app = AdminApp(registry, ready=ready)

    async def echo(req: Request) -> Response:
        return json_response(
            200,
            {
                "method": req.method,
                "query": req.query,
                "body": req.body.decode(),
                "client": req.client,
            },
        )

    async def secret(req: Request) -> Response:
        return Response(200, b"secret\n")

    async def broken(req: Request) -> Response:
        raise RuntimeError("handler bug")

    app.route("POST", "/echo", echo)
    app.route("PUT", "/env", secret, loopback_only=True)
    app.route("GET", "/broken", broken)
    return app, registry, ready


def requests_counted(registry: Registry, path: str, code: int) -> float:
    samples = parse_text(registry.render())
    return samples.get(
        ("admin_http_requests_total", frozenset({("path", path), ("code", str(code))})), 0
    )


class H11Client:
    """A test client that can send several requests on one connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> tuple[int, dict[str, str], bytes]:
        hdrs = [("host", "test"), *headers]
        if body:
            hdrs.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=hdrs)) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)
        status = 0
        resp_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
                resp_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return status, resp_headers, b"".join(chunks)


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(65536):
        chunks.append(bytes(chunk))
    return b"".join(chunks)


@asynccontextmanager
async def connected(port: int) -> AsyncIterator[trio.SocketStream]:
    """A fresh real connection to the server on ``port``, all of the block bounded by 10 s."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            yield stream


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes on a fresh real connection and return all until EOF."""
    async with connected(port) as stream:
        await stream.send_all(data)
        return await read_to_eof(stream)


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    async with connected(port) as stream:
        return await H11Client(stream).request(method, path)


# --------------------------------------------------------------------------- dispatch core


def req(method: str, path: str, *, client: str = "127.0.0.1", body: bytes = b"") -> Request:
    return Request(method, path, path, {}, [], body, client)


async def test_dispatch_table() -> None:
    app, registry, ready = make_app()
    assert (await app.handle(req("GET", "/healthz"))).status == 200
    resp = await app.handle(req("GET", "/readyz"))
    assert (resp.status, resp.body) == (503, b"warming up\n")
    ready.ok, ready.reason = True, ""
    assert (await app.handle(req("GET", "/readyz"))).status == 200
    assert (await app.handle(req("GET", "/nope"))).status == 404
    resp = await app.handle(req("DELETE", "/healthz"))
    assert resp.status == 405
    assert ("allow", "GET, HEAD") in resp.headers
    assert (await app.handle(req("HEAD", "/healthz"))).status == 200
    assert (await app.handle(req("GET", "/broken"))).status == 500
    assert requests_counted(registry, "/readyz", 503) == 1
    assert requests_counted(registry, "other", 404) == 1
    assert requests_counted(registry, "/broken", 500) == 1


async def test_liveness_probe_and_metrics_route() -> None:
    registry = Registry()
    live = Probe(False, "event loop stuck")
    app = AdminApp(registry, ready=Probe(True, "ok"), live=live)
    resp = await app.handle(req("GET", "/healthz"))
    assert (resp.status, resp.body) == (503, b"event loop stuck\n")
    resp = await app.handle(req("GET", "/metrics"))
    assert resp.content_type == CONTENT_TYPE
    assert (
        parse_text(resp.body.decode())[
            ("admin_http_requests_total", frozenset({("path", "/healthz"), ("code", "503")}))
        ]
        == 1
    )


@pytest.mark.parametrize(
    ("client", "status"),
    [
        ("127.0.0.1", 200),
        ("127.3.4.5", 200),
        ("::1", 200),
        ("::ffff:127.0.0.1", 200),
        ("10.0.0.7", 403),
        ("::ffff:10.0.0.7", 403),
        ("2001:db8::1", 403),
        ("unknown", 403),
    ],
)
async def test_loopback_only_route(client: str, status: int) -> None:
    app, _, _ = make_app()
    assert (await app.handle(req("PUT", "/env", client=client))).status == status
    assert is_loopback_client(client) is (status == 200)


# ---------------------------------------------------------------- shell on memory streams


async def start_on_memory(
    nursery: trio.Nursery, limits: AdminLimits, client: str = "127.0.0.1"
) -> tuple[MemoryStream, AdminApp, Registry]:
    app, registry, _ = make_app()
    server = AdminServer(app, limits)
    client_side, server_side = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle_stream, server_side, client)
    return client_side, app, registry


async def test_header_timeout_exact_virtual_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    stream, app, _ = await start_on_memory(nursery, AdminLimits(header_timeout=3.0))
    t0 = trio.current_time()
    # Trickle: one header line per second never completes the head.
    for i in range(2):
        await stream.send_all(f"GET /healthz HTTP/1.1\r\nX-{i}: a\r\n".encode())
        await trio.sleep(1)
    assert await read_to_eof(stream) == b""
    assert trio.current_time() - t0 == pytest.approx(3.0)
    await eventually(lambda: app.connections.value == 0, limit=10, what="connection released")


async def test_idle_keepalive_timeout_virtual_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    stream, _, _ = await start_on_memory(nursery, AdminLimits(header_timeout=2.0, idle_timeout=7.0))
    client = H11Client(stream)
    status, _, _ = await client.request("GET", "/healthz")
    assert status == 200
    t0 = trio.current_time()
    assert await read_to_eof(stream) == b""
    assert trio.current_time() - t0 == pytest.approx(7.0)


async def test_slow_body_gets_408(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    stream, _, registry = await start_on_memory(nursery, AdminLimits(body_timeout=4.0))
    t0 = trio.current_time()
    await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    data = await read_to_eof(stream)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - t0 == pytest.approx(4.0)
    assert requests_counted(registry, "/echo", 408) == 1


@pytest.mark.parametrize("pieces", [1, 8])
async def test_head_size_limit_whether_complete_or_trickled(
    nursery: trio.Nursery, pieces: int
) -> None:
    """431 both when the oversized head arrives complete in one read (our own
    count) and when it arrives in pieces (h11's incomplete-event bound)."""
    stream, _, registry = await start_on_memory(nursery, AdminLimits(max_header_bytes=1024))
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n"
    size = -(-len(head) // pieces)
    with trio.fail_after(10):
        for i in range(0, len(head), size):
            await stream.send_all(head[i : i + size])
            await trio.testing.wait_all_tasks_blocked()
        answer = await read_to_eof(stream)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert requests_counted(registry, "other", 431) == 1


async def test_pipelined_requests_and_unsupported_version(nursery: trio.Nursery) -> None:
    stream, _, _ = await start_on_memory(nursery, AdminLimits(max_header_bytes=100))
    # Two heads in one write: each is measured on its own, not as one 120-byte blob.
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with trio.fail_after(10):
        await stream.send_all(one + one + b"GET / HTTP/9.9\r\nHost: x\r\n\r\n")
        answer = await read_to_eof(stream)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert answer.endswith(b"HTTP version not supported\n")
    assert b"HTTP/1.1 505 " in answer


async def test_loopback_only_over_the_wire_from_a_pod_address(nursery: trio.Nursery) -> None:
    stream, _, _ = await start_on_memory(nursery, AdminLimits(), client="10.1.2.3")
    status, _, body = await H11Client(stream).request("PUT", "/env", body=b"X=1")
    assert status == 403
    assert b"loopback" in body


async def test_body_limits(nursery: trio.Nursery) -> None:
    limits = AdminLimits(max_body_bytes=100)
    stream, _, registry = await start_on_memory(nursery, limits)
    with trio.fail_after(10):
        # Declared too large: refused before reading the body.
        await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n")
        await stream.send_eof()
        assert (await read_to_eof(stream)).startswith(b"HTTP/1.1 413 ")
        # Chunked: cut off once the running total passes the cap.
        stream2, _, _ = await start_on_memory(nursery, limits)
        chunk = b"40\r\n" + b"x" * 64 + b"\r\n"
        await stream2.send_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2
        )
        await stream2.send_eof()
        assert (await read_to_eof(stream2)).startswith(b"HTTP/1.1 413 ")
    assert requests_counted(registry, "/echo", 413) == 1


async def test_expect_100_continue(nursery: trio.Nursery) -> None:
    stream, _, _ = await start_on_memory(nursery, AdminLimits())
    with trio.fail_after(10):
        await stream.send_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        first = await stream.receive_some(65536)
        assert first.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"hi")
        conn = h11.Connection(h11.CLIENT)
        # parse the rest with h11 (the interim response is already consumed)
        conn.send(
            h11.Request(
                method="POST", target="/echo", headers=[("host", "x"), ("content-length", "2")]
            )
        )
        conn.send(h11.Data(data=b"hi"))
        conn.send(h11.EndOfMessage())
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
            elif isinstance(event, h11.Data):
                body += event.data
            else:
                break
    assert json.loads(body)["body"] == "hi"


# --------------------------------------------------------------------------- real sockets


async def start_real(
    nursery: trio.Nursery, limits: AdminLimits | None = None
) -> tuple[int, AdminApp, Registry, Probe]:
    app, registry, ready = make_app()
    port = await nursery.start(partial(serve_admin, limits=limits), app, "127.0.0.1", 0)
    assert isinstance(port, int)
    return port, app, registry, ready


async def test_probes_and_metrics_over_tcp(nursery: trio.Nursery) -> None:
    port, _, registry, ready = await start_real(nursery)
    assert (await get(port, "/healthz"))[::2] == (200, b"ok\n")
    assert (await get(port, "/readyz"))[::2] == (503, b"warming up\n")
    ready.ok, ready.reason = True, "serving"
    assert (await get(port, "/readyz"))[::2] == (200, b"serving\n")
    status, headers, body = await get(port, "/metrics")
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE
    samples = parse_text(body.decode())
    key = ("admin_http_requests_total", frozenset({("path", "/readyz"), ("code", "503")}))
    assert samples[key] == 1
    # HEAD: same headers as GET, no body.
    status, head_headers, head_body = await get(port, "/metrics", method="HEAD")
    assert (status, head_body) == (200, b"")
    assert int(head_headers["content-length"]) > 0
    assert requests_counted(registry, "/metrics", 200) == 2


async def test_custom_route_404_405_and_500_over_tcp(nursery: trio.Nursery) -> None:
    port, _, registry, _ = await start_real(nursery)
    async with connected(port) as stream:
        client = H11Client(stream)
        status, headers, body = await client.request("POST", "/echo?x=1&y=two", body=b"hello")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {
            "method": "POST",
            "query": {"x": "1", "y": "two"},
            "body": "hello",
            "client": "127.0.0.1",
        }
        assert (await client.request("GET", "/missing"))[0] == 404
        status, headers, _ = await client.request("GET", "/echo")
        assert (status, headers["allow"]) == (405, "POST")
        assert (await client.request("GET", "/broken"))[0] == 500
        # still serving on the same connection after a handler bug
        assert (await client.request("PUT", "/env", body=b"A=1"))[0] == 200
    assert requests_counted(registry, "other", 404) == 1
    assert requests_counted(registry, "/echo", 405) == 1


async def test_keepalive_two_requests_one_connection(nursery: trio.Nursery) -> None:
    port, app, _, _ = await start_real(nursery)
    async with connected(port) as stream:
        client = H11Client(stream)
        assert (await client.request("GET", "/healthz"))[0] == 200
        assert app.connections.value == 1
        assert (await client.request("GET", "/readyz"))[0] == 503
        assert app.connections.value == 1
        # Connection: close is honoured: the server closes after the answer.
        status, _, _ = await client.request("GET", "/healthz", headers=[("connection", "close")])
        assert status == 200
        assert await read_to_eof(stream) == b""


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /x HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET /x HTTP/1.1\r\n\r\n",
    ],  # HTTP/1.1 without Host
)
async def test_malformed_request_gets_400_and_close(nursery: trio.Nursery, garbage: bytes) -> None:
    port, _, registry, _ = await start_real(nursery)
    answer = await raw_exchange(port, garbage)  # returns only once the server closed
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in answer
    assert requests_counted(registry, "other", 400) == 1


async def test_oversized_headers_get_431_and_close(nursery: trio.Nursery) -> None:
    port, _, registry, _ = await start_real(nursery, AdminLimits(max_header_bytes=4096))
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    answer = await raw_exchange(port, big)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert requests_counted(registry, "other", 431) == 1
    # a head just under the limit is fine
    ok = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
        + b"a" * 3000
        + b"\r\n\r\n"
    )
    assert (await raw_exchange(port, ok)).startswith(b"HTTP/1.1 200 ")


async def test_slow_client_is_cut_off_after_header_timeout(nursery: trio.Nursery) -> None:
    port, app, _, _ = await start_real(nursery, AdminLimits(header_timeout=0.3))
    async with connected(port) as stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # the head never completes: the server closes without an answer
        assert await read_to_eof(stream) == b""
    await eventually(lambda: app.connections.value == 0, limit=10, what="slot released")
    assert (await get(port, "/healthz"))[0] == 200


async def test_connection_flood_gets_503_then_service_recovers(nursery: trio.Nursery) -> None:
    cap = 4
    port, app, registry, _ = await start_real(
        nursery, AdminLimits(max_connections=cap, header_timeout=30.0)
    )
    held = []
    with trio.fail_after(20):
        for _ in range(cap):
            held.append(await trio.open_tcp_stream("127.0.0.1", port))
        await eventually(lambda: app.connections.value == cap, limit=10, what="all slots taken")
        # The flood: every connection over the cap gets a 503 and is closed at once.
        for _ in range(10):
            answer = await raw_exchange(port, b"")
            assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert requests_counted(registry, "other", 503) == 10
        # The held connections were not disturbed: one of them still gets served.
        status, _, _ = await H11Client(held[0]).request("GET", "/healthz")
        assert status == 200
        for s in held:
            await s.aclose()
        await eventually(lambda: app.connections.value == 0, limit=10, what="slots released")
        assert (await get(port, "/readyz"))[0] == 503  # served again, by the app
        assert (await get(port, "/healthz"))[0] == 200


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        AdminLimits(max_connections=0)


async def test_bind_failure_is_admin_error(nursery: trio.Nursery) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        app, _, _ = make_app()
        with pytest.raises(AdminError, match="cannot listen"):
            await serve_admin(app, "127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()


def test_reason_phrases_match_the_stdlib() -> None:
    """The admin server's own phrase table (it spares importing ``http``) is the stdlib's."""
    import http

    from sidecar_common import admin

    for status, phrase in admin._PHRASES.items():
        assert phrase == http.HTTPStatus(status).phrase
    assert admin._phrase(418) == "I'm a Teapot"  # not in the table: from the stdlib
    assert admin._phrase(299) == ""  # no standard phrase
