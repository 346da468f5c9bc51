"""The HTTP proxy shell over real loopback sockets, against an h11/trio upstream of our own.

The upstream is scriptable by path, and records what it received, so each test
checks what crossed the proxy in both directions:

    /echo          200, JSON of what arrived (method, headers, body size, connection number)
    /chunked?n=K   200 with K chunks and no Content-Length (chunked framing)
    /slow?s=S      sleeps S seconds, then 200
    /fail-once     503 the first time, then 200
    /drop-once     closes the connection without answering the first time, then 200
    /error         500 every time
    /close-after   200 saying keep-alive, then closes the connection (a stale pooled one)
    /garbage       bytes that are not HTTP
    /truncate      a response head promising 100 bytes, 7 bytes, then close
    /continue      honours Expect: 100-continue, then echoes the body size
    /ws            101 Switching Protocols, then echoes raw bytes

Clients: a raw h11 client written here (pipelining, 100-continue, upgrade need
exact control), and curl as a real one.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import pytest
import trio
import trio.testing
import trustme

from ambassador.cluster import Cluster
from ambassador.http import HttpProxy, HttpSettings, Route
from ambassador.outlier import OutlierConfig
from ambassador.tls import UpstreamTLS
from sidecar_common.jsonlog import JsonFormatter
from sidecar_common.metrics import Registry, parse_text
from tests.support.procs import free_port

# --------------------------------------------------------------------------- the upstream


@dataclass
class Upstream:
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    #: Answer every request with this status (a broken backend).
    always: int | None = None
    #: Set when this upstream closes a connection (replace it to wait for the next).
    closed: trio.Event = field(default_factory=trio.Event)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


async def _send(stream: trio.abc.Stream, conn: h11.Connection, event: Any) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _next(stream: trio.abc.Stream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(bytes(await stream.receive_some(65536)))


async def upstream_handler(up: Upstream, stream: trio.abc.Stream) -> None:
    up.connections += 1
    number = up.connections
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = await _next(stream, conn)
            if not isinstance(event, h11.Request):
                return
            url = urlsplit(event.target.decode())
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            up.hits[url.path] = up.hits.get(url.path, 0) + 1
            headers = {k.decode(): v.decode() for k, v in event.headers}
            record: dict[str, Any] = {
                "method": event.method.decode(),
                "path": url.path,
                "headers": headers,
                "connection": number,
            }
            up.requests.append(record)
            if url.path == "/ws":
                await _send(
                    stream,
                    conn,
                    h11.InformationalResponse(
                        status_code=101,
                        headers=[(b"upgrade", b"websocket"), (b"connection", b"upgrade")],
                    ),
                )
                rest, _ = conn.trailing_data
                if rest:
                    await stream.send_all(b"echo:" + rest)
                async for data in stream:
                    await stream.send_all(b"echo:" + data)
                return
            if url.path == "/continue" and conn.they_are_waiting_for_100_continue:
                await _send(stream, conn, h11.InformationalResponse(status_code=100, headers=[]))
            if url.path == "/drop-once" and up.hits[url.path] == 1:
                return
            if url.path == "/garbage":
                await stream.send_all(b"SSH-2.0-not-http\r\n\r\n")
                return
            if url.path == "/truncate":
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                return
            size = 0
            while True:
                body_event = await _next(stream, conn)
                if isinstance(body_event, h11.Data):
                    size += len(body_event.data)
                elif isinstance(body_event, h11.EndOfMessage):
                    break
                else:
                    return
            record["body_size"] = size
            if url.path == "/slow":
                await trio.sleep(float(query.get("s", "1")))
            status = 200
            if url.path == "/fail-once" and up.hits[url.path] == 1:
                status = 503
            if url.path == "/error":
                status = 500
            if up.always is not None:
                status = up.always
            if url.path == "/chunked":
                await _send(stream, conn, h11.Response(status_code=200, headers=[]))
                for i in range(int(query.get("n", "3"))):
                    await _send(stream, conn, h11.Data(data=f"chunk{i};".encode()))
                await _send(stream, conn, h11.EndOfMessage())
            else:
                body = json.dumps(record).encode()
                await _send(
                    stream,
                    conn,
                    h11.Response(
                        status_code=status,
                        headers=[
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"keep-alive"),
                            (b"keep-alive", b"timeout=60"),
                        ],
                    ),
                )
                await _send(stream, conn, h11.Data(data=body))
                await _send(stream, conn, h11.EndOfMessage())
            if conn.our_state is h11.MUST_CLOSE or url.path == "/close-after":
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        await trio.aclose_forcefully(stream)
        up.closed.set()


@asynccontextmanager
async def running_upstream(ssl_context: Any = None) -> AsyncIterator[Upstream]:
    up = Upstream()
    async with trio.open_nursery() as nursery:
        handler = functools.partial(upstream_handler, up)
        if ssl_context is None:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
            )
            up.port = listeners[0].socket.getsockname()[1]
        else:
            listeners = await nursery.start(
                functools.partial(
                    trio.serve_ssl_over_tcp, handler, 0, ssl_context, host="127.0.0.1"
                )
            )
            up.port = listeners[0].transport_listener.socket.getsockname()[1]
        yield up
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the proxy


@dataclass
class Proxy:
    proxy: HttpProxy
    cluster: Cluster
    registry: Registry
    port: int

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples matching ``labels``, once the proxy's tasks are idle."""
        await trio.testing.wait_all_tasks_blocked()
        total = 0.0
        for (metric, labelset), value in parse_text(self.registry.render()).items():
            if metric == name and set(labels.items()) <= set(labelset):
                total += value
        return total


@asynccontextmanager
async def running_proxy(
    addresses: list[tuple[str, int]],
    settings: HttpSettings | None = None,
    *,
    tls: UpstreamTLS | None = None,
    outlier: OutlierConfig | None = None,
) -> AsyncIterator[Proxy]:
    cluster = Cluster("api/dev", policy="round_robin", outlier=outlier, rng=random.Random(1))
    cluster.set_addresses(addresses, trio.current_time())
    registry = Registry()
    route = Route("dev", cluster, tls)
    proxy = HttpProxy(
        "api",
        settings or HttpSettings(),
        registry,
        lambda: route,
        connect_timeout=2.0,
        rng=random.Random(2),
    )

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await proxy.serve_client(stream, "test")
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
        )
        yield Proxy(proxy, cluster, registry, listeners[0].socket.getsockname()[1])
        nursery.cancel_scope.cancel()
    await proxy.aclose()


# --------------------------------------------------------------------------- a raw h11 client


class Client:
    """An h11 client over one TCP connection to the proxy (keep-alive, pipelining)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, *events: Any) -> None:
        for event in events:
            await _send(self.stream, self.conn, event)

    async def response(self) -> tuple[h11.Response, bytes]:
        """The next final response and its whole body (informational ones are skipped)."""
        while True:
            event = await _next(self.stream, self.conn)
            if isinstance(event, h11.Response):
                break
            assert isinstance(event, h11.InformationalResponse), event
        body = b""
        while True:
            part = await _next(self.stream, self.conn)
            if isinstance(part, h11.Data):
                body += part.data
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise AssertionError(part)
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return event, body

    async def get(
        self, target: str, headers: list[tuple[str, str]] | None = None
    ) -> tuple[h11.Response, bytes]:
        await self.send(
            h11.Request(method="GET", target=target, headers=[("host", "app"), *(headers or [])]),
            h11.EndOfMessage(),
        )
        return await self.response()

    async def request(
        self, method: str, target: str, body: bytes, headers: list[tuple[str, str]] | None = None
    ) -> tuple[h11.Response, bytes]:
        """One request with a Content-Length body (Host ``a``, then ``headers``), its response."""
        await self.send(
            h11.Request(
                method=method,
                target=target,
                headers=[("host", "a"), ("content-length", str(len(body))), *(headers or [])],
            ),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )
        return await self.response()

    async def aclose(self) -> None:
        await self.stream.aclose()


def header(response: h11.Response, name: str) -> str | None:
    for k, v in response.headers:
        if k.decode() == name:
            return str(v.decode())
    return None


# --------------------------------------------------------------------------- tests


@pytest.fixture(autouse=True, params=["on", "off"], ids=["lane-on", "lane-off"])
def http_lane(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the fast lane on and off (read when an HttpProxy is built)."""
    mode = str(request.param)
    monkeypatch.setenv("AMBASSADOR_HTTP_LANE", mode)
    return mode


async def test_keepalive_both_sides_and_header_policy() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        for _ in range(3):
            resp, body = await client.get(
                "/echo", [("Connection", "keep-alive, x-hop"), ("x-hop", "1")]
            )
            assert resp.status_code == 200
            seen = json.loads(body)
            assert "x-hop" not in seen["headers"] and "connection" not in seen["headers"]
            assert seen["headers"]["x-request-id"] == header(resp, "x-request-id")
            assert seen["headers"]["traceparent"].startswith("00-")
            assert "keep-alive" not in [k.decode() for k, _ in resp.headers]
        await client.aclose()
        # Three requests over one client connection reused one upstream connection.
        assert up.connections == 1
        assert [r["connection"] for r in up.requests] == [1, 1, 1]
        assert (
            await px.metric("ambassador_http_requests_total", code_class="2xx", method="GET") == 3
        )
        assert await px.metric("ambassador_http_pool_connections", state="idle") == 1


async def test_pipelined_requests_answered_in_order() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        raw = b"".join(
            f"GET /echo?i={i} HTTP/1.1\r\nhost: app\r\nx-i: {i}\r\n\r\n".encode() for i in range(3)
        )
        await client.stream.send_all(raw)  # all three before reading any answer
        bodies = []
        for i in range(3):
            # Tell our h11 client what went out (the bytes were sent above, raw).
            client.conn.send(
                h11.Request(method="GET", target=f"/echo?i={i}", headers=[("host", "app")])
            )
            client.conn.send(h11.EndOfMessage())
            bodies.append(json.loads((await client.response())[1]))
        assert [b["headers"]["x-i"] for b in bodies] == ["0", "1", "2"]
        await client.aclose()


async def test_streamed_bodies_both_ways() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        # A chunked request body of 1 MiB, sent in pieces.
        await client.send(
            h11.Request(
                method="POST",
                target="/echo",
                headers=[("host", "app"), ("transfer-encoding", "chunked")],
            )
        )
        for _ in range(16):
            await client.send(h11.Data(data=b"x" * 65536))
        await client.send(h11.EndOfMessage())
        resp, body = await client.response()
        assert resp.status_code == 200
        assert json.loads(body)["body_size"] == 16 * 65536
        # A chunked response crosses as chunks.
        resp, body = await client.get("/chunked?n=5")
        assert body == b"chunk0;chunk1;chunk2;chunk3;chunk4;"
        await client.aclose()


async def test_retry_after_upstream_fails_first_attempt() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        resp, _ = await client.get("/fail-once")
        assert resp.status_code == 200
        assert up.hits["/fail-once"] == 2
        resp, _ = await client.get("/drop-once")
        assert resp.status_code == 200
        assert up.hits["/drop-once"] == 2
        await client.aclose()
        assert await px.metric("ambassador_http_retries_total", env="dev") == 2


async def test_post_is_not_retried_and_5xx_passes_through() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        resp, _ = await client.request("POST", "/fail-once", b"{}")
        assert resp.status_code == 503  # the upstream's own answer, not retried
        assert up.hits["/fail-once"] == 1
        resp, _ = await client.get("/error")
        assert resp.status_code == 500
        await client.aclose()
        assert await px.metric("ambassador_http_retries_total") == 0
        assert await px.metric("ambassador_http_requests_total", code_class="5xx") == 2


async def test_request_timeout_is_504(autojump_clock: trio.abc.Clock) -> None:
    settings = HttpSettings(request_timeout=1.0)
    async with running_upstream() as up, running_proxy([up.address], settings) as px:
        client = await Client.connect(px.port)
        start = trio.current_time()
        resp, body = await client.get("/slow?s=5")
        assert resp.status_code == 504
        assert trio.current_time() - start == pytest.approx(1.0, abs=0.01)
        assert json.loads(body)["error"] == "upstream timeout"
        # The same client connection still works.
        resp, _ = await client.get("/echo")
        assert resp.status_code == 200
        await client.aclose()


async def test_no_healthy_upstream_is_503_at_once() -> None:
    dead = ("127.0.0.1", free_port())
    async with running_proxy([dead]) as px:
        client = await Client.connect(px.port)
        resp, body = await client.get("/echo")
        assert resp.status_code == 503
        assert json.loads(body)["status"] == 503
        await client.aclose()
        px.cluster.set_addresses([], trio.current_time())
        client = await Client.connect(px.port)
        resp, body = await client.get("/echo")
        assert resp.status_code == 503
        assert json.loads(body)["error"] == "no healthy upstream"
        await client.aclose()


async def test_malformed_and_oversized_requests() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        for raw, status in (
            (b"NOT HTTP AT ALL\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nhost: a\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        ):
            client = await Client.connect(px.port)
            await client.stream.send_all(raw)
            resp, body = await client.response()
            assert resp.status_code == status
            assert json.loads(body)["status"] == status
            await client.aclose()
        assert up.requests == []


async def test_misbehaving_upstream_does_not_take_the_listener_down() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        resp, _ = await client.get("/garbage")
        assert resp.status_code == 502
        await client.aclose()
        client = await Client.connect(px.port)
        resp, _ = await client.get("/echo")
        assert resp.status_code == 200
        await client.aclose()


async def test_5xx_ejects_the_endpoint_and_traffic_moves() -> None:
    outlier = OutlierConfig(consecutive_failures=2, max_ejection_percent=50.0)
    async with running_upstream() as bad, running_upstream() as good:
        bad.always = 500
        async with running_proxy([bad.address, good.address], outlier=outlier) as px:
            client = await Client.connect(px.port)
            statuses = [(await client.get("/echo"))[0].status_code for _ in range(4)]
            assert statuses.count(500) == 2  # round robin: every other request
            await trio.testing.wait_all_tasks_blocked()
            bad_ep = px.cluster.endpoint(bad.address)
            assert bad_ep is not None and bad_ep.is_ejected(trio.current_time())
            assert bad_ep.active == 0
            for _ in range(4):
                resp, _ = await client.get("/echo")
                assert resp.status_code == 200
            assert good.hits["/echo"] == 6 and bad.hits["/echo"] == 2
            await client.aclose()
            failures = await px.metric("ambassador_http_upstream_failures_total", reason="5xx")
            assert failures == 2


async def test_expect_100_continue() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        await client.send(
            h11.Request(
                method="PUT",
                target="/continue",
                headers=[("host", "a"), ("content-length", "5"), ("expect", "100-continue")],
            )
        )
        interim = await _next(client.stream, client.conn)
        assert isinstance(interim, h11.InformationalResponse) and interim.status_code == 100
        await client.send(h11.Data(data=b"hello"), h11.EndOfMessage())
        resp, body = await client.response()
        assert resp.status_code == 200 and json.loads(body)["body_size"] == 5
        await client.aclose()


async def test_websocket_upgrade_tunnel() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        stream = await trio.open_tcp_stream("127.0.0.1", px.port)
        await stream.send_all(
            b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        status_line, _, rest = head.partition(b"\r\n\r\n")
        assert status_line.startswith(b"HTTP/1.1 101")
        assert b"upgrade: websocket" in status_line.lower()
        await stream.send_all(b"\x81\x05hello")
        got = rest
        while len(got) < len(b"echo:\x81\x05hello"):
            got += await stream.receive_some(4096)
        assert got == b"echo:\x81\x05hello"
        await stream.aclose()
        assert up.requests[0]["headers"]["upgrade"] == "websocket"


async def test_injected_header_and_upstream_host(tmp_path: Path) -> None:
    token = tmp_path / "authorization"
    token.write_text("Bearer s3cret\n")
    settings = HttpSettings(
        upstream_host="api.prod.internal", inject_headers=(("authorization", token),)
    )
    async with running_upstream() as up, running_proxy([up.address], settings) as px:
        client = await Client.connect(px.port)
        _, body = await client.get("/echo", [("authorization", "Bearer from-app")])
        seen = json.loads(body)["headers"]
        assert seen["authorization"] == "Bearer s3cret"
        assert seen["host"] == "api.prod.internal"
        await client.aclose()


async def test_drain_closes_idle_keepalive_connections() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        resp, _ = await client.get("/echo")
        assert resp.status_code == 200
        px.proxy.start_drain()
        assert await client.stream.receive_some(10) == b""  # closed by the proxy
        await client.aclose()


# --------------------------------------------------------------------------- TLS upstream


async def test_https_upstream_with_verification(tmp_path: Path) -> None:
    import ssl

    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with running_upstream(ctx) as up:
        async with running_proxy([up.address], tls=UpstreamTLS(ca_file=ca_file)) as px:
            client = await Client.connect(px.port)
            for _ in range(2):
                resp, _ = await client.get("/echo")
                assert resp.status_code == 200
            await client.aclose()
            assert up.connections == 1  # TLS connections are pooled too
        other = tmp_path / "other.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        async with running_proxy([up.address], tls=UpstreamTLS(ca_file=other)) as px:
            client = await Client.connect(px.port)
            resp, _ = await client.get("/echo")
            assert resp.status_code == 503
            await client.aclose()
            failures = await px.metric("ambassador_http_upstream_failures_total", reason="connect")
            assert failures >= 1


# --------------------------------------------------------------------------- curl, a real client


async def curl(*args: str) -> tuple[int, str, str]:
    done = await trio.run_process(
        ["curl", "-sS", "--max-time", "20", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.mark.slow
async def test_curl_keepalive_chunked_upload_and_100_continue(tmp_path: Path) -> None:
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"y" * 300_000)
    async with running_upstream() as up, running_proxy([up.address]) as px:
        base = f"http://127.0.0.1:{px.port}"
        # Two URLs on one curl: one client connection, reused.
        code, out, err = await curl("-w", "%{num_connects}\\n", f"{base}/echo", f"{base}/echo")
        assert code == 0, err
        assert up.connections == 1
        # Chunked upload with Expect: 100-continue (curl sends it for big bodies).
        code, out, err = await curl(
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            f"@{upload}",
            f"{base}/continue",
        )
        assert code == 0, err
        assert json.loads(out)["body_size"] == 300_000
        code, out, err = await curl("--raw", f"{base}/chunked?n=3")
        assert code == 0, err
        assert "chunk0;" in out and "\r\n" in out  # raw chunked framing seen by curl
        code, out, err = await curl("-o", "/dev/null", "-w", "%{http_code}", f"{base}/error")
        assert out == "500"
        # An HTTP/1.0 client: answered, its request carried upstream as HTTP/1.1.
        code, out, err = await curl("--http1.0", "-H", "Host:", f"{base}/echo")
        assert code == 0, err
        assert json.loads(out)["headers"]["host"] == f"127.0.0.1:{up.port}"
        assert await px.metric("ambassador_http_requests_total", method="POST") == 1


async def test_truncated_upstream_body_breaks_the_client_connection() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        await client.send(
            h11.Request(method="GET", target="/truncate", headers=[("host", "a")]),
            h11.EndOfMessage(),
        )
        with pytest.raises((h11.RemoteProtocolError, trio.BrokenResourceError)):
            await client.response()  # never a short body taken for a whole one
        await client.aclose()
        client = await Client.connect(px.port)
        resp, _ = await client.get("/echo")
        assert resp.status_code == 200
        await client.aclose()


async def test_client_leaving_mid_body_is_contained() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        await client.send(
            h11.Request(
                method="POST", target="/echo", headers=[("host", "a"), ("content-length", "1000")]
            ),
            h11.Data(data=b"x" * 10),
        )
        await trio.testing.wait_all_tasks_blocked()
        await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert await px.metric("ambassador_http_pool_connections", state="idle") == 0
        client = await Client.connect(px.port)
        resp, _ = await client.get("/echo")
        assert resp.status_code == 200
        await client.aclose()


async def test_idle_keepalive_client_closed_after_timeout(autojump_clock: trio.abc.Clock) -> None:
    """On memory streams and virtual time: the idle timeout is exact."""
    cluster = Cluster("api/dev")
    proxy = HttpProxy(
        "api", HttpSettings(keepalive_timeout=7.0), Registry(), lambda: Route("dev", cluster)
    )
    app, proxy_side = trio.testing.memory_stream_pair()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proxy.serve_client, proxy_side, "mem")
        await app.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        response = b""
        while b"}" not in response:
            response += await app.receive_some(4096)
        assert response.startswith(b"HTTP/1.1 503 ")  # no endpoints at all
        assert b'"no healthy upstream"' in response
    assert trio.current_time() - start == pytest.approx(7.0)


async def test_access_log_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="ambassador.access")
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        resp, body = await client.request(
            "POST", "/echo?x=1", b"abc", [("traceparent", traceparent)]
        )
        await client.send(
            h11.Request(method="CONNECT", target="example.com:443", headers=[("host", "a")]),
            h11.EndOfMessage(),
        )
        refused, _ = await client.response()
        assert refused.status_code == 405
        await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
    formatter = JsonFormatter()
    lines = [
        json.loads(formatter.format(r)) for r in caplog.records if r.name == "ambassador.access"
    ]
    assert len(lines) == 2
    first = lines[0]
    assert first["method"] == "POST" and first["path"] == "/echo?x=1"
    assert first["status"] == 200 and first["env"] == "dev" and first["listener"] == "api"
    assert first["upstream"] == f"127.0.0.1:{up.port}"
    assert first["bytes_in"] == 3 and first["bytes_out"] == len(body)
    assert first["request_id"] == header(resp, "x-request-id")
    assert first["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert first["duration"] >= 0 and first["attempts"] == 1 and first["outcome"] == "ok"
    assert lines[1]["status"] == 405 and lines[1]["method"] == "CONNECT"


async def test_upstream_host_is_the_tls_server_name(tmp_path: Path) -> None:
    import ssl

    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.prod.test").configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    settings = HttpSettings(upstream_host="api.prod.test:443")
    tls = UpstreamTLS(ca_file=ca_file)
    async with running_upstream(ctx) as up, running_proxy([up.address], settings, tls=tls) as px:
        client = await Client.connect(px.port)
        resp, body = await client.get("/echo")
        assert resp.status_code == 200
        assert json.loads(body)["headers"]["host"] == "api.prod.test:443"
        await client.aclose()


@pytest.mark.slow
async def wrk_through(px: Proxy, wrk: str, connections: int, seconds: int) -> float:
    """Run wrk against ``/echo`` through the proxy: every answer a 200, each one counted.

    Returns the 2xx requests the proxy counted (at least as many as wrk completed).
    """
    import re

    done = await trio.run_process(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{px.port}/echo"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    match = re.search(r"(\d+) requests in", out)
    assert match is not None, out
    completed = int(match.group(1))
    assert completed > 0
    await trio.testing.wait_all_tasks_blocked()
    counted = await px.metric("ambassador_http_requests_total", code_class="2xx")
    assert counted >= completed
    assert await px.metric("ambassador_http_requests_total", code_class="5xx") == 0
    return counted


async def test_wrk_concurrent_keepalive_clients() -> None:
    """wrk's 16 keep-alive connections: every answer a 200, the pool bounded, nothing leaked."""
    settings = HttpSettings(pool_max_idle=4)
    async with running_upstream() as up, running_proxy([up.address], settings) as px:
        await wrk_through(px, "wrk", 16, 2)
        assert await px.metric("ambassador_http_pool_connections", state="idle") <= 4
        assert await px.metric("ambassador_http_pool_connections", state="active") == 0
        ep = px.cluster.endpoint(up.address)
        assert ep is not None and ep.active == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: b\r\n folded\r\n\r\n",
        b"GET /echo HTTP/1.1\nHost: a\n\n",
    ],
    ids=["CL+TE", "duplicate CL", "TE not ending chunked", "obs-fold", "bare LF"],
)
async def test_smuggling_attempts_are_400_and_never_reach_the_upstream(raw: bytes) -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        await client.stream.send_all(raw)
        resp, body = await client.response()
        assert resp.status_code == 400
        assert json.loads(body) == {"error": "malformed request", "status": 400, "request_id": ""}
        assert header(resp, "connection") == "close"
        assert await client.stream.receive_some(100) == b""  # closed after the 400
        await client.aclose()
        assert up.requests == []


async def test_head_request_then_keepalive() -> None:
    """A HEAD response has no body whatever its Content-Length says; the client connection goes on.

    (This upstream closes after a HEAD: h11 refuses the body it tries to send.)
    """
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        await client.send(
            h11.Request(method="HEAD", target="/echo", headers=[("host", "a")]), h11.EndOfMessage()
        )
        resp, body = await client.response()
        assert resp.status_code == 200 and body == b""
        assert int(header(resp, "content-length") or 0) > 0
        resp, body = await client.get("/echo")
        assert resp.status_code == 200 and json.loads(body)["method"] == "GET"
        assert [r["method"] for r in up.requests] == ["HEAD", "GET"]
        await client.aclose()


async def test_client_bytes_are_counted_when_asked() -> None:
    from ambassador.relay import RelayCounters

    async with running_upstream() as up, running_proxy([up.address]) as px:
        app, proxy_side = trio.testing.memory_stream_pair()
        counters = RelayCounters()
        request = b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(px.proxy.serve_client, proxy_side, "mem", counters)
            await app.send_all(request)
            response = b""
            while b"}" not in response:
                response += await app.receive_some(65536)
            await app.send_eof()
        assert counters.bytes_in == len(request)
        assert counters.bytes_out == len(response)
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["body_size"] == 5


def test_access_log_fast_path_writes_what_log_event_writes() -> None:
    """The access log's own writer and ``log_event`` (python-json-logger) give the same line."""
    import io
    import logging

    from ambassador.http.accesslog import AccessLog
    from sidecar_common.jsonlog import log_event

    def logger(name: str) -> tuple[logging.Logger, io.StringIO]:
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.setFormatter(JsonFormatter())
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.propagate = False
        lg.setLevel(logging.INFO)
        return lg, out

    fields: dict[str, Any] = {
        "listener": "api",
        "env": "dev",
        "method": "GET",
        "path": "/x?y=1",
        "status": 200,
        "duration": 0.001234,
        "bytes_in": 0,
        "upstream": "127.0.0.1:80",
        "reason": "",
    }
    fast, fast_out = logger("test.access.fast")
    slow, slow_out = logger("test.access.slow")
    access = AccessLog(fast)
    access.request(**fields)
    access.flush()
    log_event(slow, "request", **fields)
    a, b = json.loads(fast_out.getvalue()), json.loads(slow_out.getvalue())
    assert fast_out.getvalue().count("\n") == 1
    assert a.pop("time")[:16] == b.pop("time")[:16]
    assert a.pop("logger") == "test.access.fast" and b.pop("logger") == "test.access.slow"
    assert a == b
    # Non-ASCII (python-json-logger escapes it) goes through log_event itself.
    access.request(**{**fields, "path": "/caf\u00e9"})
    assert json.loads(fast_out.getvalue().splitlines()[1])["path"] == "/caf\u00e9"


async def test_a_stale_pooled_connection_costs_a_retry_or_a_peek_never_an_error() -> None:
    """Reuse without the MSG_PEEK check only where a reset is retried transparently.

    The upstream closes each connection right after a keep-alive answer: a
    GET without a body within a second reuses the dead connection unchecked
    and is retried on a new one; a POST is checked first and goes straight to
    a new connection. Both get their 200.
    """
    async with running_upstream() as up, running_proxy([up.address]) as px:
        client = await Client.connect(px.port)
        for method, retries in (("GET", 1.0), ("POST", 0.0)):
            up.closed = trio.Event()
            resp, _ = await client.get("/close-after")
            assert resp.status_code == 200
            await up.closed.wait()  # the pooled connection is dead now
            before = await px.metric("ambassador_http_retries_total")
            body = b"hi" if method == "POST" else b""
            resp, body = await client.request(method, "/echo", body)
            assert resp.status_code == 200, body
            assert json.loads(body)["method"] == method
            assert await px.metric("ambassador_http_retries_total") - before == retries
        await client.aclose()
