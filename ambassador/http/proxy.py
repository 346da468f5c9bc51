"""The HTTP listener's trio shell: h11 towards the app, h11 towards each upstream endpoint.

One ``HttpProxy`` per HTTP listener holds what outlives a client connection:
the upstream keep-alive pool, the header files, the retry budgets, the
metrics. ``serve_client`` runs one accepted client connection until it ends:

    read request head (h11; 400/431 on garbage) -> route (current env's cluster;
    503 when none is usable) -> header policy -> attempt: choose endpoint,
    pooled connection, send head, pump the request body concurrently, read
    the response head (504 after request_timeout) -> maybe retry (budget,
    backoff) -> forward head and stream the body -> back to the pool ->
    access log + metrics -> next request on the same connection (keep-alive,
    pipelining: h11 buffers what the app sent ahead).

Every decision is in a pure module (``headers``, ``retry``, ``pool.PoolBook``,
the routing core's ``Cluster``); this file moves bytes and time. Errors of a
misbehaving upstream or client end that exchange (with a status when the
client can still get one) and never escape ``serve_client``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from sidecar_common.jsonlog import get_logger, log_event
from sidecar_common.metrics import CounterChild, HistogramChild, Registry
from sidecar_common.retry import Backoff

from ..cluster import Cluster
from ..endpoint import EndpointState
from ..relay import RelayCounters, abort_stream, relay
from ..tls import UpstreamTLS
from .headers import HeaderFiles, IdSource, prepare_request_headers, prepare_response_headers
from .metrics import HttpMetrics, code_class, method_label
from .pool import Connector, PoolKey, UpstreamConnection, UpstreamPool
from .retry import Failure, RetryBudget, retry_refusal
from .settings import HttpSettings

__all__ = ["HttpProxy", "Route", "serve_http_client"]

access_log = get_logger("ambassador.access")
log = get_logger("ambassador.http")

CHUNK = 65536

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _raw_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket of a plain trio socket stream, or None (TLS, memory streams: generic path).

    Its descriptor is read at each call (``fileno()`` is -1 once closed, so a
    closed stream fails with EBADF and never reads a reused descriptor).
    """
    if type(stream) is trio.SocketStream:
        return stream.socket
    return None


async def _receive(stream: trio.abc.Stream, sock: trio.socket.SocketType | None) -> bytes:
    """``stream.receive_some(CHUNK)``, but straight from the socket when data is waiting.

    trio's socket calls yield to the scheduler even when the syscall succeeds
    at once; on the request path that is four trips around the run loop per
    request. Here a read that succeeds costs one syscall; only an empty socket
    waits (``wait_readable``: cancellable, as before). Raises ``OSError`` or
    trio's ``BrokenResourceError``/``ClosedResourceError`` (``_STREAM_ERRORS``).
    """
    if sock is None:
        return bytes(await stream.receive_some(CHUNK))
    while True:
        try:
            return os.read(sock.fileno(), CHUNK)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def _send_all(
    stream: trio.abc.Stream, sock: trio.socket.SocketType | None, data: bytes
) -> None:
    """``stream.send_all(data)``, with the first write straight to the socket (see ``_receive``)."""
    if sock is not None:
        try:
            sent = os.write(sock.fileno(), data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    await stream.send_all(data)


@dataclass(frozen=True)
class Route:
    """Where requests go now: the current environment's cluster and its upstream TLS."""

    env: str
    cluster: Cluster
    tls: UpstreamTLS | None = None


class _ClientGone(Exception):
    """The app's connection broke or closed mid-exchange: nothing more can be sent to it."""


@dataclass
class _Failed:
    """An attempt failed before anything reached the client: it may be retried."""

    failure: Failure
    status: int
    reason: str


@dataclass
class _Done:
    """The exchange is over for the client (a response was sent, or it was aborted)."""

    status: int
    keep_alive: bool
    outcome: str = "ok"


@dataclass
class _Exchange:
    """What the access log says about one request."""

    method: bytes
    target: bytes
    request_id: str = ""
    trace_id: str = ""
    env: str = ""
    upstream: str = ""
    attempts: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    reasons: list[str] = field(default_factory=list)


class _Client:
    """The app's side: an h11 server connection over the accepted stream."""

    def __init__(self, stream: trio.abc.Stream, max_header_bytes: int) -> None:
        self.stream = stream
        self.sock = _raw_socket(stream)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._out = bytearray()

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await _receive(self.stream, self.sock)
            except _STREAM_ERRORS:
                raise _ClientGone from None
            self.conn.receive_data(data)

    async def send(self, event: Any) -> None:
        self.queue(event)
        await self.flush()

    def queue(self, event: Any) -> None:
        """Serialize ``event`` now, send it with the next ``flush`` (one syscall per burst)."""
        data = self.conn.send(event)
        if data:
            self._out += data

    async def flush(self) -> None:
        if not self._out:
            return
        data, self._out = bytes(self._out), bytearray()
        try:
            await _send_all(self.stream, self.sock, data)
        except _STREAM_ERRORS:
            raise _ClientGone from None

    def can_respond(self) -> bool:
        return self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)


class _UpstreamBroken(Exception):
    """The upstream connection broke, closed, or spoke invalid HTTP."""


async def _up_next(
    up: UpstreamConnection, before_wait: Callable[[], Awaitable[None]] | None = None
) -> Any:
    """The next upstream event; ``before_wait`` runs before blocking on the network."""
    while True:
        try:
            event = up.conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _UpstreamBroken(f"invalid HTTP from upstream: {exc}") from None
        if event is not h11.NEED_DATA:
            if isinstance(event, h11.ConnectionClosed):
                raise _UpstreamBroken("upstream closed the connection")
            return event
        if before_wait is not None:
            await before_wait()
        try:
            data = await _receive(up.stream, up.sock)
        except _STREAM_ERRORS as exc:
            raise _UpstreamBroken(f"upstream connection broken: {exc}") from None
        up.conn.receive_data(data)


async def _up_send(up: UpstreamConnection, *events: Any) -> None:
    """Serialize ``events`` and send them upstream in one write."""
    try:
        data = b"".join(up.conn.send(event) or b"" for event in events)
    except h11.LocalProtocolError as exc:
        raise _UpstreamBroken(f"cannot send upstream: {exc}") from None
    if data:
        try:
            await _send_all(up.stream, up.sock, data)
        except _STREAM_ERRORS as exc:
            raise _UpstreamBroken(f"upstream connection broken: {exc}") from None


class _RequestBody:
    """The request body: streamed from the app on the first attempt, replayed from memory after.

    Only up to ``limit`` bytes are kept; a longer body cannot be replayed and
    so is never retried once sent.
    """

    def __init__(self, client: _Client, limit: int, *, complete: bool = False) -> None:
        self.client = client
        self.limit = limit
        self.kept: list[bytes] = []
        self.size = 0
        self.consumed = False
        #: True once the app's EndOfMessage was read (at once for a request without a body).
        self.complete = complete
        self.overflow = False

    @property
    def replayable(self) -> bool:
        return not self.consumed or (self.complete and not self.overflow)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.consumed:
            for chunk in self.kept:
                yield chunk
            return
        self.consumed = True
        if self.complete:
            return  # a request without a body, already read to its end
        while True:
            event = await self.client.next_event()
            if isinstance(event, h11.Data):
                data = bytes(event.data)
                self.size += len(data)
                if not self.overflow:
                    if self.size <= self.limit:
                        self.kept.append(data)
                    else:
                        self.overflow = True
                        self.kept.clear()
                yield data
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
                return
            else:
                raise _ClientGone


def _head_size(req: h11.Request) -> int:
    """Bytes of the request head as sent (approximately: request line plus header lines)."""
    return len(req.target) + 16 + sum(len(n) + len(v) + 4 for n, v in req.headers)


def _has_body(req: h11.Request) -> bool:
    """The request declares a body (chunked, or a non-zero Content-Length)."""
    for name, value in req.headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() != b"0":
            return True
    return False


def _error_body(status: int, message: str, request_id: str) -> bytes:
    return json.dumps({"error": message, "status": status, "request_id": request_id}).encode()


_MESSAGES = {
    400: "malformed request",
    405: "CONNECT is not supported",
    431: "request header section too large",
    502: "bad gateway",
    503: "no healthy upstream",
    504: "upstream timeout",
}


class HttpProxy:
    """One HTTP listener: serve client connections, route each request, keep upstream pools.

    ``route()`` is called once per request and returns the current
    environment's ``Route`` (None: no environment, answered 503). The shell
    passes the listener's ``limits.connect_timeout``; ``on_ejection(env, ep)``
    lets it count ``ambassador_ejections_total`` as it does for TCP.
    """

    def __init__(
        self,
        listener: str,
        settings: HttpSettings,
        registry: Registry,
        route: Callable[[], Route | None],
        *,
        connect_timeout: float = 2.0,
        on_ejection: Callable[[str, EndpointState], object] | None = None,
        rng: random.Random | None = None,
        connect: Connector | None = None,
    ) -> None:
        self.listener = listener
        self.settings = settings
        self.route = route
        self.connect_timeout = connect_timeout
        self.on_ejection = on_ejection
        self.rng = rng if rng is not None else random.Random()
        self.ids = IdSource(rng)
        pool_kwargs: dict[str, Any] = {} if connect is None else {"connect": connect}
        self.pool = UpstreamPool(
            max_idle=settings.pool_max_idle,
            idle_timeout=settings.pool_idle_timeout,
            max_header_bytes=max(settings.max_header_bytes, 65536),
            **pool_kwargs,
        )
        self.header_files = HeaderFiles(settings.inject_headers)
        self._header_problems: dict[str, str] = {}
        r = settings.retry
        self.backoff = Backoff(initial=r.backoff_initial, maximum=r.backoff_max)
        self._budgets: dict[str, RetryBudget] = {}
        self.metrics = HttpMetrics.for_registry(registry)
        self.metrics.proxies.add(self)
        # Encoded once, not per request.
        self._rid_header = settings.request_id_header.encode()
        self._upstream_host = settings.upstream_host.encode() if settings.upstream_host else None
        #: Metric children per (env, method, status class): two label lookups saved per request.
        self._count_children: dict[tuple[str, bytes, int], tuple[CounterChild, HistogramChild]] = {}
        self.draining = False
        self._idle_waits: set[trio.CancelScope] = set()

    # ------------------------------------------------------------------ lifecycle

    def start_drain(self) -> None:
        """Finish the requests in flight, then close: idle keep-alive connections close now."""
        self.draining = True
        for scope in list(self._idle_waits):
            scope.cancel()

    async def aclose(self) -> None:
        """Close the pooled idle upstream connections."""
        await self.pool.aclose()

    # ------------------------------------------------------------------ client connection

    async def serve_client(self, stream: trio.abc.Stream, client: str = "?") -> None:
        """Serve one app connection until it closes, times out idle, or the proxy drains.

        The caller owns ``stream`` and closes it afterwards. Never raises for
        I/O or protocol errors of either peer.
        """
        c = _Client(stream, self.settings.max_header_bytes)
        try:
            while not self.draining:
                idle = trio.CancelScope(
                    deadline=trio.current_time() + self.settings.keepalive_timeout
                )
                self._idle_waits.add(idle)
                event: Any = None
                try:
                    with idle:
                        event = await c.next_event()
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
                    await self._send_error(c, status, _MESSAGES[status], "", close=True)
                    self._count(b"OTHER", self._env_label(), status, 0.0)
                    log_event(
                        access_log,
                        "request",
                        listener=self.listener,
                        client=client,
                        status=status,
                        outcome="bad_request",
                        reason=str(exc),
                    )
                    return
                finally:
                    self._idle_waits.discard(idle)
                if event is None or not isinstance(event, h11.Request):
                    return  # idle timeout, drain, EOF, or a paused (upgraded) connection
                if _head_size(event) > self.settings.max_header_bytes:
                    # h11 bounds only a head still arriving; one read may bring a
                    # whole oversized head, so measure the parsed one as well.
                    await self._send_error(c, 431, _MESSAGES[431], "", close=True)
                    self._count(bytes(event.method), self._env_label(), 431, 0.0)
                    log_event(
                        access_log,
                        "request",
                        listener=self.listener,
                        client=client,
                        status=431,
                        outcome="bad_request",
                        reason="header section too large",
                    )
                    return
                keep = await self._handle(c, event, client)
                if not keep or self.draining:
                    return
                if c.conn.our_state is not h11.DONE or c.conn.their_state is not h11.DONE:
                    return
                c.conn.start_next_cycle()
        except _ClientGone:
            return
        except h11.ProtocolError as exc:
            log_event(
                log,
                "client connection ended on a protocol error",
                level=logging.DEBUG,
                listener=self.listener,
                reason=str(exc),
            )
            return

    def _tls_for(self, tls: UpstreamTLS | None) -> UpstreamTLS | None:
        """The upstream Host names the TLS server too, unless ``server_name`` says otherwise."""
        host = self.settings.upstream_host
        if tls is None or tls.server_name is not None or not host:
            return tls
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return dataclasses.replace(tls, server_name=name.strip("[]"))

    def _env_label(self) -> str:
        route = self.route()
        return route.env if route is not None else ""

    async def _finish_empty_request(self, c: _Client) -> None:
        event = await c.next_event()
        if not isinstance(event, h11.EndOfMessage):
            raise _ClientGone

    async def _send_error(
        self, c: _Client, status: int, message: str, request_id: str, *, close: bool
    ) -> None:
        if not c.can_respond():
            return
        body = _error_body(status, message, request_id)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if request_id:
            headers.append((self._rid_header, request_id.encode()))
        if close or c.conn.their_state is not h11.DONE or self.draining:
            headers.append((b"connection", b"close"))
        c.queue(h11.Response(status_code=status, headers=headers))
        c.queue(h11.Data(data=body))
        await c.send(h11.EndOfMessage())

    def _budget(self, env: str) -> RetryBudget:
        budget = self._budgets.get(env)
        if budget is None:
            r = self.settings.retry
            budget = self._budgets[env] = RetryBudget(
                ratio=r.budget_ratio, min_per_second=r.budget_min_per_second, window=r.budget_window
            )
        return budget

    def _count(self, method: bytes, env: str, status: int, duration: float) -> None:
        key = (env, method, status // 100 if 100 <= status <= 599 else 0)
        children = self._count_children.get(key)
        if children is None:
            if len(self._count_children) >= 1024:
                self._count_children.clear()  # bounded: odd methods are OTHER, not new keys
            children = self._count_children[key] = (
                self.metrics.requests.labels(
                    listener=self.listener,
                    env=env,
                    method=method_label(method),
                    code_class=code_class(status),
                ),
                self.metrics.duration.labels(listener=self.listener, env=env),
            )
        requests, duration_child = children
        requests.inc()
        duration_child.observe(duration)

    def _injected(self, now: float) -> list[tuple[bytes, bytes]]:
        values = self.header_files.current(now)
        if self.header_files.problems != self._header_problems:
            self._header_problems = dict(self.header_files.problems)
            for header, problem in self._header_problems.items():
                log_event(
                    log,
                    "header file unusable; header not injected",
                    level=logging.WARNING,
                    listener=self.listener,
                    header=header,
                    reason=problem,
                )
        return values

    # ------------------------------------------------------------------ one request

    async def _handle(self, c: _Client, req: h11.Request, client: str) -> bool:
        """Serve one request; True when the client connection may carry another."""
        start = trio.current_time()
        ex = _Exchange(method=bytes(req.method), target=bytes(req.target))
        if not _has_body(req):
            # Read the request to its end now (no I/O: h11 has it), so that any
            # answer, errors included, leaves the connection reusable.
            await self._finish_empty_request(c)
        route = self.route()
        ex.env = route.env if route is not None else ""
        prepared = prepare_request_headers(
            req.headers,
            ids=self.ids,
            injected=self._injected(start),
            upstream_host=self._upstream_host,
            request_id_header=self._rid_header,
        )
        ex.request_id, ex.trace_id = prepared.request_id, prepared.trace.trace_id
        done: _Done
        if req.method == b"CONNECT":
            # A forward-proxy tunnel makes no sense towards fixed upstreams.
            await self._send_error(c, 405, _MESSAGES[405], ex.request_id, close=True)
            done = _Done(405, False, "bad_request")
        elif route is None:
            await self._send_error(c, 503, "no environment selected", ex.request_id, close=False)
            done = _Done(503, c.conn.their_state is h11.DONE, "no_env")
        else:
            done = await self._route_request(c, req, prepared, route, ex)
        duration = trio.current_time() - start
        self._count(ex.method, ex.env, done.status, duration)
        log_event(
            access_log,
            "request",
            listener=self.listener,
            env=ex.env,
            client=client,
            method=ex.method.decode("ascii", "replace"),
            path=ex.target.decode("ascii", "replace"),
            status=done.status,
            duration=round(duration, 6),
            bytes_in=ex.bytes_in,
            bytes_out=ex.bytes_out,
            upstream=ex.upstream,
            attempts=ex.attempts,
            request_id=ex.request_id,
            trace_id=ex.trace_id,
            outcome=done.outcome,
            reason="; ".join(ex.reasons),
        )
        return done.keep_alive

    async def _route_request(
        self,
        c: _Client,
        req: h11.Request,
        prepared: Any,
        route: Route,
        ex: _Exchange,
    ) -> _Done:
        budget = self._budget(route.env)
        budget.record_request(trio.current_time())
        body = _RequestBody(c, self.settings.retry.replay_buffer, complete=not _has_body(req))
        tried: set[tuple[str, int]] = set()
        retries = 0
        last: _Failed | None = None
        while True:
            now = trio.current_time()
            ep = route.cluster.choose(now, exclude=tried)
            if ep is None and tried:
                # Every endpoint tried once: a retry may go back to one of them.
                ep = route.cluster.choose(now)
            if ep is None:
                if last is None:
                    await self._send_error(c, 503, _MESSAGES[503], ex.request_id, close=False)
                    return _Done(503, c.conn.their_state is h11.DONE, "no_endpoint")
                break
            tried.add(ep.address)
            ex.attempts += 1
            ex.upstream = ep.name

            def may_retry(status: int, retries_done: int = retries) -> bool:
                """Would a retryable 5xx be retried? (then the response is dropped)"""
                return (
                    retry_refusal(
                        settings=self.settings.retry,
                        method=bytes(req.method),
                        failure="status",
                        retries_done=retries_done,
                        status=status,
                        body_replayable=body.replayable,
                    )
                    is None
                    and budget.available(trio.current_time()) >= 1.0
                )

            result = await self._attempt(c, req, prepared, route, ep, body, ex, may_retry)
            if isinstance(result, _Done):
                return result
            last = result
            ex.reasons.append(f"{ep.name}: {result.reason}")
            refusal = retry_refusal(
                settings=self.settings.retry,
                method=bytes(req.method),
                failure=result.failure,
                retries_done=retries,
                status=result.status,
                body_replayable=body.replayable,
            )
            if refusal is not None:
                break
            if not budget.try_withdraw(trio.current_time()):
                self.metrics.budget_exhausted.labels(listener=self.listener, env=route.env).inc()
                ex.reasons.append("retry budget exhausted")
                break
            self.metrics.retries.labels(listener=self.listener, env=route.env).inc()
            await trio.sleep(self.backoff.delay(retries, self.rng))
            retries += 1
        assert last is not None
        await self._send_error(
            c, last.status, _MESSAGES.get(last.status, "bad gateway"), ex.request_id, close=False
        )
        outcome = {"connect": "connect_failed", "timeout": "timeout"}.get(
            last.failure, "upstream_error"
        )
        return _Done(last.status, c.conn.their_state is h11.DONE, outcome)

    def _endpoint_failed(self, route: Route, ep: EndpointState, reason: str) -> None:
        now = trio.current_time()
        self.metrics.upstream_failures.labels(
            listener=self.listener, env=route.env, endpoint=ep.name, reason=reason
        ).inc()
        if route.cluster.connect_failed(ep, now):
            log_event(
                log,
                "endpoint ejected",
                level=logging.WARNING,
                listener=self.listener,
                env=route.env,
                endpoint=ep.name,
                until=round(ep.ejected_until - now, 3),
            )
            if self.on_ejection is not None:
                self.on_ejection(route.env, ep)

    async def _attempt(
        self,
        c: _Client,
        req: h11.Request,
        prepared: Any,
        route: Route,
        ep: EndpointState,
        body: _RequestBody,
        ex: _Exchange,
        may_retry: Callable[[int], bool],
    ) -> _Done | _Failed:
        cluster = route.cluster
        cluster.connect_started(ep)
        settled = False  # the attempt's "active" slot is given back exactly once
        t0 = trio.current_time()
        key = PoolKey(route.env, ep.address, ep.name, self._tls_for(route.tls))
        up: UpstreamConnection | None = None
        reusable = False
        try:
            try:
                up = await self.pool.acquire(key, connect_timeout=self.connect_timeout)
            except (OSError, trio.TooSlowError) as exc:
                settled = True
                self._endpoint_failed(route, ep, "connect")
                reason = "connect timeout" if isinstance(exc, trio.TooSlowError) else str(exc)
                return _Failed("connect", 503, f"connect failed: {reason}")
            reused = up.requests > 0
            up.requests += 1
            result, reusable, succeeded = await self._exchange(
                c, req, prepared, up, body, ex, may_retry
            )
            now = trio.current_time()
            if succeeded is True:
                cluster.connect_succeeded(ep, now - t0, now)
            elif succeeded is False:
                if isinstance(result, _Failed) and result.failure == "reset" and reused:
                    pass  # a pooled connection the server had closed: not the endpoint's fault
                else:
                    settled = True
                    # Metric reasons: connect | reset | timeout | 5xx (a retried
                    # 5xx is a "status" failure to the retry policy; same thing).
                    failure = result.failure if isinstance(result, _Failed) else "5xx"
                    reason = "5xx" if failure == "status" else failure
                    self._endpoint_failed(route, ep, reason)
            return result
        finally:
            if up is not None:
                await self.pool.release(up, reusable=reusable)
            if not settled:
                cluster.connection_closed(ep)

    async def _exchange(
        self,
        c: _Client,
        req: h11.Request,
        prepared: Any,
        up: UpstreamConnection,
        body: _RequestBody,
        ex: _Exchange,
        may_retry: Callable[[int], bool],
    ) -> tuple[_Done | _Failed, bool, bool | None]:
        """One request/response on ``up``: (result, upstream reusable, endpoint outcome).

        The endpoint outcome is True (answered below 500), False (failed or 5xx),
        None (nothing to say: e.g. the client went away).
        """
        settings = self.settings
        headers = prepared.headers
        if not any(name == b"host" for name, _ in headers):
            # An HTTP/1.0 app may omit Host; HTTP/1.1 upstream requires one.
            headers = [(b"host", up.key.endpoint.encode()), *headers]
        head = h11.Request(method=req.method, target=req.target, headers=headers)
        pump_state: dict[str, str] = {}
        body_done = trio.Event()

        async def pump_body() -> None:
            try:
                async for chunk in body.chunks():
                    await _up_send(up, h11.Data(data=chunk))
                await _up_send(up, h11.EndOfMessage())
            except _UpstreamBroken as exc:
                pump_state["upstream"] = str(exc)
            except _ClientGone:
                pump_state["client"] = "client closed mid-body"
                nursery.cancel_scope.cancel()
            except h11.RemoteProtocolError as exc:
                pump_state["client"] = f"invalid request body: {exc}"
                nursery.cancel_scope.cancel()
            body_done.set()

        # What the exchange ends as if the pump cancels it (the app went away mid-body).
        result: _Done | _Failed = _Done(499, False, "client_gone")
        failed = False
        has_body = _has_body(req)
        try:
            if has_body:
                await _up_send(up, head)
            else:
                # The hot path: head and end of message in one write, no body pump,
                # so a retry decision never waits on a task not yet scheduled.
                await _up_send(up, head, h11.EndOfMessage())
                body.consumed = True
                body_done.set()
        except _UpstreamBroken as exc:
            return _Failed("reset", 502, str(exc)), False, False
        # A nursery (and its cancel scope) only when a body must be pumped
        # concurrently: most requests have none.
        async with trio.open_nursery() if has_body else _NO_NURSERY as nursery:
            if has_body:
                nursery.start_soon(pump_body)
            response: h11.Response | None = None
            try:
                with trio.move_on_after(settings.request_timeout) as head_wait:
                    while True:
                        event = await _up_next(up)
                        if isinstance(event, h11.InformationalResponse):
                            if event.status_code == 101:
                                break
                            if c.can_respond():
                                await c.send(
                                    h11.InformationalResponse(
                                        status_code=event.status_code, headers=[]
                                    )
                                )
                            continue
                        if isinstance(event, h11.Response):
                            response = event
                            break
                        raise _UpstreamBroken(f"unexpected upstream event {type(event).__name__}")
            except _UpstreamBroken as exc:
                nursery.cancel_scope.cancel()
                return _Failed("reset", 502, str(exc)), False, False
            except _ClientGone:
                nursery.cancel_scope.cancel()
                return _Done(499, False, "client_gone"), False, None
            if head_wait.cancelled_caught:
                nursery.cancel_scope.cancel()
                return _Failed("timeout", 504, "no response head in time"), False, False
            if response is None:
                # 101 Switching Protocols: a tunnel from here on.
                with trio.move_on_after(settings.request_timeout):
                    await body_done.wait()
                result = await self._tunnel(c, up, event, prepared, ex)
                nursery.cancel_scope.cancel()
                return result, False, True
            status = response.status_code
            failed = status >= 500
            if failed and body_done.is_set() and may_retry(status):
                # Possibly retried: the caller decides; this response is dropped.
                nursery.cancel_scope.cancel()
                return _Failed("status", status, f"status {status}"), False, False
            try:
                result = await self._forward_response(c, up, response, prepared, ex)
            except _ClientGone:
                nursery.cancel_scope.cancel()
                return _Done(status, False, "client_gone"), False, None
            if not body_done.is_set():
                # The upstream answered before reading the whole body: the app's
                # connection is mid-request, so it cannot carry another one.
                nursery.cancel_scope.cancel()
                result.keep_alive = False
        ex.bytes_in = body.size
        if "client" in pump_state:
            ex.reasons.append(pump_state["client"])
            if isinstance(result, _Failed):
                return _Done(499, False, "client_gone"), False, None
            result.keep_alive = False
        reusable = result.outcome == "ok" and not pump_state and up.conn.our_state is h11.DONE
        return result, reusable, not failed

    async def _forward_response(
        self,
        c: _Client,
        up: UpstreamConnection,
        response: h11.Response,
        prepared: Any,
        ex: _Exchange,
    ) -> _Done:
        close = self.draining
        headers = prepare_response_headers(
            list(response.headers),
            request_id=prepared.request_id,
            request_id_header=self._rid_header,
            close=close,
        )
        # Head, body chunks and end go out together when the upstream sent them
        # together: one write per burst instead of one per event.
        c.queue(
            h11.Response(status_code=response.status_code, headers=headers, reason=response.reason)
        )
        timeout = self.settings.request_timeout
        # One scope for the whole body; its deadline moves before each wait on
        # the network, so it bounds silence, not the body's total time.
        silence = trio.CancelScope(deadline=trio.current_time() + timeout)

        async def before_wait() -> None:
            await c.flush()
            silence.deadline = trio.current_time() + timeout

        failure = ""
        with silence:
            while True:
                try:
                    event = await _up_next(up, before_wait)
                except _UpstreamBroken as exc:
                    failure = str(exc)
                    break
                # Writes to the app are not the upstream's silence: unbounded here.
                silence.deadline = math.inf
                if isinstance(event, h11.Data):
                    ex.bytes_out += len(event.data)
                    c.queue(h11.Data(data=event.data))
                    if len(c._out) >= CHUNK:
                        await c.flush()
                elif isinstance(event, h11.EndOfMessage):
                    await c.send(h11.EndOfMessage())
                    keep = c.conn.our_state is h11.DONE and not self.draining
                    return _Done(response.status_code, keep)
                else:
                    failure = f"unexpected upstream event {type(event).__name__}"
                    break
                silence.deadline = trio.current_time() + timeout
        if silence.cancelled_caught:
            failure = "upstream body timeout"
        # Mid-body: the app must see a broken response, not a short one.
        ex.reasons.append(failure)
        abort_stream(c.stream)
        return _Done(response.status_code, False, "upstream_reset")

    async def _tunnel(
        self,
        c: _Client,
        up: UpstreamConnection,
        switch: h11.InformationalResponse,
        prepared: Any,
        ex: _Exchange,
    ) -> _Done:
        """101 from upstream: answer the app with 101, then relay raw bytes both ways."""
        if not prepared.upgrade or c.conn.their_state is not h11._state.MIGHT_SWITCH_PROTOCOL:
            abort_stream(c.stream)
            ex.reasons.append("upstream switched protocols unasked")
            return _Done(502, False, "upstream_error")
        headers = prepare_response_headers(
            list(switch.headers),
            request_id=prepared.request_id,
            request_id_header=self._rid_header,
            switching=True,
        )
        await c.send(
            h11.InformationalResponse(status_code=101, headers=headers, reason=switch.reason)
        )
        client_rest, _ = c.conn.trailing_data
        upstream_rest, _ = up.conn.trailing_data
        try:
            if upstream_rest:
                await c.stream.send_all(upstream_rest)
            if client_rest:
                await up.stream.send_all(client_rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return _Done(101, False, "tunnel_reset")
        client_stream = c.stream
        if not isinstance(client_stream, trio.abc.HalfCloseableStream):
            return _Done(101, False, "tunnel_unsupported")
        counters = RelayCounters(bytes_in=len(client_rest), bytes_out=len(upstream_rest))
        result = await relay(client_stream, up.stream, counters)
        ex.bytes_in, ex.bytes_out = counters.bytes_in, counters.bytes_out
        return _Done(101, False, f"tunnel_{result.outcome}")


class _NoNursery:
    """Stands in for a nursery when nothing runs concurrently (a request without a body).

    Its ``cancel_scope`` is never entered, so cancelling it is a harmless no-op.
    """

    def __init__(self) -> None:
        self.cancel_scope = trio.CancelScope()

    async def __aenter__(self) -> _NoNursery:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        raise RuntimeError("no nursery: nothing may run concurrently here")


_NO_NURSERY = _NoNursery()


async def serve_http_client(stream: trio.abc.Stream, ctx: HttpProxy, client: str = "?") -> None:
    """The listener's entry point for ``protocol = "http"``: serve one accepted connection."""
    await ctx.serve_client(stream, client)
