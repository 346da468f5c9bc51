"""The h11 client against a real trio/h11 server on 127.0.0.1 started by the test."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import h11
import pytest
import trio

from sidecar_common.errors import SidecarError
from sidecar_common.httpclient import HttpClientError, open_stream, request


class ScriptedServer:
    """A tiny HTTP/1.1 server: one request per connection, answered by path.

    Handlers get the h11 connection, the stream and the request, and write
    the response themselves, so a test can choose the framing (Content-Length,
    chunked, until-EOF), pace a stream, or send garbage.
    """

    def __init__(self) -> None:
        self.client_went_away = trio.Event()
        self.chunk_read = trio.Event()
        self.seen: list[tuple[str, str, list[tuple[str, str]], bytes]] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        req: h11.Request | None = None
        body = b""
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Request):
                    req = event
                elif isinstance(event, h11.Data):
                    body += event.data
                else:
                    break
            assert req is not None
            path = req.target.decode()
            headers = [(k.decode(), v.decode()) for k, v in req.headers]
            self.seen.append((req.method.decode(), path, headers, body))
            handler: Callable[[h11.Connection, trio.SocketStream, bytes], Awaitable[None]] = (
                getattr(self, "route_" + path.strip("/").split("?")[0])
            )
            try:
                await handler(conn, stream, body)
            except trio.BrokenResourceError:
                self.client_went_away.set()

    @staticmethod
    async def respond(
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        chunks: list[bytes],
        headers: list[tuple[str, str]],
    ) -> None:
        data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        for chunk in chunks:
            data += conn.send(h11.Data(data=chunk)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)

    async def route_length(
        self, conn: h11.Connection, stream: trio.SocketStream, body: bytes
    ) -> None:
        await self.respond(conn, stream, 200, [b"hello"], [("content-length", "5")])

    async def route_chunked(
        self, conn: h11.Connection, stream: trio.SocketStream, body: bytes
    ) -> None:
        # No Content-Length to an HTTP/1.1 client: h11 frames it chunked.
        await self.respond(conn, stream, 201, [b"ab", b"", b"cd", b"ef"], [("x-kind", "chunked")])

    async def route_echo(
        self, conn: h11.Connection, stream: trio.SocketStream, body: bytes
    ) -> None:
        method, path, headers, got = self.seen[-1]
        payload = json.dumps(
            {"method": method, "path": path, "headers": headers, "body": got.decode()}
        )
        await self.respond(
            conn, stream, 404, [payload.encode()], [("content-length", str(len(payload)))]
        )

    async def route_big(self, conn: h11.Connection, stream: trio.SocketStream, body: bytes) -> None:
        await self.respond(conn, stream, 200, [b"x" * 4096] * 64, [])

    async def route_until_eof(
        self, conn: h11.Connection, stream: trio.SocketStream, body: bytes
    ) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread until EOF")

    async def route_garbage(
        self, conn: h11.Connection, stream: trio.SocketStream, body: bytes
    ) -> None:
        await stream.send_all(b"this is not HTTP at all\r\n\r\n")

    async def route_cut(self, conn: h11.Connection, stream: trio.SocketStream, body: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    async def route_continue(
        self, conn: h11.Connection, stream: trio.SocketStream, body: bytes
    ) -> None:
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        await self.respond(conn, stream, 200, [b"after 100"], [("content-length", "9")])

    async def route_hang(
        self, conn: h11.Connection, stream: trio.SocketStream, body: bytes
    ) -> None:
        await trio.sleep_forever()

    async def route_watch(
        self, conn: h11.Connection, stream: trio.SocketStream, body: bytes
    ) -> None:
        """Like an etcd watch: one event, wait until the client has read it, another, end."""
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=[])) or b"")
        await stream.send_all(conn.send(h11.Data(data=b'{"event": 1}\n')) or b"")
        await self.chunk_read.wait()
        await stream.send_all(conn.send(h11.Data(data=b'{"event": 2}\n')) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

    async def route_forever(
        self, conn: h11.Connection, stream: trio.SocketStream, body: bytes
    ) -> None:
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=[])) or b"")
        while True:
            await stream.send_all(conn.send(h11.Data(data=b"tick\n")) or b"")
            await trio.sleep(0.01)


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[tuple[ScriptedServer, str]]:
    scripted = ScriptedServer()
    listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), scripted.handle, 0)
    port = listeners[0].socket.getsockname()[1]
    yield scripted, f"http://127.0.0.1:{port}"


async def test_content_length_body(server: tuple[ScriptedServer, str]) -> None:
    _, base = server
    with trio.fail_after(10):
        resp = await request("GET", base + "/length")
    assert (resp.status, resp.body) == (200, b"hello")
    assert resp.header("Content-Length") == "5"


async def test_chunked_body(server: tuple[ScriptedServer, str]) -> None:
    _, base = server
    with trio.fail_after(10):
        resp = await request("GET", base + "/chunked")
    assert (resp.status, resp.body) == (201, b"abcdef")
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.header("x-kind") == "chunked"


async def test_body_until_eof_and_interim_100(server: tuple[ScriptedServer, str]) -> None:
    _, base = server
    with trio.fail_after(10):
        assert (await request("GET", base + "/until_eof")).body == b"read until EOF"
        assert (await request("GET", base + "/continue")).body == b"after 100"


async def test_request_line_headers_and_body_sent(server: tuple[ScriptedServer, str]) -> None:
    scripted, base = server
    with trio.fail_after(10):
        resp = await request(
            "post", base + "/echo?a=1", headers=[("x-hook", "yes")], body=b'{"k": 1}'
        )
    assert resp.status == 404  # an error status is a response, not an exception
    got = resp.json()
    assert isinstance(got, dict)
    assert (got["method"], got["path"], got["body"]) == ("POST", "/echo?a=1", '{"k": 1}')
    headers = dict(got["headers"])
    assert headers["host"] == base.removeprefix("http://")
    assert headers["x-hook"] == "yes"
    assert headers["content-length"] == "8"
    assert headers["connection"] == "close"
    # an empty PUT still says Content-Length: 0 (some servers want it)
    with trio.fail_after(10):
        await request("PUT", base + "/echo")
    assert ("content-length", "0") in scripted.seen[-1][2]


async def test_response_size_cap(server: tuple[ScriptedServer, str]) -> None:
    _, base = server
    with trio.fail_after(10):
        with pytest.raises(HttpClientError, match="larger than"):
            await request("GET", base + "/big", max_body=100_000)
        assert len((await request("GET", base + "/big", max_body=4096 * 64)).body) == 4096 * 64


@pytest.mark.parametrize(
    ("path", "match"),
    [("/garbage", "protocol error"), ("/cut", "without sending complete message body")],
)
async def test_broken_servers_raise_http_client_error(
    server: tuple[ScriptedServer, str], path: str, match: str
) -> None:
    _, base = server
    with trio.fail_after(10), pytest.raises(HttpClientError, match=match):
        await request("GET", base + path)


async def test_refused_port_is_http_client_error() -> None:
    # A bound socket that does not listen: connecting to it is refused, and
    # nobody else can take the port while the test runs.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        port = sock.getsockname()[1]
        with trio.fail_after(10), pytest.raises(HttpClientError) as info:
            await request("GET", f"http://127.0.0.1:{port}/")
        assert isinstance(info.value, SidecarError)
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(HttpClientError):
            async with open_stream("GET", f"http://127.0.0.1:{port}/"):
                pass
    finally:
        sock.close()


@pytest.mark.parametrize(
    "url", ["https://example.com/", "ftp://x/", "http:///nohost", "http://h:notaport/", "nonsense"]
)
async def test_bad_urls(url: str) -> None:
    with pytest.raises(HttpClientError, match="bad URL"):
        await request("GET", url)


async def test_caller_cancel_scope_bounds_the_call(server: tuple[ScriptedServer, str]) -> None:
    _, base = server
    with trio.move_on_after(0.2) as scope:
        await request("GET", base + "/hang")
    assert scope.cancelled_caught


async def test_streamed_response_arrives_chunk_by_chunk(server: tuple[ScriptedServer, str]) -> None:
    scripted, base = server
    got = []
    with trio.fail_after(10):
        async with open_stream("GET", base + "/watch") as (status, headers, chunks):
            assert status == 200
            assert ("transfer-encoding", "chunked") in headers
            async for chunk in chunks:
                got.append(chunk)
                # The server sends event 2 only after we have event 1: this
                # proves the body is streamed, not buffered to the end.
                scripted.chunk_read.set()
    assert got == [b'{"event": 1}\n', b'{"event": 2}\n']


async def test_leaving_a_stream_early_closes_the_connection(
    server: tuple[ScriptedServer, str],
) -> None:
    scripted, base = server
    with trio.fail_after(10):
        async with open_stream("GET", base + "/forever") as stream:
            first = await stream.body_chunks.__anext__()
            assert first.startswith(b"tick")
        await scripted.client_went_away.wait()
