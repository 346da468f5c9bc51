"""The admin HTTP server: /healthz, /readyz, /metrics and a few sidecar routes.

Two layers, kept apart so each can be tested on its own:

* ``AdminApp`` is the dispatch core: ``await app.handle(Request) -> Response``.
  No sockets; tests call it directly (loopback-only routes, 404/405, metrics).
* ``AdminServer`` is the trio shell that pumps h11 over one stream per
  connection and enforces ``AdminLimits``. ``serve_admin`` binds a TCP
  listener and runs it forever.

The admin port sits next to a sidecar's real work, so a bad or hostile
client must not cost more than a bounded slot for a bounded time:

* a request head must arrive within ``header_timeout`` (slowloris cannot
  hold a slot), and may not exceed ``max_header_bytes`` (431, via h11's
  ``max_incomplete_event_size``, so the buffer never grows past it);
* a body larger than ``max_body_bytes`` gets 413 before it is read;
* at most ``max_connections`` connections are served at once; one more gets a
  canned 503 and is closed at once, without reading anything;
* an idle keep-alive connection is closed after ``idle_timeout``;
* a client that does not read its response is dropped after ``send_timeout``.

Every timeout is a trio cancel scope around the await it bounds; every
connection task lives in ``trio.serve_listeners``' nursery.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

from .errors import SidecarError
from .httpclient import header_value
from .metrics import CONTENT_TYPE, Registry
from .netaddr import is_loopback

log = logging.getLogger("sidecar_common.admin")

RECEIVE_SIZE = 65536
#: After an error response, read and discard what the client still sends for
#: this long before closing, so that our close does not turn into a TCP RST
#: that destroys the error response before the client reads it.
LINGER_SECONDS = 1.0
LINGER_MAX_BYTES = 1 << 20
#: How long an over-the-cap connection may take to accept its 503.
REJECT_SEND_SECONDS = 1.0
OTHER_PATH = "other"


class AdminError(SidecarError):
    """The admin server cannot run (e.g. its address cannot be bound)."""


@dataclass
class Request:
    """One HTTP request as a handler sees it: the body is already read in full."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: list[tuple[str, str]]
    body: bytes
    client: str

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (case-insensitive), or None."""
        return header_value(self.headers, name)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(status: int, obj: object) -> Response:
    """A JSON response (``application/json``), newline-terminated for curl users."""
    body = json.dumps(obj, sort_keys=True).encode() + b"\n"
    return Response(status, body, "application/json")


def text_response(status: int, text: str) -> Response:
    """A plain-text response, newline-terminated."""
    return Response(status, text.encode() + (b"" if text.endswith("\n") else b"\n"))


Handler = Callable[[Request], Awaitable[Response]]
Probe = Callable[[], tuple[bool, str]]


@dataclass(frozen=True)
class AdminLimits:
    """Per-connection limits; defaults suit kubelet probes and a Prometheus scrape."""

    header_timeout: float = 5.0
    max_header_bytes: int = 16384
    max_body_bytes: int = 65536
    max_connections: int = 64
    idle_timeout: float = 30.0
    body_timeout: float = 10.0
    send_timeout: float = 10.0

    def __post_init__(self) -> None:
        # A zero or negative limit would silently refuse everything; the
        # sidecars' settings validate user input, this catches wiring bugs.
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"AdminLimits.{name} must be > 0, got {value!r}")


@dataclass
class _Route:
    handler: Handler
    loopback_only: bool


def is_loopback_client(host: str) -> bool:
    """Whether a peer address may use a ``loopback_only`` route (``netaddr.is_loopback``)."""
    return is_loopback(host)


class AdminApp:
    """Routes and probes of one sidecar's admin server (the sans-socket core)."""

    def __init__(self, registry: Registry, *, ready: Probe, live: Probe | None = None) -> None:
        self.registry = registry
        self._ready = ready
        self._live = live
        self._routes: dict[str, dict[str, _Route]] = {}
        self._requests = registry.counter(
            "admin_http_requests_total",
            "Requests answered by the admin server, by route (other = unknown) and status code.",
            ("path", "code"),
        )
        self.connections = registry.gauge(
            "admin_http_connections", "Admin server connections open now."
        )
        self.route("GET", "/healthz", self._healthz)
        self.route("GET", "/readyz", self._readyz)
        self.route("GET", "/metrics", self._metrics)

    def route(
        self, method: str, path: str, handler: Handler, *, loopback_only: bool = False
    ) -> None:
        """Add (or replace) the handler for ``method path``.

        ``loopback_only`` routes answer 403 to any client not on loopback:
        for routes that change state (the ambassador's PUT /env) when the
        admin server is bound to a pod-wide address for probes.
        """
        self._routes.setdefault(path, {})[method.upper()] = _Route(handler, loopback_only)

    def path_label(self, path: str) -> str:
        """The ``path`` label for a request: the route, or "other" (bounded cardinality)."""
        return path if path in self._routes else OTHER_PATH

    def count(self, path_label: str, status: int) -> None:
        self._requests.labels(path_label, str(status)).inc()

    async def handle(self, request: Request) -> Response:
        """Dispatch one request and count it. Never raises for a handler bug: 500."""
        response = await self._dispatch(request)
        self.count(self.path_label(request.path), response.status)
        return response

    async def _dispatch(self, request: Request) -> Response:
        methods = self._routes.get(request.path)
        if methods is None:
            return text_response(404, "not found")
        route = methods.get(request.method)
        if route is None and request.method == "HEAD":
            route = methods.get("GET")
        if route is None:
            allow = sorted({*methods, *(["HEAD"] if "GET" in methods else [])})
            resp = text_response(405, "method not allowed")
            resp.headers.append(("allow", ", ".join(allow)))
            return resp
        if route.loopback_only and not is_loopback_client(request.client):
            return text_response(403, "forbidden: loopback clients only")
        try:
            return await route.handler(request)
        except Exception:
            # A handler bug must cost one 500, not the admin server (and with
            # it the liveness probe). Cancellation is a BaseException and passes.
            log.exception("admin handler failed", extra={"path": request.path})
            return text_response(500, "internal server error")

    async def _healthz(self, request: Request) -> Response:
        ok, reason = self._live() if self._live is not None else (True, "ok")
        return text_response(200 if ok else 503, reason or ("ok" if ok else "not live"))

    async def _readyz(self, request: Request) -> Response:
        ok, reason = self._ready()
        return text_response(200 if ok else 503, reason or ("ready" if ok else "not ready"))

    async def _metrics(self, request: Request) -> Response:
        return Response(200, self.registry.render().encode(), CONTENT_TYPE)


# The reason phrases the admin servers answer with, so that the stdlib's http
# (its HTTPStatus enum: ~50 KiB resident) is imported only for a rare status.
_PHRASES = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _phrase(status: int) -> str:
    """The standard reason phrase of ``status`` ("" when it has none)."""
    phrase = _PHRASES.get(status)
    if phrase is None:
        import http

        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
    return phrase


def _canned(status: int, text: str, *, close: bool = True) -> bytes:
    """A complete response written by hand, for the cases h11 cannot frame.

    Used when the request could not be parsed (h11 is then in ERROR state)
    and for over-the-cap connections that we answer without parsing at all.
    """
    body = text.encode() + b"\n"
    phrase = _phrase(status)
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n" + ("connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode() + body


def _client_of(stream: trio.abc.Stream) -> str:
    if isinstance(stream, trio.SocketStream):
        try:
            peer = stream.socket.getpeername()
        except OSError:  # the peer is already gone
            return "unknown"
        if isinstance(peer, tuple):
            return str(peer[0])
    return "unknown"


class _Close(Exception):
    """Internal: stop serving this connection (optionally after an error response)."""

    def __init__(self, status: int | None = None, text: str = "", path: str = OTHER_PATH) -> None:
        self.status = status
        self.text = text
        self.path = path


class AdminServer:
    """The trio shell: serves ``AdminApp`` on any number of byte streams."""

    def __init__(self, app: AdminApp, limits: AdminLimits | None = None) -> None:
        self.app = app
        self.limits = limits or AdminLimits()
        self.active = 0

    async def handle_stream(self, stream: trio.abc.Stream, client: str | None = None) -> None:
        """Serve one connection until it closes. Does not raise for peer errors."""
        try:
            if self.active >= self.limits.max_connections:
                await self._reject(stream)
                return
            self.active += 1
            self.app.connections.inc()
            try:
                await self._serve(stream, client if client is not None else _client_of(stream))
            finally:
                self.active -= 1
                self.app.connections.dec()
        finally:
            await trio.aclose_forcefully(stream)

    async def _reject(self, stream: trio.abc.Stream) -> None:
        self.app.count(OTHER_PATH, 503)
        with trio.move_on_after(REJECT_SEND_SECONDS):
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(_canned(503, "too many connections"))

    async def _serve(self, stream: trio.abc.Stream, client: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        try:
            await self._serve_requests(conn, stream, client)
        except _Close as close:
            if close.status is not None:
                self.app.count(close.path, close.status)
                await self._send_and_linger(stream, _canned(close.status, close.text))
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            text = "request header too large" if status == 431 else "bad request"
            self.app.count(OTHER_PATH, status)
            await self._send_and_linger(stream, _canned(status, text))
        except trio.BrokenResourceError:
            pass  # the peer reset the connection: nothing to answer
        except h11.LocalProtocolError as exc:
            # Our own response could not be framed (a handler returned a bad
            # header): a bug, logged; the connection is dropped.
            log.error("admin response rejected by h11: %s", exc)

    async def _receive(self, conn: h11.Connection, stream: trio.abc.Stream) -> int:
        data = bytes(await stream.receive_some(RECEIVE_SIZE))
        conn.receive_data(data)
        return len(data)

    async def _serve_requests(
        self, conn: h11.Connection, stream: trio.abc.Stream, client: str
    ) -> None:
        limits = self.limits
        first = True
        while True:
            # h11 bounds only an *incomplete* head (max_incomplete_event_size);
            # a complete head that arrived in one read is measured here.
            head_bytes = len(conn.trailing_data[0])
            event = conn.next_event()
            if event is h11.NEED_DATA and not first:
                # Keep-alive: wait for the next request's first bytes, then
                # give the rest of its head header_timeout, like the first one.
                with trio.move_on_after(limits.idle_timeout) as idle:
                    head_bytes += await self._receive(conn, stream)
                if idle.cancelled_caught:
                    return
                event = conn.next_event()
            first = False
            with trio.move_on_after(limits.header_timeout) as head_timer:
                while event is h11.NEED_DATA:
                    head_bytes += await self._receive(conn, stream)
                    event = conn.next_event()
            if head_timer.cancelled_caught:
                return  # slowloris: close without a word
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed (EOF between requests)
            head_bytes -= len(conn.trailing_data[0])
            if head_bytes > limits.max_header_bytes:
                raise _Close(431, "request header too large")
            if event.http_version not in (b"1.0", b"1.1"):
                raise _Close(505, "HTTP version not supported")
            request = await self._read_request(conn, stream, event, client)
            response = await self.app.handle(request)
            await self._send_response(conn, stream, request, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream, event: h11.Request, client: str
    ) -> Request:
        target = event.target.decode("latin-1")
        split = urlsplit(target)
        path = split.path or "/"
        label = self.app.path_label(path)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        length = next((int(v) for k, v in headers if k == "content-length"), None)
        if length is not None and length > self.limits.max_body_bytes:
            raise _Close(413, "request body too large", label)
        if conn.client_is_waiting_for_100_continue:
            await stream.send_all(
                conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            )
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self.limits.body_timeout) as body_timer:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    await self._receive(conn, stream)
                elif isinstance(ev, h11.Data):
                    size += len(ev.data)
                    if size > self.limits.max_body_bytes:
                        raise _Close(413, "request body too large", label)
                    chunks.append(bytes(ev.data))
                elif isinstance(ev, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed mid-body
                    raise _Close()
        if body_timer.cancelled_caught:
            raise _Close(408, "request body timeout", label)
        return Request(
            method=event.method.decode("ascii"),
            target=target,
            path=path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers,
            body=b"".join(chunks),
            client=client,
        )

    async def _send_response(
        self, conn: h11.Connection, stream: trio.abc.Stream, request: Request, response: Response
    ) -> None:
        status = response.status
        no_body = status < 200 or status in (204, 304)
        headers = [("content-type", response.content_type)]
        if not no_body:
            headers.append(("content-length", str(len(response.body))))
        headers.extend(
            (k, v)
            for k, v in response.headers
            if k.lower() not in ("content-length", "transfer-encoding")
        )
        reason = _phrase(status).encode()
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
        if response.body and not no_body and request.method != "HEAD":
            data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        with trio.move_on_after(self.limits.send_timeout) as send_timer:
            await stream.send_all(data)
        if send_timer.cancelled_caught:
            raise _Close()  # the client does not read: drop it

    async def _send_and_linger(self, stream: trio.abc.Stream, data: bytes) -> None:
        """Send a final error response, half-close, and drain briefly before closing."""
        with trio.move_on_after(LINGER_SECONDS):
            try:
                await stream.send_all(data)
                if isinstance(stream, trio.abc.HalfCloseableStream):
                    await stream.send_eof()
                drained = 0
                while drained < LINGER_MAX_BYTES:
                    chunk = await stream.receive_some(RECEIVE_SIZE)
                    if not chunk:
                        break
                    drained += len(chunk)
            except trio.BrokenResourceError:
                pass


async def serve_admin(
    app: AdminApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    limits: AdminLimits | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` forever; ``task_status.started(bound_port)``.

    Use with ``await nursery.start(serve_admin, app, host, port)`` to learn
    the port (useful with ``port=0``) only once the listener is bound.
    Raises ``AdminError`` if the address cannot be bound.
    """
    server = AdminServer(app, limits)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise AdminError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound = listeners[0].socket.getsockname()[1]
    task_status.started(int(bound))
    await trio.serve_listeners(server.handle_stream, listeners)
