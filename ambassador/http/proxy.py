"""The HTTP listener's trio shell: llhttp towards the app, llhttp towards each upstream endpoint.

One ``HttpProxy`` per HTTP listener holds what outlives a client connection:
the upstream keep-alive pool, the header files, the retry budgets, the
metrics. ``serve_client`` runs one accepted client connection until it ends:

    read request head (``wire.RequestReader``; 400/431 on garbage) -> route
    (current env's cluster; 503 when none is usable) -> header policy ->
    attempt: choose endpoint, pooled connection, send head, pump the request
    body concurrently, read the response head (504 after request_timeout) ->
    maybe retry (budget, backoff) -> forward head and stream the body -> back
    to the pool -> access log + metrics -> next request on the same connection
    (keep-alive, pipelining: the reader keeps what the app sent ahead).

Every decision is in a pure module (``wire`` for framing, ``headers``,
``retry``, ``pool.PoolBook``, the routing core's ``Cluster``); this file moves
bytes and time. The hot path (a request without a body, a response that
arrives in one read) costs two waits on the network, one write each way and
no cancel scope: the keep-alive and response-head deadlines are kept by the
proxy's watchdog (``deadlines``). Errors of a misbehaving upstream or client end
that exchange (with a status when the client can still get one) and never
escape ``serve_client``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
import trio

from sidecar_common.jsonlog import get_logger, log_event
from sidecar_common.metrics import CounterChild, HistogramChild, Registry
from sidecar_common.retry import Backoff

from ..endpoint import EndpointState
from ..relay import RelayCounters, abort_stream, relay
from ..tls import UpstreamTLS
from .accesslog import AccessLog, access_log
from .deadlines import Deadlines
from .exchange import Done, Exchange, Failed, Resume, Route
from .headers import (
    HeaderFiles,
    IdSource,
    PreparedRequest,
    RequestTemplate,
    ResponseTemplate,
    plan_request_headers,
    prepare_request_headers,
    prepare_response_headers,
)
from .lane import LANE_DONE, Lane
from .metrics import HttpMetrics, code_class, method_label
from .pool import Connector, PoolKey, UpstreamConnection, UpstreamPool
from .retry import IDEMPOTENT_METHODS, RetryBudget, retry_refusal
from .settings import HttpSettings, lane_enabled
from .transport import CHUNK, SocketTransport, Transport, TransportBroken, open_transport
from .wire import (
    CLOSED,
    END,
    LAST_CHUNK,
    Framing,
    ProtocolError,
    RequestHead,
    RequestReader,
    ResponseHead,
    frame_chunk,
    request_head,
    response_head,
)

__all__ = ["HttpProxy", "Route", "serve_http_client"]

log = get_logger("ambassador.http")


class _ClientGone(Exception):
    """The app's connection broke, closed or broke HTTP mid-exchange: nothing more to send it."""


class _UpstreamBroken(Exception):
    """The upstream connection broke, closed, or spoke invalid HTTP."""


class _Client:
    """The app's side: a request reader over the accepted stream, and the state of this exchange."""

    __slots__ = (
        "deadline",
        "idle_since",
        "keep_alive",
        "reader",
        "request_done",
        "responded",
        "scope",
        "stream",
        "transport",
    )

    def __init__(
        self, stream: trio.abc.Stream, max_header_bytes: int, counters: RelayCounters | None
    ) -> None:
        self.stream = stream
        self.transport: Transport = open_transport(stream, counters)
        self.reader = RequestReader(max_header_bytes)
        #: The current request was read to its end (else the connection cannot carry another).
        self.request_done = True
        #: A final response (head) was sent for the current request.
        self.responded = False
        #: The app keeps the connection alive after this request (HTTP/1.1, no close).
        self.keep_alive = True
        #: The connection's one cancel scope: cancelled when idle too long or on drain.
        self.scope = trio.CancelScope()
        #: While idle: when the keep-alive timeout ends (``Deadlines``).
        self.deadline = math.inf
        #: When the last response ended (trio clock): the idle time counts from there.
        self.idle_since = trio.current_time()

    def expire(self) -> None:
        """Idle past the keep-alive timeout: close."""
        self.scope.cancel()

    async def next_event(self) -> object:
        reader = self.reader
        event = reader.next_event()
        while event is None:
            try:
                data = await self.transport.recv()
            except TransportBroken:
                raise _ClientGone from None
            reader.feed(data)
            event = reader.next_event()
        return event

    async def send(self, data: bytes) -> None:
        try:
            await self.transport.send(data)
        except TransportBroken:
            raise _ClientGone from None


async def _up_next(up: UpstreamConnection, *, wait_first: bool = False) -> object:
    """The next event of the upstream's response; raises ``_UpstreamBroken`` on trouble.

    ``wait_first``: the request just went out, so no answer can be there yet:
    wait for readability before the first read (saves a read that would fail).
    """
    reader = up.reader
    event = reader.next_event()
    while event is None:
        try:
            data = await up.transport.recv(wait_first)
            wait_first = False
        except TransportBroken as exc:
            raise _UpstreamBroken(f"upstream connection broken: {exc}") from None
        reader.feed(data)
        event = reader.next_event()
    if event is CLOSED:
        raise _UpstreamBroken("upstream closed the connection")
    if isinstance(event, ProtocolError):
        raise _UpstreamBroken(event.reason)
    return event


async def _up_send(up: UpstreamConnection, data: bytes) -> None:
    try:
        await up.transport.send(data)
    except TransportBroken as exc:
        raise _UpstreamBroken(f"upstream connection broken: {exc}") from None


class _RequestBody:
    """The request body: streamed from the app on the first attempt, replayed from memory after.

    Only up to ``limit`` bytes are kept; a longer body cannot be replayed and
    so is never retried once sent.
    """

    def __init__(
        self, client: _Client, limit: int, *, complete: bool = False, read: bytes | None = None
    ) -> None:
        self.client = client
        self.limit = limit
        self.kept: list[bytes] = []
        self.size = 0
        self.consumed = False
        #: True once the app's body was read to its end (at once for a request without a body).
        self.complete = complete
        self.overflow = False
        if read is not None:
            # Read whole already (by the lane): replayed from memory on every attempt.
            self.kept = [read] if read else []
            self.size = len(read)
            self.consumed = self.complete = True

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
            if type(event) is bytes:
                self.size += len(event)
                if not self.overflow:
                    if self.size <= self.limit:
                        self.kept.append(event)
                    else:
                        self.overflow = True
                        self.kept.clear()
                yield event
            elif event is END:
                self.complete = True
                self.client.request_done = True
                return
            elif isinstance(event, ProtocolError):
                raise _ClientGone(f"invalid request body: {event.reason}")
            else:
                raise _ClientGone("client closed mid-body")


def _error_body(status: int, message: str, request_id: str) -> bytes:
    return orjson.dumps({"error": message, "status": status, "request_id": request_id})


_MESSAGES = {
    400: "malformed request",
    405: "CONNECT is not supported",
    431: "request header section too large",
    502: "bad gateway",
    503: "no healthy upstream",
    504: "upstream timeout",
}


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


_REASONS = {status: _reason(status) for status in range(100, 600)}


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
        #: Metric children per (env, method, status class), bound once: no label dict per request.
        self._count_children: dict[tuple[str, bytes, int], tuple[CounterChild, HistogramChild]] = {}
        self.access = AccessLog(access_log)
        self.deadlines = Deadlines()
        self._keys: dict[tuple[str, tuple[str, int]], tuple[UpstreamTLS | None, PoolKey]] = {}
        self.draining = False
        #: Client connections waiting for their next request (drain closes them at once).
        self._idle: set[_Client] = set()
        #: The fast lane for plain keep-alive exchanges (None: ``AMBASSADOR_HTTP_LANE=off``).
        self.lane = Lane(self) if lane_enabled() else None

    # ------------------------------------------------------------------ lifecycle

    def start_drain(self) -> None:
        """Finish the requests in flight, then close: idle keep-alive connections close now."""
        self.draining = True
        for c in list(self._idle):
            c.scope.cancel()

    async def aclose(self) -> None:
        """Close the pooled idle upstream connections; write the queued access-log lines.

        Also stops the proxy's two system tasks (deadlines, access log), so a
        proxy replaced on reload leaves nothing running behind.
        """
        self.access.close()
        self.deadlines.close()
        if self.lane is not None:
            self.lane.close()
        await self.pool.aclose()

    # ------------------------------------------------------------------ client connection

    async def serve_client(
        self, stream: trio.abc.Stream, client: str = "?", counters: RelayCounters | None = None
    ) -> None:
        """Serve one app connection until it closes, times out idle, or the proxy drains.

        The caller owns ``stream`` and closes it afterwards. Never raises for
        I/O or protocol errors of either peer. ``counters`` (optional) adds the
        bytes read from and written to the app (tunnels included).
        """
        c = _Client(stream, self.settings.max_header_bytes, counters)
        lane = self.lane if type(c.transport) is SocketTransport else None
        try:
            with c.scope:
                while not self.draining:
                    event = c.reader.next_event()
                    if event is None:
                        route = self.route() if lane is not None else None
                        if lane is not None and (route is None or route.tls is None):
                            # The lane serves the plain requests; what it hands back
                            # (anything unusual, a retry) is served here. An HTTPS
                            # upstream is the shell's (the lane speaks plain TCP).
                            event = await lane.serve(c, client)
                            if event is LANE_DONE:
                                return
                        else:
                            event = await self._wait_request(c)
                            if c.scope.cancel_called:
                                return  # idle timeout or drain (even if a request just came)
                    if type(event) is RequestHead:
                        if not await self._handle(c, event, client):
                            return
                        continue
                    if type(event) is Resume:
                        if not await self._handle(c, event.head, client, event):
                            return
                        continue
                    if isinstance(event, ProtocolError):
                        await self._bad_request(c, event, client)
                    return  # EOF
        except _ClientGone:
            return

    async def _wait_request(self, c: _Client) -> object:
        """The next request event; cancelled after ``keepalive_timeout`` idle or on drain."""
        self.deadlines.add(c, c.idle_since + self.settings.keepalive_timeout)
        self._idle.add(c)
        try:
            return await c.next_event()
        finally:
            self._idle.discard(c)
            self.deadlines.discard(c)

    async def _bad_request(self, c: _Client, error: ProtocolError, client: str) -> None:
        status = error.status if error.status in (400, 431) else 400
        c.request_done = False
        c.responded = False  # still True from the connection's previous request
        await self._send_error(c, status, _MESSAGES[status], "", close=True)
        self._count(b"OTHER", self._env_label(), status, 0.0)
        log_event(
            access_log,
            "request",
            listener=self.listener,
            client=client,
            status=status,
            outcome="bad_request",
            reason=error.reason,
        )

    def _tls_for(self, tls: UpstreamTLS | None) -> UpstreamTLS | None:
        """The upstream Host names the TLS server too, unless ``server_name`` says otherwise."""
        host = self.settings.upstream_host
        if tls is None or tls.server_name is not None or not host:
            return tls
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return dataclasses.replace(tls, server_name=name.strip("[]"))

    def _pool_key(self, route: Route, ep: EndpointState) -> PoolKey:
        """The pool key of (env, endpoint, TLS), made once, not per request."""
        cached = self._keys.get((route.env, ep.address))
        if cached is not None and cached[0] is route.tls and cached[1].endpoint == ep.name:
            return cached[1]
        key = PoolKey(route.env, ep.address, ep.name, self._tls_for(route.tls))
        if len(self._keys) >= 4096:
            self._keys.clear()  # bounded across endpoint churn
        self._keys[(route.env, ep.address)] = (route.tls, key)
        return key

    def _env_label(self) -> str:
        route = self.route()
        return route.env if route is not None else ""

    async def _send_error(
        self, c: _Client, status: int, message: str, request_id: str, *, close: bool
    ) -> None:
        if c.responded:
            return
        c.responded = True
        body = _error_body(status, message, request_id)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ]
        if request_id:
            headers.append((self._rid_header, request_id.encode()))
        if close or not c.request_done or not c.keep_alive or self.draining:
            headers.append((b"connection", b"close"))
        await c.send(response_head(status, _REASONS.get(status, b""), headers) + body)

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

    def prepare(self, req: RequestHead, now: float) -> PreparedRequest:
        """The request's upstream headers and ids (the header policy; once per request)."""
        return prepare_request_headers(
            req.headers,
            ids=self.ids,
            injected=self._injected(now),
            upstream_host=self._upstream_host,
            request_id_header=self._rid_header,
        )

    def finish_request(
        self, c: _Client, ex: Exchange, client: str, done: Done, start: float
    ) -> None:
        """A request is over: its metrics and its access-log line (the lane's and this shell's)."""
        c.idle_since = trio.current_time()
        duration = c.idle_since - start
        self._count(ex.method, ex.env, done.status, duration)
        self.access.request(
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

    async def _handle(
        self, c: _Client, req: RequestHead, client: str, resume: Resume | None = None
    ) -> bool:
        """Serve one request; True when the client connection may carry another.

        ``resume``: the lane began this request (its end is read; a route, an
        endpoint, maybe a failed first attempt): carry on from there.
        """
        c.responded = False
        c.keep_alive = req.keep_alive and req.version == "1.1"
        if resume is not None:
            start = resume.start
            c.request_done = True
        else:
            start = trio.current_time()
            if req.framing == Framing.NONE:
                # Its end is already parsed (it follows the head in the same read):
                # any answer, errors included, leaves the connection reusable.
                if await c.next_event() is not END:
                    raise _ClientGone
                c.request_done = True
            else:
                c.request_done = False
        if resume is not None and resume.ex is not None:
            ex, prepared, route = resume.ex, resume.prepared, resume.route
            assert prepared is not None and route is not None
        else:
            ex = Exchange(method=req.method, target=req.target)
            route = resume.route if resume is not None else self.route()
            ex.env = route.env if route is not None else ""
            prepared = self.prepare(req, start)
            ex.request_id, ex.trace_id = prepared.request_id, prepared.trace.trace_id
        done: Done
        if req.method == b"CONNECT":
            # A forward-proxy tunnel makes no sense towards fixed upstreams.
            await self._send_error(c, 405, _MESSAGES[405], ex.request_id, close=True)
            done = Done(405, False, "bad_request")
        elif route is None:
            await self._send_error(c, 503, "no environment selected", ex.request_id, close=False)
            done = Done(503, c.request_done, "no_env")
        else:
            done = await self._route_request(c, req, prepared, route, ex, start, resume)
        self.finish_request(c, ex, client, done, start)
        return (
            done.keep_alive
            and c.keep_alive
            and c.request_done
            and not c.reader.switched
            and not self.draining
        )

    async def _route_request(
        self,
        c: _Client,
        req: RequestHead,
        prepared: PreparedRequest,
        route: Route,
        ex: Exchange,
        now: float,
        resume: Resume | None = None,
    ) -> Done:
        budget = self._budget(route.env)
        body = _RequestBody(
            c,
            self.settings.retry.replay_buffer,
            complete=req.framing == Framing.NONE,
            read=resume.body if resume is not None else None,
        )
        tried: set[tuple[str, int]] = set()
        retries = 0
        last: Failed | None = None
        first = resume.ep if resume is not None else None
        if resume is not None and resume.prior is not None:
            # The lane's attempt (on ``first``) failed: decide on a retry as for our own.
            assert first is not None
            tried.add(first.address)
            first, last = None, resume.prior
        else:
            budget.record_request(now)
        while True:
            if last is not None:
                ex.reasons.append(f"{ex.upstream}: {last.reason}")
                refusal = retry_refusal(
                    settings=self.settings.retry,
                    method=req.method,
                    failure=last.failure,
                    retries_done=retries,
                    status=last.status,
                    body_replayable=body.replayable,
                )
                if refusal is not None:
                    break
                if not budget.try_withdraw(trio.current_time()):
                    self.metrics.budget_exhausted.labels(
                        listener=self.listener, env=route.env
                    ).inc()
                    ex.reasons.append("retry budget exhausted")
                    break
                self.metrics.retries.labels(listener=self.listener, env=route.env).inc()
                await trio.sleep(self.backoff.delay(retries, self.rng))
                retries += 1
                now = trio.current_time()
            ep: EndpointState | None = first
            first = None
            if ep is None:
                ep = route.cluster.choose(now, exclude=tried)
            if ep is None and tried:
                # Every endpoint tried once: a retry may go back to one of them.
                ep = route.cluster.choose(now)
            if ep is None:
                if last is None:
                    await self._send_error(c, 503, _MESSAGES[503], ex.request_id, close=False)
                    return Done(503, c.request_done, "no_endpoint")
                break
            tried.add(ep.address)
            ex.attempts += 1
            ex.upstream = ep.name

            def may_retry(status: int, retries_done: int = retries) -> bool:
                return self.would_retry_status(
                    req.method, route.env, status, retries_done, body.replayable
                )

            result = await self._attempt(c, req, prepared, route, ep, body, ex, may_retry, now)
            if isinstance(result, Done):
                return result
            last = result
        assert last is not None
        await self._send_error(
            c, last.status, _MESSAGES.get(last.status, "bad gateway"), ex.request_id, close=False
        )
        outcome = {"connect": "connect_failed", "timeout": "timeout"}.get(
            last.failure, "upstream_error"
        )
        return Done(last.status, c.request_done, outcome)

    def would_retry_status(
        self, method: bytes, env: str, status: int, retries_done: int, body_replayable: bool
    ) -> bool:
        """Would a response with this 5xx be retried? (then it is dropped, not forwarded)"""
        return (
            retry_refusal(
                settings=self.settings.retry,
                method=method,
                failure="status",
                retries_done=retries_done,
                status=status,
                body_replayable=body_replayable,
            )
            is None
            and self._budget(env).available(trio.current_time()) >= 1.0
        )

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
        req: RequestHead,
        prepared: PreparedRequest,
        route: Route,
        ep: EndpointState,
        body: _RequestBody,
        ex: Exchange,
        may_retry: Callable[[int], bool],
        t0: float,
    ) -> Done | Failed:
        cluster = route.cluster
        cluster.connect_started(ep)
        settled = False  # the attempt's "active" slot is given back exactly once
        key = self._pool_key(route, ep)
        up: UpstreamConnection | None = None
        reusable = False
        now = t0
        try:
            try:
                up = await self.pool.acquire(
                    key,
                    connect_timeout=self.connect_timeout,
                    now=t0,
                    # Unchecked reuse only where a reset is surely retried: an
                    # idempotent request without a body (nothing half-sent to race).
                    check=req.framing != Framing.NONE or req.method not in IDEMPOTENT_METHODS,
                )
            except (OSError, trio.TooSlowError) as exc:
                settled = True
                self._endpoint_failed(route, ep, "connect")
                reason = "connect timeout" if isinstance(exc, trio.TooSlowError) else str(exc)
                return Failed("connect", 503, f"connect failed: {reason}")
            reused = up.requests > 0
            up.requests += 1
            result, reusable, succeeded = await self._exchange(
                c, req, prepared, up, body, ex, may_retry, t0 + self.settings.request_timeout
            )
            now = trio.current_time()
            settled = True
            self.settle_attempt(route, ep, t0, now, result, succeeded, reused)
            return result
        finally:
            if up is not None:
                # No checkpoint here: the response went out, its access line must follow.
                self.pool.release_now(up, reusable=reusable, now=now)
            if not settled:
                cluster.connection_closed(ep)

    def settle_attempt(
        self,
        route: Route,
        ep: EndpointState,
        t0: float,
        now: float,
        result: Done | Failed,
        succeeded: bool | None,
        reused: bool,
    ) -> None:
        """Tell the cluster how an attempt on ``ep`` ended (its latency, or its failure).

        ``succeeded``: True (answered below 500), False (failed or 5xx), None
        (nothing to say: the client went away). Ends the attempt's active slot.
        """
        cluster = route.cluster
        if succeeded is True:
            cluster.connect_succeeded(ep, now - t0, now)
        elif succeeded is False and not (
            # A pooled connection the server had closed: not the endpoint's fault.
            isinstance(result, Failed) and result.failure == "reset" and reused
        ):
            # Metric reasons: connect | reset | timeout | 5xx (a retried
            # 5xx is a "status" failure to the retry policy; same thing).
            failure = result.failure if isinstance(result, Failed) else "5xx"
            self._endpoint_failed(route, ep, "5xx" if failure == "status" else failure)
            return  # connect_failed ended the active slot
        cluster.connection_closed(ep)

    async def _exchange(
        self,
        c: _Client,
        req: RequestHead,
        prepared: PreparedRequest,
        up: UpstreamConnection,
        body: _RequestBody,
        ex: Exchange,
        may_retry: Callable[[int], bool],
        head_deadline: float,
    ) -> tuple[Done | Failed, bool, bool | None]:
        """One request/response on ``up``: (result, upstream reusable, endpoint outcome).

        The endpoint outcome is True (answered below 500), False (failed or 5xx),
        None (nothing to say: e.g. the client went away).
        """
        headers = prepared.headers
        if headers[0][0] != b"host" and not any(name == b"host" for name, _ in headers):
            # An HTTP/1.0 app may omit Host; HTTP/1.1 upstream requires one.
            headers = [(b"host", up.key.endpoint.encode()), *headers]
        head = request_head(req.method, req.target, headers)
        up.reader.start(req.method)
        has_body = req.framing != Framing.NONE
        chunked = req.framing == Framing.CHUNKED
        pump_state: dict[str, str] = {}
        # Set once the whole request body went upstream (at once without a body).
        body_done = trio.Event() if has_body else _SENT

        async def pump_body() -> None:
            try:
                async for chunk in body.chunks():
                    await _up_send(up, frame_chunk(chunk) if chunked else chunk)
                if chunked:
                    await _up_send(up, LAST_CHUNK)
            except _UpstreamBroken as exc:
                pump_state["upstream"] = str(exc)
            except _ClientGone as exc:
                pump_state["client"] = str(exc) or "client closed mid-body"
                nursery.cancel_scope.cancel()
            body_done.set()

        failed = False
        try:
            await _up_send(up, head)
        except _UpstreamBroken as exc:
            return Failed("reset", 502, str(exc)), False, False
        if not has_body:
            body.consumed = True
        # What the exchange ends as if the pump cancels it (the app went away mid-body).
        result: Done | Failed = Done(499, False, "client_gone")
        response: ResponseHead | None = None
        # A nursery (and its cancel scope) only when a body must be pumped
        # concurrently: most requests have none.
        async with trio.open_nursery() if has_body else _NO_NURSERY as nursery:
            if has_body:
                nursery.start_soon(pump_body)
            final: ResponseHead | None = None
            timeout = self.settings.request_timeout
            try:
                if up.watchable:
                    # The watchdog wakes this wait at the deadline (no scope per request).
                    self.deadlines.add(up, head_deadline)
                    try:
                        final = await self._response_head(c, up)
                    finally:
                        self.deadlines.discard(up)
                else:
                    with trio.move_on_after(timeout):
                        final = await self._response_head(c, up)
            except _UpstreamBroken as exc:
                nursery.cancel_scope.cancel()
                if up.timed_out:
                    return Failed("timeout", 504, "no response head in time"), False, False
                return Failed("reset", 502, str(exc)), False, False
            except _ClientGone:
                nursery.cancel_scope.cancel()
                return Done(499, False, "client_gone"), False, None
            if final is None:
                nursery.cancel_scope.cancel()
                return Failed("timeout", 504, "no response head in time"), False, False
            if final.status == 101:
                # 101 Switching Protocols: a tunnel from here on.
                with trio.move_on_after(self.settings.request_timeout):
                    await body_done.wait()
                result = await self._tunnel(c, up, final, prepared, ex)
                nursery.cancel_scope.cancel()
                return result, False, True
            response = final
            status = response.status
            failed = status >= 500
            if failed and body_done.is_set() and may_retry(status):
                # Possibly retried: the caller decides; this response is dropped.
                nursery.cancel_scope.cancel()
                return Failed("status", status, f"status {status}"), False, False
            try:
                result = await self._forward_response(c, up, response, prepared, ex)
            except _ClientGone:
                nursery.cancel_scope.cancel()
                return Done(status, False, "client_gone"), False, None
            if not body_done.is_set():
                # The upstream answered before reading the whole body: the app's
                # connection is mid-request, so it cannot carry another one.
                nursery.cancel_scope.cancel()
                result.keep_alive = False
        ex.bytes_in = body.size
        if "client" in pump_state:
            ex.reasons.append(pump_state["client"])
            if isinstance(result, Failed):
                return Done(499, False, "client_gone"), False, None
            result.keep_alive = False
        reusable = (
            result.outcome == "ok"
            and not pump_state
            and body_done.is_set()
            and response is not None
            and response.keep_alive
            and not up.reader.stray
            and not up.timed_out
        )
        return result, reusable, not failed

    async def _response_head(self, c: _Client, up: UpstreamConnection) -> ResponseHead:
        """The upstream's final response head, or its 101; 1xx heads go on to the app."""
        event = await _up_next(up, wait_first=True)
        while True:
            if type(event) is not ResponseHead:
                raise _UpstreamBroken("upstream sent body bytes before a head")
            if event.status >= 200 or event.status == 101:
                return event
            await _up_next(up)  # the end of the 1xx (already parsed)
            if not c.responded:
                await c.send(response_head(event.status, event.reason, []))
            event = await _up_next(up)

    def request_template(
        self, headers: list[tuple[bytes, bytes]], injected: list[tuple[bytes, bytes]]
    ) -> RequestTemplate:
        """The header policy for one header section of the app, ids left to each request."""
        plan = plan_request_headers(
            headers,
            injected=injected,
            upstream_host=self._upstream_host,
            request_id_header=self._rid_header,
        )
        return RequestTemplate(headers, injected, plan, self._rid_header)

    def response_template(
        self, c: _Client, response: ResponseHead, current: ResponseTemplate | None = None
    ) -> ResponseTemplate:
        """How ``response`` goes to the app (``current`` when it still fits: no work).

        A chunked or close-delimited body goes to an HTTP/1.1 app chunked (the
        connection stays reusable), to an HTTP/1.0 app close-delimited.
        """
        http11 = c.keep_alive  # keep-alive implies HTTP/1.1; an HTTP/1.0 app gets close-delimited
        framing = response.framing
        reframe = framing == Framing.CHUNKED or framing == Framing.CLOSE
        close = self.draining or not c.keep_alive or not c.request_done or (reframe and not http11)
        chunked = reframe and http11
        status, reason, headers = response.status, response.reason, response.headers
        if current is not None and current.matches(
            status, reason, headers, close=close, chunked=chunked
        ):
            return current
        return ResponseTemplate(
            status, reason, headers, self._rid_header, close=close, chunked=chunked
        )

    def response_start(
        self, c: _Client, response: ResponseHead, prepared: PreparedRequest
    ) -> tuple[bytes, bool, bool]:
        """(the response head for the app, body re-chunked, connection closes after it)."""
        template = self.response_template(c, response)
        c.responded = True
        return template.render(prepared.request_id), template.chunked, template.close

    async def _forward_response(
        self,
        c: _Client,
        up: UpstreamConnection,
        response: ResponseHead,
        prepared: PreparedRequest,
        ex: Exchange,
    ) -> Done:
        """Send the response head and stream its body to the app.

        Head and body go out in one write when the upstream sent them together
        (the usual small response); otherwise one write per read from the
        upstream, before waiting for more. ``request_timeout`` bounds each
        silence of the upstream, not the body's total time.
        """
        head, chunked, close = self.response_start(c, response, prepared)
        out = [head]
        size = 0
        reader = up.reader
        timeout = self.settings.request_timeout
        failure = ""
        while True:
            event = reader.next_event()
            if event is None:
                # Nothing parsed is left: send what we have, then wait for the upstream.
                if out:
                    await c.send(b"".join(out))
                    out.clear()
                    size = 0
                with trio.move_on_after(timeout) as silence:
                    try:
                        data = await up.transport.recv()
                    except TransportBroken as exc:
                        failure = f"upstream connection broken: {exc}"
                        break
                if silence.cancelled_caught:
                    failure = "upstream body timeout"
                    break
                reader.feed(data)
                continue
            if type(event) is bytes:
                ex.bytes_out += len(event)
                out.append(frame_chunk(event) if chunked else event)
                size += len(event)
                if size >= CHUNK:
                    await c.send(b"".join(out))
                    out.clear()
                    size = 0
            elif event is END:
                if chunked:
                    out.append(LAST_CHUNK)
                await c.send(b"".join(out))
                return Done(response.status, not close)
            else:
                failure = (
                    event.reason if isinstance(event, ProtocolError) else "upstream closed mid-body"
                )
                break
        # Mid-body: the app must see a broken response, not a short one.
        ex.reasons.append(failure)
        if out:
            with contextlib.suppress(_ClientGone):
                await c.send(b"".join(out))
        abort_stream(c.stream)
        return Done(response.status, False, "upstream_reset")

    async def _tunnel(
        self,
        c: _Client,
        up: UpstreamConnection,
        switch: ResponseHead,
        prepared: PreparedRequest,
        ex: Exchange,
    ) -> Done:
        """101 from upstream: answer the app with 101, then relay raw bytes both ways."""
        if not prepared.upgrade or not c.reader.switched or not up.reader.switched:
            abort_stream(c.stream)
            ex.reasons.append("upstream switched protocols unasked")
            return Done(502, False, "upstream_error")
        headers = prepare_response_headers(
            switch.headers,
            request_id=prepared.request_id,
            request_id_header=self._rid_header,
            switching=True,
        )
        c.responded = True
        client_rest = c.reader.trailing
        upstream_rest = up.reader.trailing
        try:
            await c.send(response_head(101, switch.reason, headers) + upstream_rest)
            if client_rest:
                await up.transport.send(client_rest)
        except (_ClientGone, TransportBroken):
            return Done(101, False, "tunnel_reset")
        client_stream = c.stream
        if not isinstance(client_stream, trio.abc.HalfCloseableStream):
            return Done(101, False, "tunnel_unsupported")
        counters = c.transport.counters or RelayCounters()
        in0, out0 = counters.bytes_in, counters.bytes_out
        result = await relay(client_stream, up.stream, counters)
        ex.bytes_in = len(client_rest) + counters.bytes_in - in0
        ex.bytes_out = len(upstream_rest) + counters.bytes_out - out0
        return Done(101, False, f"tunnel_{result.outcome}")


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
#: ``body_done`` of a request without a body: already set (waiting on it only checkpoints).
_SENT = trio.Event()
_SENT.set()


async def serve_http_client(
    stream: trio.abc.Stream,
    ctx: HttpProxy,
    client: str = "?",
    counters: RelayCounters | None = None,
) -> None:
    """The listener's entry point for ``protocol = "http"``: serve one accepted connection.

    ``counters``: the listener's per-connection ``RelayCounters`` (bytes read
    from / written to the app), so HTTP traffic shows in ``ambassador_*_bytes_total``.
    """
    await ctx.serve_client(stream, client, counters)
