"""The HTTP listener's fast lane (``ambassador.http.lane``) over real loopback sockets.

The lane serves plain keep-alive requests (no body, a pooled upstream
connection) without the trio shell, and hands everything else back to it.
These tests check that it is used, that what it hands back is finished by the
shell exactly as the shell would have served it alone (metrics, access-log
fields), and that its own responses (Content-Length, chunked, close-delimited,
HEAD, 1xx, back-pressure, broken bodies) are right. Where the shell is the
reference, the same scenario runs on a proxy with ``AMBASSADOR_HTTP_LANE=off``.

The shared upstream and clients come from ``test_http_proxy``; ``RawUpstream``
here adds what h11 will not send (large bodies written as fast as the proxy
takes them, close-delimited bodies, 103 Early Hints, an unasked 101, HEAD
answers that keep the connection).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import pytest
import trio
import trio.testing

from ambassador.endpoint import EndpointState
from ambassador.http import HttpSettings, RetrySettings
from ambassador.http.lane import Lane
from ambassador.relay import RelayCounters
from sidecar_common.jsonlog import JsonFormatter
from tests.ambassador.test_http_proxy import (
    Client,
    Proxy,
    Upstream,
    header,
    running_proxy,
    running_upstream,
    wrk_through,
)
from tests.support.wait import eventually

# --------------------------------------------------------------------------- helpers


def lane_of(px: Proxy) -> Lane:
    lane = px.proxy.lane
    assert lane is not None, "AMBASSADOR_HTTP_LANE=on should give the proxy a lane"
    return lane


@pytest.fixture(autouse=True)
def lane_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane is on unless a test builds its proxy with ``proxy_in_mode``."""
    monkeypatch.setenv("AMBASSADOR_HTTP_LANE", "on")


@asynccontextmanager
async def proxy_in_mode(
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    addresses: list[tuple[str, int]],
    settings: HttpSettings | None = None,
) -> AsyncIterator[Proxy]:
    """``running_proxy`` with ``AMBASSADOR_HTTP_LANE=mode`` (read when the proxy is built)."""
    monkeypatch.setenv("AMBASSADOR_HTTP_LANE", mode)
    async with running_proxy(addresses, settings) as px:
        assert (px.proxy.lane is not None) == (mode == "on")
        yield px


def access_lines(caplog: pytest.LogCaptureFixture, port: int | None = None) -> list[dict[str, Any]]:
    """The access-log lines (as JSON), optionally only those about upstream ``port``."""
    formatter = JsonFormatter()
    lines = [
        json.loads(formatter.format(r)) for r in caplog.records if r.name == "ambassador.access"
    ]
    if port is not None:
        lines = [line for line in lines if line.get("upstream", "").endswith(f":{port}")]
    return lines


def idle(ep: EndpointState) -> bool:
    """No attempt holds an active slot on ``ep``."""
    return ep.active == 0


async def metrics_of(
    px: Proxy, *names: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The proxy's samples of ``names``, labels minus the endpoint (its port differs per run)."""
    from sidecar_common.metrics import parse_text

    await trio.testing.wait_all_tasks_blocked()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for (metric, labelset), value in parse_text(px.registry.render()).items():
        if metric in names:
            labels = tuple(sorted((k, v) for k, v in labelset if k != "endpoint"))
            out[(metric, labels)] = out.get((metric, labels), 0.0) + value
    return out


COMPARED = (
    "ambassador_http_requests_total",
    "ambassador_http_retries_total",
    "ambassador_http_upstream_failures_total",
    "ambassador_http_retry_budget_exhausted_total",
)


def comparable(line: dict[str, Any]) -> dict[str, Any]:
    """An access-log line without what differs between two runs (time, ids, ports)."""
    drop = {"time", "duration", "request_id", "trace_id", "upstream", "client"}
    out = {k: v for k, v in line.items() if k not in drop}
    out["reason"] = re.sub(r"127\.0\.0\.1:\d+", "EP", str(line.get("reason", "")))
    return out


# --------------------------------------------------------------------------- a raw upstream

PATTERN = bytes(range(256)) * 4096  # 1 MiB, so a byte out of place shows in the digest


def pattern_body(n: int) -> bytes:
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


@dataclass
class RawUpstream:
    """A hand-written HTTP/1.1 server (requests without bodies only), scripted by path:

    /ok                 200, ``ok``, keep-alive
    /big?n=N            200 with Content-Length N (``PATTERN`` bytes), written in 64 KiB pieces
    /close-delimited?n=N 200 without Content-Length or chunked: the body ends at close
    /burst-close?n=N    like /close-delimited, head, body and FIN written at once
    /burst-truncate     Content-Length 100, 7 bytes and FIN written at once
    /cut                Content-Length 100, 7 bytes, then close
    /early              103 Early Hints, then 200 ``ok`` (two writes)
    /early-fail-once    the first time: 103 Early Hints and a 503 in one write; then 200 ``ok``
    /switch             101 Switching Protocols nobody asked for
    HEAD anything       200 with Content-Length 1234 and no body, keep-alive
    """

    port: int = 0
    connections: int = 0
    #: Body bytes of /big written so far (the proxy took them from the socket or its buffers).
    sent: int = 0
    #: /early-fail-once has answered its 503.
    failed_once: bool = False

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


async def raw_handler(up: RawUpstream, stream: trio.SocketStream) -> None:
    up.connections += 1
    # Small send buffer: what the proxy did not read stays here, visibly.
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            url = urlsplit(target.decode())
            n = int(parse_qs(url.query).get("n", ["1000"])[0])
            if method == b"HEAD":
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1234\r\n\r\n"
                )
            elif url.path == "/big":
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
                body = pattern_body(n)
                for i in range(0, n, 65536):
                    piece = body[i : i + 65536]
                    await stream.send_all(piece)
                    up.sent += len(piece)
            elif url.path == "/close-delimited":
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
                body = pattern_body(n)
                for i in range(0, n, 4096):
                    await stream.send_all(body[i : i + 4096])
                await trio.sleep(0.05)  # the FIN apart from the last bytes (see /burst-close)
                return
            elif url.path in ("/burst-close", "/burst-truncate"):
                # Head, body and FIN queued at once (no checkpoint in between): the
                # proxy's first read of this response finds the EOF already pending.
                if url.path == "/burst-close":
                    data = b"HTTP/1.1 200 OK\r\n\r\n" + pattern_body(n)
                else:
                    data = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial"
                assert os.write(stream.socket.fileno(), data) == len(data)
                stream.socket.shutdown(socket.SHUT_WR)
                return
            elif url.path == "/cut":
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                await trio.sleep(0.05)  # the FIN apart from the last bytes (see /burst-truncate)
                return
            elif url.path == "/early":
                await stream.send_all(b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n")
                await trio.sleep(0.01)
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            elif url.path == "/early-fail-once" and not up.failed_once:
                up.failed_once = True
                await stream.send_all(
                    b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n"
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                )
            elif url.path == "/switch":
                await stream.send_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n"
                )
                await stream.receive_some(100)  # until the proxy gives up on it
                return
            else:
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def running_raw_upstream() -> AsyncIterator[RawUpstream]:
    up = RawUpstream()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                trio.serve_tcp, functools.partial(raw_handler, up), 0, host="127.0.0.1"
            )
        )
        up.port = listeners[0].socket.getsockname()[1]
        yield up
        nursery.cancel_scope.cancel()


async def small_window_client(port: int) -> trio.SocketStream:
    """A client whose receive buffer is small: it holds little of what it does not read."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def read_response_head(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """(the response head, body bytes that came with it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        assert data, "connection closed before a response head"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


# --------------------------------------------------------------------------- the lane is used


async def test_sequential_gets_on_one_connection_are_served_in_the_lane(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="ambassador.access")
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        ids = []
        for i in range(10):
            resp, body = await client.get(f"/echo?i={i}")
            assert resp.status_code == 200
            seen = json.loads(body)
            assert seen["headers"]["x-request-id"] == header(resp, "x-request-id")
            assert seen["headers"]["traceparent"].startswith("00-")
            ids.append(header(resp, "x-request-id"))
        await client.aclose()
        # The first request found no pooled connection (the shell connected); the rest: the lane.
        assert lane.handed_back == 1
        assert lane.served == 9
        assert up.connections == 1
        assert await px.metric("ambassador_http_requests_total", code_class="2xx") == 10
        ep = px.cluster.endpoint(up.address)
        assert ep is not None and ep.active == 0
    lines = access_lines(caplog)
    assert len(lines) == 10
    assert [line["request_id"] for line in lines] == ids
    for i, line in enumerate(lines):
        assert line["path"] == f"/echo?i={i}" and line["status"] == 200
        assert line["attempts"] == 1 and line["outcome"] == "ok" and line["reason"] == ""
        assert len(line["trace_id"]) == 32 and line["env"] == "dev"
        assert line["upstream"] == f"127.0.0.1:{up.port}"
        assert line["bytes_out"] > 0


async def test_headers_that_change_between_requests_are_honoured() -> None:
    """The lane keeps the policy of a connection's last header section: a change is seen at once."""
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/echo")  # the shell connects; the rest is the lane's
        sent: list[list[tuple[str, str]]] = [
            [("x-a", "1")],
            [("x-a", "1"), ("traceparent", trace), ("x-request-id", "mine-1")],
            [("x-a", "2"), ("keep-alive", "timeout=5"), ("connection", "keep-alive, x-a")],
            [("x-a", "1")],
            [("x-a", "1")],
        ]
        seen = []
        for headers in sent:
            resp, body = await client.get("/echo", headers)
            assert resp.status_code == 200
            seen.append((json.loads(body)["headers"], header(resp, "x-request-id")))
        await client.aclose()
        assert lane.served == len(sent)
    first, with_trace, hop, again, same = seen
    assert first[0]["x-a"] == "1" and "keep-alive" not in first[0]
    # The app's trace is continued (new span), its request id kept and echoed.
    assert with_trace[0]["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert with_trace[0]["traceparent"] != trace
    assert with_trace[0]["x-request-id"] == "mine-1" and with_trace[1] == "mine-1"
    # Hop-by-hop headers and what Connection names are stripped.
    assert "x-a" not in hop[0] and "keep-alive" not in hop[0] and "connection" not in hop[0]
    # The same section again: new ids for each request, a new trace each time.
    assert again[0]["x-a"] == same[0]["x-a"] == "1"
    ids = {first[1], again[1], same[1]}
    assert len(ids) == 3
    traces = {first[0]["traceparent"][3:35], again[0]["traceparent"][3:35]}
    assert len(traces) == 2


async def test_lane_and_shell_write_the_same_access_log_and_metrics(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level("INFO", logger="ambassador.access")
    results = {}
    for mode in ("on", "off"):
        async with running_upstream() as up, proxy_in_mode(monkeypatch, mode, [up.address]) as px:
            client = await Client.connect(px.port)
            for target in ("/echo", "/echo?x=1", "/chunked?n=2", "/error"):
                await client.get(target)
            await client.aclose()
            results[mode] = (
                await metrics_of(px, *COMPARED),
                [comparable(line) for line in access_lines(caplog, up.port)],
            )
            if mode == "on":
                assert lane_of(px).served == 3
    assert results["on"] == results["off"]


async def test_pipelined_requests_across_lane_and_shell_stay_in_order() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        resp, _ = await client.get("/echo?warm")  # pools a connection
        served, back = lane.served, lane.handed_back
        raw = (
            b"GET /echo?i=0 HTTP/1.1\r\nhost: app\r\nx-i: 0\r\n\r\n"
            b"POST /echo?i=1 HTTP/1.1\r\nhost: app\r\nx-i: 1\r\ntransfer-encoding: chunked\r\n"
            b"\r\n5\r\nhello\r\n0\r\n\r\n"
            b"GET /echo?i=2 HTTP/1.1\r\nhost: app\r\nx-i: 2\r\n\r\n"
            b"GET /echo?i=3 HTTP/1.1\r\nhost: app\r\nx-i: 3\r\n\r\n"
        )
        await client.stream.send_all(raw)  # in one write, before reading any answer
        seen = []
        for i, method in enumerate(("GET", "POST", "GET", "GET")):
            client.conn.send(
                h11.Request(method=method, target=f"/echo?i={i}", headers=[("host", "a")])
            )
            client.conn.send(h11.EndOfMessage())
            resp, body = await client.response()
            assert resp.status_code == 200
            seen.append(json.loads(body))
        assert [s["headers"]["x-i"] for s in seen] == ["0", "1", "2", "3"]
        assert [s["method"] for s in seen] == ["GET", "POST", "GET", "GET"]
        assert seen[1]["body_size"] == 5
        # The first GET in the lane; the chunked POST handed back, the shell went on from there.
        assert lane.served > served
        assert lane.handed_back > back
        # And the connection goes on in the lane afterwards.
        served = lane.served
        resp, _ = await client.get("/echo?after")
        assert resp.status_code == 200 and lane.served == served + 1
        await client.aclose()
        assert up.connections == 1


async def test_requests_the_lane_does_not_serve_go_to_the_shell() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/echo")
        for method, headers, body in (
            ("PUT", [("transfer-encoding", "chunked")], b"abc"),
            ("POST", [("expect", "100-continue"), ("content-length", "2")], b"{}"),
        ):
            served, back = lane.served, lane.handed_back
            await client.send(
                h11.Request(method=method, target="/echo", headers=[("host", "a"), *headers]),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
            resp, answer = await client.response()
            assert resp.status_code == 200 and json.loads(answer)["body_size"] == len(body)
            assert (lane.served, lane.handed_back) == (served, back + 1)
        # Connection: close: the shell answers and closes.
        served = lane.served
        resp, _ = await client.get("/echo", [("connection", "close")])
        assert resp.status_code == 200 and header(resp, "connection") == "close"
        assert lane.served == served
        assert await client.stream.receive_some(10) == b""
        await client.aclose()
        # An HTTP/1.0 request is the shell's too.
        stream = await trio.open_tcp_stream("127.0.0.1", px.port)
        await stream.send_all(b"GET /echo HTTP/1.0\r\nhost: a\r\n\r\n")
        got = b""
        while data := await stream.receive_some(65536):
            got += data
        assert got.startswith(b"HTTP/1.1 200 ") and lane.served == served
        await stream.aclose()


async def test_a_small_body_goes_with_its_head_in_the_lane(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body that arrived whole (up to the replay buffer) is sent with its head; larger: shell."""
    caplog.set_level("INFO", logger="ambassador.access")
    settings = HttpSettings(retry=RetrySettings(replay_buffer=64))
    async with running_upstream() as up, running_proxy([up.address], settings) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/echo")
        served, back = lane.served, lane.handed_back
        for body in (b'{"a": 1}', b"x" * 64):
            resp, answer = await client.request("POST", "/echo", body)
            assert resp.status_code == 200 and json.loads(answer)["body_size"] == len(body)
        assert (lane.served, lane.handed_back) == (served + 2, back)
        # Over the replay buffer: the shell streams it.
        big = b"y" * 65
        resp, answer = await client.request("POST", "/echo", big)
        assert resp.status_code == 200 and json.loads(answer)["body_size"] == 65
        assert (lane.served, lane.handed_back) == (served + 2, back + 1)
        # An idempotent request with a body is retried after a reset, its body sent again.
        await client.get("/echo")
        resp, answer = await client.request("PUT", "/drop-once", b"hello")
        assert resp.status_code == 200 and json.loads(answer)["body_size"] == 5
        await client.aclose()
    puts = [line for line in access_lines(caplog) if line["path"] == "/drop-once"]
    assert len(puts) == 1
    assert puts[0]["attempts"] == 2 and puts[0]["bytes_in"] == 5 and puts[0]["outcome"] == "ok"
    posts = [line for line in access_lines(caplog) if line["method"] == "POST"]
    assert [line["bytes_in"] for line in posts] == [8, 64, 65]


async def test_an_app_leaving_mid_body_is_closed_and_nothing_goes_upstream() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/echo")
        await client.get("/echo")
        hits = up.hits.get("/echo", 0)
        await client.stream.send_all(
            b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc"
        )
        await trio.testing.wait_all_tasks_blocked()
        assert lane.served == 1  # parked in the lane, collecting the body
        await client.stream.send_eof()
        with trio.fail_after(5):
            assert await client.stream.receive_some(10) == b""  # closed, no answer
        await client.aclose()
        assert up.hits.get("/echo", 0) == hits
        ep = px.cluster.endpoint(up.address)
        assert ep is not None and ep.active == 0


async def test_a_request_head_arriving_in_pieces_is_served_in_the_lane() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/echo")
        served = lane.served
        for piece in (b"GET /echo?split HTTP/1.1\r\nho", b"st: a\r\nx-i: 7\r", b"\n\r\n"):
            await client.stream.send_all(piece)
            await trio.sleep(0.02)
        client.conn.send(h11.Request(method="GET", target="/echo?split", headers=[("host", "a")]))
        client.conn.send(h11.EndOfMessage())
        resp, body = await client.response()
        assert resp.status_code == 200 and json.loads(body)["headers"]["x-i"] == "7"
        assert lane.served == served + 1
        await client.aclose()


async def test_many_pipelined_requests_then_half_close_are_all_answered() -> None:
    """50 requests in one write, then EOF: every answer, in order, then the proxy closes."""
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/echo")
        raw = b"".join(
            b"GET /echo?i=%d HTTP/1.1\r\nhost: a\r\nx-i: %d\r\n\r\n" % (i, i) for i in range(50)
        )
        await client.stream.send_all(raw)
        await client.stream.send_eof()
        got = b""
        with trio.fail_after(10):
            while data := await client.stream.receive_some(65536):
                got += data
        answers = re.findall(rb'"x-i": "(\d+)"', got)
        assert [int(i) for i in answers] == list(range(50))
        assert got.count(b"HTTP/1.1 200 ") == 50
        assert lane.served >= 49
        await client.aclose()


async def test_garbage_after_lane_requests_is_a_400_from_the_shell() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/echo")
        await client.get("/echo")
        served, back = lane.served, lane.handed_back
        await client.stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        resp, body = await client.response()
        assert resp.status_code == 400 and json.loads(body)["status"] == 400
        assert (lane.served, lane.handed_back) == (served, back + 1)
        assert await client.stream.receive_some(10) == b""
        await client.aclose()
        assert [r["path"] for r in up.requests] == ["/echo", "/echo"]


async def test_the_endpoint_the_lane_chose_is_the_one_the_shell_connects_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round robin over two endpoints: the same spread with and without the lane."""
    spread = {}
    for mode in ("on", "off"):
        async with (
            running_upstream() as a,
            running_upstream() as b,
            proxy_in_mode(monkeypatch, mode, [a.address, b.address]) as px,
        ):
            client = await Client.connect(px.port)
            for _ in range(8):
                resp, _ = await client.get("/echo")
                assert resp.status_code == 200
            await client.aclose()
            spread[mode] = (a.hits["/echo"], b.hits["/echo"], a.connections, b.connections)
            if mode == "on":
                assert lane_of(px).served == 6  # each endpoint's first request: the shell
    assert spread["on"] == spread["off"] == (4, 4, 1, 1)


# --------------------------------------------------------------------------- hand-backs


async def _stale_pooled_connection(px: Proxy, up: Upstream) -> tuple[h11.Response, bytes]:
    client = await Client.connect(px.port)
    up.closed = trio.Event()
    resp, _ = await client.get("/close-after")
    assert resp.status_code == 200
    await up.closed.wait()  # the pooled connection is dead now
    resp, body = await client.get("/echo")
    await client.aclose()
    return resp, body


async def _drop_once(px: Proxy, up: Upstream) -> tuple[h11.Response, bytes]:
    client = await Client.connect(px.port)
    await client.get("/echo")
    resp, body = await client.get("/drop-once")
    await client.aclose()
    return resp, body


async def _fail_once(px: Proxy, up: Upstream) -> tuple[h11.Response, bytes]:
    client = await Client.connect(px.port)
    await client.get("/echo")
    resp, body = await client.get("/fail-once")
    await client.aclose()
    return resp, body


async def _timeout(px: Proxy, up: Upstream) -> tuple[h11.Response, bytes]:
    client = await Client.connect(px.port)
    await client.get("/echo")
    resp, body = await client.get("/slow?s=2")
    # The same client connection goes on.
    again, _ = await client.get("/echo")
    assert again.status_code == 200
    await client.aclose()
    return resp, body


Scenario = Callable[[Proxy, Upstream], Awaitable[tuple[h11.Response, bytes]]]


@pytest.mark.parametrize(
    ("scenario", "status", "attempts", "outcome", "reason", "retries", "failures", "back"),
    [
        (_stale_pooled_connection, 200, 2, "ok", "upstream closed the connection", 1, {}, 2),
        (_drop_once, 200, 2, "ok", "upstream closed the connection", 1, {}, 2),
        (_fail_once, 200, 2, "ok", "status 503", 1, {"5xx": 1}, 2),
        (_timeout, 504, 1, "timeout", "no response head in time", 0, {"timeout": 1}, 3),
    ],
    ids=["stale-pooled", "drop-once", "fail-once", "timeout"],
)
async def test_lane_failures_are_handed_back_and_end_as_in_the_shell(
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Scenario,
    status: int,
    attempts: int,
    outcome: str,
    reason: str,
    retries: int,
    failures: dict[str, int],
    back: int,
) -> None:
    """A first attempt failed in the lane: the shell's retry policy decides, as for its own."""
    caplog.set_level("INFO", logger="ambassador.access")
    settings = HttpSettings(request_timeout=0.3)
    results = {}
    for mode in ("on", "off"):
        async with (
            running_upstream() as up,
            proxy_in_mode(monkeypatch, mode, [up.address], settings) as px,
        ):
            resp, body = await scenario(px, up)
            assert resp.status_code == status, body
            rid = header(resp, "x-request-id")
            await trio.testing.wait_all_tasks_blocked()  # the line is written after the answer
            found = [ln for ln in access_lines(caplog, up.port) if ln["request_id"] == rid]
            assert len(found) == 1, (mode, rid, access_lines(caplog))
            line = found[0]
            assert line["status"] == status and line["attempts"] == attempts
            assert line["outcome"] == outcome and reason in line["reason"]
            assert len(line["trace_id"]) == 32
            assert await px.metric("ambassador_http_retries_total") == retries
            for why in ("5xx", "timeout", "reset", "connect"):
                count = await px.metric("ambassador_http_upstream_failures_total", reason=why)
                assert count == failures.get(why, 0), why
            ep = px.cluster.endpoint(up.address)
            assert ep is not None and ep.active == 0
            if mode == "on":
                # The first request (nothing pooled), the lane's failed attempt
                # (and, after a timeout, the next one: the connection was closed).
                assert lane_of(px).handed_back == back
            results[mode] = (
                await metrics_of(px, *COMPARED),
                [comparable(ln) for ln in access_lines(caplog, up.port)],
            )
    assert results["on"] == results["off"]


# --------------------------------------------------------------------------- responses in the lane


async def test_chunked_response_through_the_lane() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/echo")
        served = lane.served
        resp, body = await client.get("/chunked?n=5")
        assert resp.status_code == 200 and header(resp, "transfer-encoding") == "chunked"
        assert body == b"chunk0;chunk1;chunk2;chunk3;chunk4;"
        assert lane.served == served + 1
        resp, body = await client.get("/echo")  # the connection goes on, in the lane
        assert resp.status_code == 200 and lane.served == served + 2
        await client.aclose()
        assert up.connections == 1


async def test_close_delimited_response_is_rechunked_and_the_app_keeps_its_connection() -> None:
    async with running_raw_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/ok")
        served = lane.served
        resp, body = await client.get("/close-delimited?n=300000")
        assert resp.status_code == 200 and header(resp, "transfer-encoding") == "chunked"
        assert body == pattern_body(300_000)
        assert lane.served == served + 1
        resp, body = await client.get("/ok")  # same app connection, a new upstream one
        assert resp.status_code == 200 and body == b"ok"
        await client.aclose()
        assert up.connections == 2


async def test_head_in_the_lane_has_no_body_and_keeps_both_connections() -> None:
    async with running_raw_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/ok")
        served = lane.served
        await client.send(
            h11.Request(method="HEAD", target="/x", headers=[("host", "a")]), h11.EndOfMessage()
        )
        resp, body = await client.response()
        assert resp.status_code == 200 and body == b""
        assert header(resp, "content-length") == "1234"
        resp, body = await client.get("/ok")
        assert body == b"ok"
        assert lane.served == served + 2
        assert up.connections == 1  # reused after the HEAD
        await client.aclose()


async def test_informational_response_goes_before_the_final_one() -> None:
    async with running_raw_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/ok")
        served = lane.served
        await client.send(
            h11.Request(method="GET", target="/early", headers=[("host", "a")]), h11.EndOfMessage()
        )
        with trio.fail_after(5):
            data = b""
            while b"ok" not in data:
                data += await client.stream.receive_some(65536)
        assert data.startswith(b"HTTP/1.1 103 ")
        assert b"\r\n\r\nHTTP/1.1 200 " in data and data.endswith(b"\r\n\r\nok")
        assert lane.served == served + 1
        await client.aclose()


async def test_informational_response_before_a_retried_5xx_still_reaches_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 103 and a retryable 503 in one read: the app gets the 103, then the retry's answer.

    As in the shell, which passes a 1xx on as it reads it (before it knows what follows).
    """
    for mode in ("on", "off"):
        async with (
            running_raw_upstream() as up,
            proxy_in_mode(monkeypatch, mode, [up.address]) as px,
        ):
            client = await Client.connect(px.port)
            await client.get("/ok")  # pooled: the next request starts in the lane
            handed_back = lane_of(px).handed_back if mode == "on" else 0
            await client.send(
                h11.Request(method="GET", target="/early-fail-once", headers=[("host", "a")]),
                h11.EndOfMessage(),
            )
            with trio.fail_after(5):
                data = b""
                while not data.endswith(b"\r\n\r\nok"):
                    data += await client.stream.receive_some(65536)
            assert up.failed_once
            assert data.startswith(b"HTTP/1.1 103 "), (mode, data)
            assert data.count(b"HTTP/1.1 ") == 2 and b"\r\n\r\nHTTP/1.1 200 " in data, data
            assert await px.metric("ambassador_http_retries_total") == 1
            if mode == "on":  # the lane read both heads and handed the retry to the shell
                assert lane_of(px).handed_back == handed_back + 1
            await client.aclose()


async def test_unasked_101_is_a_reset_logged_502(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="ambassador.access")
    async with running_raw_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/ok")
        back = lane.handed_back
        await client.send(
            h11.Request(method="GET", target="/switch", headers=[("host", "a")]),
            h11.EndOfMessage(),
        )
        with pytest.raises((h11.RemoteProtocolError, trio.BrokenResourceError)):
            await client.response()
        await client.aclose()
        assert lane.handed_back == back  # the lane dealt with it
        assert await px.metric("ambassador_http_requests_total", code_class="5xx") == 1
        ep = px.cluster.endpoint(up.address)
        assert ep is not None and ep.active == 0
        # The listener goes on.
        client = await Client.connect(px.port)
        resp, _ = await client.get("/ok")
        assert resp.status_code == 200
        await client.aclose()
    line = next(ln for ln in access_lines(caplog) if ln["path"] == "/switch")
    assert line["status"] == 502 and line["outcome"] == "upstream_error"
    assert "switched protocols unasked" in line["reason"]


async def test_unasked_101_metrics_match_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    results = {}
    for mode in ("on", "off"):
        async with (
            running_raw_upstream() as up,
            proxy_in_mode(monkeypatch, mode, [up.address]) as px,
        ):
            client = await Client.connect(px.port)
            await client.get("/ok")
            await client.send(
                h11.Request(method="GET", target="/switch", headers=[("host", "a")]),
                h11.EndOfMessage(),
            )
            with pytest.raises((h11.RemoteProtocolError, trio.BrokenResourceError)):
                await client.response()
            await client.aclose()
            results[mode] = await metrics_of(px, *COMPARED)
    assert results["on"] == results["off"]


async def test_upstream_breaking_mid_body_resets_the_app(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="ambassador.access")
    async with running_raw_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/ok")
        back = lane.handed_back
        await client.send(
            h11.Request(method="GET", target="/cut", headers=[("host", "a")]),
            h11.EndOfMessage(),
        )
        with pytest.raises((h11.RemoteProtocolError, trio.BrokenResourceError)):
            await client.response()  # never a short body taken for a whole one
        await client.aclose()
        assert lane.handed_back == back
        ep = px.cluster.endpoint(up.address)
        assert ep is not None and ep.active == 0
    line = next(ln for ln in access_lines(caplog) if ln["path"] == "/cut")
    assert line["status"] == 200 and line["outcome"] == "upstream_reset"
    assert line["reason"] == "upstream closed mid-body"


async def test_close_delimited_body_ending_with_its_last_bytes_completes(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Body and FIN in one go: the response is complete at once, not reset after a timeout."""
    caplog.set_level("INFO", logger="ambassador.access")
    settings = HttpSettings(request_timeout=1.0)
    for mode in ("off", "on"):
        async with (
            running_raw_upstream() as up,
            proxy_in_mode(monkeypatch, mode, [up.address], settings) as px,
        ):
            client = await Client.connect(px.port)
            await client.get("/ok")
            try:
                resp, body = await client.get("/burst-close?n=5000")
            except (h11.RemoteProtocolError, trio.BrokenResourceError) as exc:
                await trio.testing.wait_all_tasks_blocked()
                line = access_lines(caplog, up.port)[-1]
                pytest.fail(f"lane={mode}: {exc!r}; logged {line['outcome']}: {line['reason']}")
            assert resp.status_code == 200 and body == pattern_body(5000)
            await client.aclose()


async def test_truncated_body_ending_with_its_last_bytes_is_reset_as_truncated(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reset comes for the upstream's close, not later for a body timeout."""
    caplog.set_level("INFO", logger="ambassador.access")
    settings = HttpSettings(request_timeout=1.0)
    for mode in ("off", "on"):
        async with (
            running_raw_upstream() as up,
            proxy_in_mode(monkeypatch, mode, [up.address], settings) as px,
        ):
            client = await Client.connect(px.port)
            await client.get("/ok")
            with pytest.raises((h11.RemoteProtocolError, trio.BrokenResourceError)):
                await client.get("/burst-truncate")
            await client.aclose()
            await trio.testing.wait_all_tasks_blocked()
            line = access_lines(caplog, up.port)[-1]
            assert line["outcome"] == "upstream_reset"
            assert line["reason"] == "upstream closed mid-body", f"lane={mode}"


async def test_an_app_closing_right_after_its_request_is_closed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Request and FIN in one go: answered, then closed, not kept until the idle timeout."""
    settings = HttpSettings(keepalive_timeout=20.0)
    for mode in ("off", "on"):
        async with (
            running_upstream() as up,
            proxy_in_mode(monkeypatch, mode, [up.address], settings) as px,
        ):
            client = await Client.connect(px.port)
            await client.get("/echo")
            await client.get("/echo")
            await trio.testing.wait_all_tasks_blocked()  # parked (in the lane when on)
            request = b"GET /echo?last HTTP/1.1\r\nhost: a\r\n\r\n"
            # Written and half-closed without a checkpoint: both are there before a read.
            assert os.write(client.stream.socket.fileno(), request) == len(request)
            client.stream.socket.shutdown(socket.SHUT_WR)
            got = b""
            with trio.move_on_after(1.5):  # the idle timeout is 20 s
                while data := await client.stream.receive_some(65536):
                    got += data
                got += b"<EOF>"
            assert got.startswith(b"HTTP/1.1 200 ") and b'"path": "/echo"' in got
            if mode == "on":
                assert lane_of(px).served == 2
            assert got.endswith(b"<EOF>"), f"lane={mode}: the half-closed connection stayed open"
            await client.aclose()


# --------------------------------------------------------------------------- back-pressure

BIG = 24 * 1024 * 1024


async def _read_exactly(stream: trio.SocketStream, n: int, digest: Any) -> None:
    while n > 0:
        data = await stream.receive_some(min(n, 65536))
        assert data, "connection closed mid-body"
        digest.update(data)
        n -= len(data)


async def test_back_pressure_a_slow_reader_gets_a_large_response_whole() -> None:
    """While the app does not read, the upstream is not read either (nothing piles up here)."""
    async with running_raw_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        stream = await small_window_client(px.port)
        await stream.send_all(b"GET /ok HTTP/1.1\r\nhost: a\r\n\r\n")
        head, rest = await read_response_head(stream)
        while len(rest) < 2:
            rest += await stream.receive_some(10)
        served = lane.served
        await stream.send_all(b"GET /big?n=%d HTTP/1.1\r\nhost: a\r\n\r\n" % BIG)
        head, got = await read_response_head(stream)
        assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: %d" % BIG in head.lower()
        digest = hashlib.sha256(got)
        received = len(got)
        await _read_exactly(stream, 1024 * 1024 - received, digest)
        received = 1024 * 1024
        # The app stops reading: once the socket buffers on the way are full, the
        # upstream stalls, far from done.
        samples = [-1, up.sent]
        while samples[-1] != samples[-2]:
            assert len(samples) < 30, f"the upstream was read on while the app did not: {samples}"
            await trio.sleep(0.2)
            samples.append(up.sent)
        assert samples[-1] < BIG // 2, samples
        # Reading again, slowly at first, then all of it.
        for _ in range(5):
            await _read_exactly(stream, 65536, digest)
            received += 65536
            await trio.sleep(0.02)
        await _read_exactly(stream, BIG - received, digest)
        assert digest.hexdigest() == hashlib.sha256(pattern_body(BIG)).hexdigest()
        assert up.sent == BIG
        assert lane.served == served + 1
        # Keep-alive after it.
        await stream.send_all(b"GET /ok HTTP/1.1\r\nhost: a\r\n\r\n")
        head, rest = await read_response_head(stream)
        assert head.startswith(b"HTTP/1.1 200 ")
        await stream.aclose()


async def test_an_app_reading_slower_than_request_timeout_is_not_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``request_timeout`` bounds the upstream's silence, not the app's: the shell as reference."""
    settings = HttpSettings(request_timeout=0.3)
    size = 8 * 1024 * 1024
    for mode in ("off", "on"):
        async with (
            running_raw_upstream() as up,
            proxy_in_mode(monkeypatch, mode, [up.address], settings) as px,
        ):
            stream = await small_window_client(px.port)
            for target in (b"/ok", b"/big?n=%d" % size):
                await stream.send_all(b"GET %s HTTP/1.1\r\nhost: a\r\n\r\n" % target)
                _, got = await read_response_head(stream)
                if target == b"/ok":
                    while len(got) < 2:
                        got += await stream.receive_some(10)
            digest = hashlib.sha256(got)
            await trio.sleep(0.8)  # the app is busy: longer than request_timeout
            try:
                await _read_exactly(stream, size - len(got), digest)
            except trio.BrokenResourceError:
                pytest.fail(f"lane={mode}: the app's connection was reset mid-body")
            assert digest.hexdigest() == hashlib.sha256(pattern_body(size)).hexdigest()
            await stream.aclose()


async def test_an_app_resetting_mid_response_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="ambassador.access")
    async with running_raw_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        stream = await small_window_client(px.port)
        await stream.send_all(b"GET /ok HTTP/1.1\r\nhost: a\r\n\r\n")
        await read_response_head(stream)
        served = lane.served
        await stream.send_all(b"GET /big?n=%d HTTP/1.1\r\nhost: a\r\n\r\n" % (16 * 1024 * 1024))
        await read_response_head(stream)
        await trio.sleep(0.1)
        # Leave with a reset (SO_LINGER 0), in the middle of the body.
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()
        ep = px.cluster.endpoint(up.address)
        assert ep is not None
        await eventually(lambda: ep.active == 0, limit=5, what="the attempt's active slot ended")
        # The listener, the lane and the pool go on serving others.
        client = await Client.connect(px.port)
        for _ in range(3):
            resp, body = await client.get("/ok")
            assert resp.status_code == 200 and body == b"ok"
        await client.aclose()
        assert lane.served == served + 2  # the first on a new connection: nothing pooled
        assert await px.metric("ambassador_http_pool_connections", state="active") == 0
        assert ep.active == 0
    line = next(ln for ln in access_lines(caplog) if ln["path"].startswith("/big"))
    assert line["outcome"] == "client_gone"


async def test_an_app_resetting_mid_response_is_logged_as_in_the_shell(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level("INFO", logger="ambassador.access")
    results = {}
    for mode in ("off", "on"):
        async with (
            running_raw_upstream() as up,
            proxy_in_mode(monkeypatch, mode, [up.address]) as px,
        ):
            stream = await small_window_client(px.port)
            await stream.send_all(b"GET /ok HTTP/1.1\r\nhost: a\r\n\r\n")
            await read_response_head(stream)
            await stream.send_all(b"GET /big?n=%d HTTP/1.1\r\nhost: a\r\n\r\n" % (16 << 20))
            await read_response_head(stream)
            await trio.sleep(0.1)
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()
            ep = px.cluster.endpoint(up.address)
            assert ep is not None
            await eventually(functools.partial(idle, ep), limit=5, what="the attempt ended")
            await trio.testing.wait_all_tasks_blocked()
            line = next(ln for ln in access_lines(caplog, up.port) if ln["path"] != "/ok")
            results[mode] = (line["status"], line["outcome"], await metrics_of(px, *COMPARED))
    assert results["on"] == results["off"]


# --------------------------------------------------------------------------- idle, drain, cancel


async def test_idle_timeout_closes_a_connection_parked_in_the_lane() -> None:
    settings = HttpSettings(keepalive_timeout=0.3)
    async with running_upstream() as up, running_proxy([up.address], settings) as px:
        lane = lane_of(px)
        client = await Client.connect(px.port)
        await client.get("/echo")
        await client.get("/echo")
        assert lane.served == 1  # the connection is parked in the lane now
        start = trio.current_time()
        with trio.fail_after(5):
            assert await client.stream.receive_some(10) == b""  # closed by the proxy
        assert trio.current_time() - start >= 0.25
        await client.aclose()
        # Others are still served.
        client = await Client.connect(px.port)
        resp, _ = await client.get("/echo")
        assert resp.status_code == 200
        await client.aclose()


async def test_drain_closes_lane_connections_idle_and_in_flight() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        idle = await Client.connect(px.port)
        await idle.get("/echo")
        await idle.get("/echo")
        busy = await Client.connect(px.port)
        await busy.get("/echo")
        served = lane.served
        await busy.send(
            h11.Request(method="GET", target="/slow?s=0.3", headers=[("host", "a")]),
            h11.EndOfMessage(),
        )
        await trio.sleep(0.1)  # in flight in the lane
        px.proxy.start_drain()
        with trio.fail_after(5):
            assert await idle.stream.receive_some(10) == b""  # the idle one: closed at once
            resp, body = await busy.response()  # the busy one: finished, then closed
        assert resp.status_code == 200 and json.loads(body)["path"] == "/slow"
        assert header(resp, "connection") == "close"
        assert lane.served == served + 1
        with trio.fail_after(5):
            assert await busy.stream.receive_some(10) == b""
        await idle.aclose()
        await busy.aclose()


async def _accepted_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """(app side, proxy side) of one real TCP connection, to serve it with ``serve_client``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    app = await trio.open_tcp_stream("127.0.0.1", port)
    accepted = await listeners[0].accept()
    await listeners[0].aclose()
    assert isinstance(accepted, trio.SocketStream)
    return app, accepted


async def test_cancelling_the_serving_task_mid_exchange_leaves_cluster_and_pool_clean() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        app, proxy_side = await _accepted_pair()
        client = Client(app)
        ep = px.cluster.endpoint(up.address)
        assert ep is not None
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def serve() -> None:
                with scope:
                    await px.proxy.serve_client(proxy_side, "cancelled")

            nursery.start_soon(serve)
            await client.get("/echo")
            served = lane.served
            up.closed = trio.Event()
            await client.send(
                h11.Request(method="GET", target="/slow?s=0.5", headers=[("host", "a")]),
                h11.EndOfMessage(),
            )
            await eventually(lambda: up.hits.get("/slow"), limit=5, what="/slow reached")
            assert ep.active == 1
            scope.cancel()  # shutdown, or a task group going away
        assert lane.served == served
        assert ep.active == 0
        with trio.fail_after(5):
            await up.closed.wait()  # the upstream connection mid-response was closed, not pooled
        assert await px.metric("ambassador_http_pool_connections", state="active") == 0
        assert await px.metric("ambassador_http_pool_connections", state="idle") == 0
        await app.aclose()
        await proxy_side.aclose()
        # The proxy goes on, through the lane again.
        client = await Client.connect(px.port)
        for _ in range(2):
            resp, body = await client.get("/echo")
            assert resp.status_code == 200 and json.loads(body)["path"] == "/echo"
        await client.aclose()
        assert lane.served == served + 1
        assert ep.active == 0


async def test_client_bytes_are_counted_in_the_lane() -> None:
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        app, proxy_side = await _accepted_pair()
        counters = RelayCounters()
        request = b"GET /echo HTTP/1.1\r\nhost: a\r\n\r\n"
        received = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(px.proxy.serve_client, proxy_side, "counted", counters)
            for _ in range(4):
                await app.send_all(request)
                want = received.count(b"}") + 1
                while received.count(b"}") < want:
                    received += await app.receive_some(65536)
            await app.send_eof()
        assert lane.served == 3
        assert counters.bytes_in == 4 * len(request)
        assert counters.bytes_out == len(received)
        await app.aclose()
        await proxy_side.aclose()


# --------------------------------------------------------------------------- real clients


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install -y {name})")
    return path


@pytest.mark.slow
async def test_curl_through_the_lane() -> None:
    curl = _binary("curl")
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        base = f"http://127.0.0.1:{px.port}"
        done = await trio.run_process(
            [curl, "-sS", "--max-time", "20", "-w", "|%{http_code}\\n"]
            + [f"{base}/echo?i={i}" for i in range(4)]
            + [f"{base}/chunked?n=3"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        out = done.stdout.decode()
        assert out.count("|200") == 5, out
        assert "chunk0;chunk1;chunk2;" in out
        assert up.connections <= 2
        assert lane.served >= 4


@pytest.mark.slow
async def test_wrk_keepalive_load_is_served_by_the_lane() -> None:
    wrk = _binary("wrk")
    async with running_upstream() as up, running_proxy([up.address]) as px:
        lane = lane_of(px)
        counted = await wrk_through(px, wrk, 8, 1)
        # Each of wrk's connections begins in the shell; after that, the lane.
        assert lane.served >= 0.8 * counted, (lane.served, lane.handed_back, counted)
        assert lane.served <= counted
        ep = px.cluster.endpoint(up.address)
        assert ep is not None and ep.active == 0
