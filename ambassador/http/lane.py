"""The HTTP listener's fast lane: plain keep-alive exchanges served without a task switch.

Why: on the proxy's hot path (a small request without a body, a pooled
upstream connection, a response that arrives in one read) the trio shell costs
two waits on the network per request, each an epoll registration, a wake-up and
a task switch, plus the coroutine machinery around every step: 110-130 us of
CPU per request. Here every lane connection's sockets sit in one private epoll
set, and one system task, woken by trio when that set is ready, handles every
ready socket with plain non-blocking ``read``/``write`` and the same pure cores
as the shell (``wire`` readers, the header policy through per-connection
templates, ``PoolBook``, the cluster's balancer, the retry policy), holding
its writes to the end of each batch (``_release_held``): about 40 us per
request on the benchmark's machine, 30 compiled with mypyc (Envoy 40-55;
bench/notes.md).

What the lane serves: an HTTP/1.1 request without a body, or with a
Content-Length body no larger than the retry replay buffer (read whole, then
sent with its head: a retry can send it again), no Expect, no Upgrade, not
CONNECT, to a plain-TCP environment, when the chosen endpoint has an idle
pooled connection. The response can be anything HTTP/1.1 allows
(Content-Length, chunked, close-delimited, 1xx first, HEAD), streamed with
back-pressure: while the app does not read, the upstream is not read either.

Everything else goes back to the connection's task, which the lane parks
while it serves (``serve`` returns what to do next), so the shell keeps one
implementation of every unusual case:
- a request the lane does not serve is handed back as its parsed event;
- one whose endpoint has no idle connection is handed back as ``Resume``
  with the chosen endpoint (the shell connects);
- a first attempt that failed before anything reached the app (a reset, a
  retryable 5xx, no response head in time) is handed back as ``Resume`` with
  the failure, and the shell's retry policy decides (budget, backoff).
The task is woken with ``LANE_DONE`` when the connection is over (the app
closed it, an exchange broke it, ``Connection: close``, drain). Idle keep-alive
timeout and drain cancel the parked task as they cancel the shell's idle wait;
the abort takes the connection out of the lane.

Edge-triggered interest: a socket is read until a short read (until EOF once
the peer closed: EPOLLRDHUP comes once, with the last bytes), and a client
socket that becomes readable while its request is in flight is read only when
that exchange is over (pipelined requests wait in order, as in the shell).

``AMBASSADOR_HTTP_LANE=off`` turns the lane off (every request through the
shell: the escape hatch, and the baseline the benchmark compares against).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import outcome
import trio

from sidecar_common.jsonlog import get_logger, log_event

from ..endpoint import EndpointState
from ..relay import abort_stream
from .exchange import Done, Exchange, Failed, Resume, Route
from .headers import PreparedRequest, RequestTemplate, ResponseTemplate, TraceContext
from .pool import UpstreamConnection
from .retry import IDEMPOTENT_METHODS
from .transport import CHUNK
from .wire import (
    CLOSED,
    END,
    LAST_CHUNK,
    Framing,
    ProtocolError,
    RequestHead,
    ResponseHead,
    frame_chunk,
    request_head,
    response_head,
)

if TYPE_CHECKING:
    from .proxy import HttpProxy, _Client

__all__ = ["LANE_DONE", "Lane"]

log = get_logger("ambassador.http")

_HAS_EPOLL: Final = hasattr(select, "epoll")

_IN: Final = (select.EPOLLIN | select.EPOLLET | select.EPOLLRDHUP) if _HAS_EPOLL else 0
_IN_OUT: Final = (_IN | select.EPOLLOUT) if _HAS_EPOLL else 0
_OUT: Final = select.EPOLLOUT if _HAS_EPOLL else 0
#: The peer closed (or reset): a short read no longer means drained, EOF is still to read.
_HUP: Final = (select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR) if _HAS_EPOLL else 0


#: Batches served per wake-up by trio before its other tasks get their turn.
_ROUNDS: Final = 8


class _Done:
    """What ``Lane.serve`` returns when the connection is over."""

    def __repr__(self) -> str:
        return "LANE_DONE"


LANE_DONE: Final = _Done()

# States of a lane connection.
_IDLE: Final = 0  # waiting for the app's next request
_HEAD: Final = 1  # request sent upstream, waiting for the response head
_BODY: Final = 2  # forwarding the response body


class _Conn:
    """One app connection while the lane serves it (and its exchange in flight, if any)."""

    __slots__ = (
        "body",
        "c",
        "chunked",
        "client",
        "close",
        "deadline",
        "ep",
        "ex",
        "fd",
        "held",
        "hup",
        "lane",
        "out",
        "parts",
        "pending_read",
        "prepared",
        "queued",
        "req",
        "request_id",
        "response",
        "reused",
        "route",
        "rtemplate",
        "start",
        "state",
        "task",
        "template",
        "trace",
        "up",
        "up_fd",
        "up_held",
        "up_hup",
        "up_out",
        "up_paused",
        "waiting",
    )

    def __init__(self, lane: Lane, c: _Client, client: str, fd: int) -> None:
        self.lane = lane
        self.c = c
        self.client = client
        self.fd = fd
        self.task: trio.lowlevel.Task | None = None
        self.state = _IDLE
        #: Bytes for the app that did not fit its socket yet.
        self.out = b""
        #: Request bytes for the upstream that did not fit yet.
        self.up_out = b""
        #: Bytes for the app / the upstream held until the end of the lane's batch (see ``_run``).
        self.held = b""
        self.up_held = b""
        #: In the lane's list of connections with held bytes.
        self.queued = False
        #: The app's socket signalled data while an exchange was in flight.
        self.pending_read = False
        #: The upstream is not read while the app does not take what we have.
        self.up_paused = False
        #: The app's / the upstream's side closed: read on to EOF (edge-triggered: no new edge).
        self.hup = False
        self.up_hup = False
        self.deadline = 0.0
        self.req: RequestHead | None = None
        #: The request's body (sent with its head; kept for a retry in the shell).
        self.body = b""
        #: A request whose body is still arriving, and what arrived of it.
        self.waiting: RequestHead | None = None
        self.parts: list[bytes] = []
        self.response: ResponseHead | None = None
        self.route: Route | None = None
        self.ep: EndpointState | None = None
        self.up: UpstreamConnection | None = None
        self.up_fd = -1
        self.prepared: PreparedRequest | None = None
        #: The request's ids (its ``prepared`` headers are made only if the shell needs them).
        self.request_id = ""
        self.trace: TraceContext | None = None
        #: The header policy of this app's last header section and of the last response head:
        #: a keep-alive client repeats its headers, an upstream its response headers.
        self.template: RequestTemplate | None = None
        self.rtemplate: ResponseTemplate | None = None
        self.ex: Exchange | None = None
        self.start = 0.0
        self.reused = False
        self.chunked = False
        self.close = False

    def expire(self) -> None:
        """The response (head, or the next body bytes) did not come in time."""
        self.lane._guarded(self, self.lane._timed_out)


class Lane:
    """The fast lane of one ``HttpProxy`` (see the module docstring)."""

    def __init__(self, proxy: HttpProxy) -> None:
        self.proxy = proxy
        self._epoll = select.epoll()
        #: Descriptor -> the lane connection it belongs to (app and upstream sockets).
        self._by_fd: dict[int, _Conn] = {}
        #: Upstream connections registered in the epoll set (they stay while pooled).
        self._registered: dict[int, UpstreamConnection] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False
        #: Inside a batch of ready sockets: writes are held to its end (``_run``).
        self._batching = False
        #: Connections with held bytes, in the order they were held.
        self._held: list[_Conn] = []
        #: Requests served entirely in the lane, and handed back to the shell.
        self.served = 0
        self.handed_back = 0

    # ------------------------------------------------------------------ the task's side

    async def serve(self, c: _Client, client: str) -> object:
        """Serve ``c``'s requests here until one needs the shell or the connection ends.

        Returns the event the shell handles next (a ``RequestHead``, a
        ``Resume``, a ``ProtocolError``, ``CLOSED``) or ``LANE_DONE``.
        """
        self._ensure_running()
        sock = c.transport.stream.socket  # type: ignore[attr-defined]
        conn = _Conn(self, c, client, sock.fileno())
        self._by_fd[conn.fd] = conn
        self._epoll.register(conn.fd, _IN)
        # Pipelined requests the reader already holds, or bytes already waiting.
        conn.pending_read = True
        result = self._guarded(conn, self._advance)
        if result is not None:
            return result
        if conn.fd not in self._by_fd:
            return LANE_DONE  # the lane gave up on it (logged)
        conn.task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._drop(conn)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _finish(self, conn: _Conn, value: object) -> object:
        """Take ``conn`` out of the lane; wake its task with ``value`` (or return it)."""
        self._forget(conn)
        task, conn.task = conn.task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(value))
            return None
        return value

    def _forget(self, conn: _Conn) -> None:
        p = self.proxy
        p.deadlines.discard(conn)
        p.deadlines.discard(conn.c)
        p._idle.discard(conn.c)
        if self._by_fd.get(conn.fd) is conn:
            del self._by_fd[conn.fd]
            with contextlib.suppress(OSError):
                self._epoll.unregister(conn.fd)

    def _drop(self, conn: _Conn) -> None:
        """The parked task was cancelled (idle timeout, drain, shutdown): end what is in flight."""
        if conn.up is not None:
            self._end_attempt(conn, None, reusable=False)
        self._forget(conn)
        conn.task = None

    # ------------------------------------------------------------------ the loop

    def _ensure_running(self) -> None:
        token = trio.lowlevel.current_trio_token()
        if token is not self._token:
            self._token = token
            trio.lowlevel.spawn_system_task(self._run, token, name="http lane")

    def close(self) -> None:
        """Stop the loop (the proxy is closed); connections still here end."""
        self._closed = True
        for conn in list(self._by_fd.values()):
            if conn.task is not None:
                if conn.up is not None:
                    self._end_attempt(conn, None, reusable=False)
                self._finish(conn, LANE_DONE)
        if self._token is not None:
            self._token = None
            # RuntimeError: not inside a trio run (a proxy closed after its run).
            with contextlib.suppress(RuntimeError):
                trio.lowlevel.notify_closing(self._epoll.fileno())
        self._epoll.close()

    async def _run(self, token: trio.lowlevel.TrioToken) -> None:
        epoll = self._epoll
        poll = epoll.poll
        by_fd = self._by_fd
        while self._token is token and not self._closed:
            try:
                await trio.lowlevel.wait_readable(epoll.fileno())
            except (trio.ClosedResourceError, OSError, ValueError):
                return
            if self._closed:
                return
            ready = poll(0)
            rounds = 0
            while ready:
                self._batching = True
                try:
                    for fd, events in ready:
                        conn = by_fd.get(fd)
                        if conn is not None:  # else a pooled connection, or one handed back
                            self._guarded(conn, self._ready, fd, events)
                finally:
                    self._batching = False
                if self._held:
                    self._release_held()
                rounds += 1
                if rounds == _ROUNDS or self._closed:
                    break
                ready = poll(0)

    def _release_held(self) -> None:
        """Write what the batch held, one write per socket, back to back.

        Why: a write to a sleeping peer's socket wakes it, and on loopback that
        wake-up (in the writer's system time) costs as much as the rest of the
        request's kernel work; written one per request, between two requests'
        Python work, every write finds nginx or the client asleep again. Written
        together at the batch's end, the first wakes the peer and the rest find
        it running: what Envoy does by activating a connection's write event
        instead of writing at once. A batch is what one ``epoll`` wake-up
        returned, so no write waits on anything but this loop's own work.
        """
        held, self._held = self._held, []
        by_fd = self._by_fd
        for conn in held:
            conn.queued = False
            if by_fd.get(conn.fd) is conn:  # else it ended meanwhile
                self._guarded(conn, self._write_held)

    def _write_held(self, conn: _Conn) -> None:
        if conn.up_held:
            data, conn.up_held = conn.up_held, b""
            if conn.up is not None:
                back = self._write_upstream(conn, data)
                if back is not None:
                    self._hand_back(conn, back)
                    return
        if conn.held:
            data, conn.held = conn.held, b""
            if not self._write_client(conn, data):
                self._client_gone(conn)
                return
            if conn.state == _IDLE and not conn.out:
                self._after_response(conn)

    def _hold(self, conn: _Conn) -> None:
        if not conn.queued:
            conn.queued = True
            self._held.append(conn)

    def _ready(self, conn: _Conn, fd: int, events: int) -> None:
        """``fd`` of ``conn`` is ready for ``events``."""
        if fd == conn.fd:
            if events & _HUP:
                conn.hup = True
            if events & _OUT and conn.out:
                self._flush_client(conn)
            if events & ~_OUT:
                conn.pending_read = True
                if conn.state == _IDLE and not conn.out and not conn.held:
                    self._advance(conn)
        elif fd == conn.up_fd:
            if events & _HUP:
                conn.up_hup = True
            if events & _OUT and conn.up_out:
                self._flush_upstream(conn)
            if events & ~_OUT:
                self._read_upstream(conn)

    def _guarded(self, conn: _Conn, step: Callable[..., object], *args: Any) -> object:
        """Run one step for ``conn``; a bug in it ends that connection (logged), not the lane."""
        try:
            return step(conn, *args)
        except Exception as exc:
            log_event(
                log,
                "http lane error; connection closed",
                level=logging.ERROR,
                listener=self.proxy.listener,
                client=conn.client,
                error=f"{type(exc).__name__}: {exc}",
            )
            with contextlib.suppress(Exception):
                self._abort(conn)
            return None

    # ------------------------------------------------------------------ the app's side

    def _advance(self, conn: _Conn) -> object:
        """Between requests: read what the app sent and begin its next request.

        Returns a value for the shell when called before the task parked.
        """
        c = conn.c
        reader = c.reader
        while True:
            event = reader.next_event()
            if event is None:
                if not conn.pending_read:
                    self._idle(conn)
                    return None
                try:
                    data = os.read(conn.fd, CHUNK)
                except BlockingIOError:
                    conn.pending_read = False
                    continue
                except OSError:
                    data = b""
                if len(data) < CHUNK and not conn.hup:
                    conn.pending_read = False  # drained: the next edge says when there is more
                if c.transport.counters is not None:
                    c.transport.counters.bytes_in += len(data)
                reader.feed(data)
                continue
            p = self.proxy
            p.deadlines.discard(c)
            p._idle.discard(c)
            waiting = conn.waiting
            if waiting is not None:
                # Collecting the body of a request the lane took (it comes whole).
                if type(event) is bytes:
                    conn.parts.append(event)
                    continue
                conn.waiting = None
                if event is not END:
                    # The app broke HTTP or left mid-body: the shell answers or closes.
                    if event is CLOSED:
                        return self._finish(conn, LANE_DONE)
                    return self._hand_back(conn, event)
                body = b"".join(conn.parts)
                conn.parts = []
                back = self._begin(conn, waiting, body)
            elif event is CLOSED:
                return self._finish(conn, LANE_DONE)
            elif type(event) is not RequestHead or not self._takes(conn, event):
                back = event
            elif event.framing == Framing.LENGTH:
                conn.waiting = event
                continue
            else:
                reader.next_event()  # its END (a request without a body ends with its head)
                back = self._begin(conn, event, b"")
            if back is not None:
                return self._hand_back(conn, back)
            return None

    def _idle(self, conn: _Conn) -> None:
        """Waiting for the next request: the keep-alive timeout and drain apply."""
        p = self.proxy
        c = conn.c
        if p.draining:
            self._finish(conn, LANE_DONE)
            return
        p.deadlines.add(c, c.idle_since + p.settings.keepalive_timeout)
        p._idle.add(c)

    def _send_client(self, conn: _Conn, data: bytes) -> bool:
        """Write to the app (held to the batch's end if small); False: the app is gone.

        What does not fit the socket waits for EPOLLOUT.
        """
        counters = conn.c.transport.counters
        if counters is not None:
            counters.bytes_out += len(data)
        if conn.out:
            conn.out += data
            return True
        if self._batching:
            held = conn.held + data if conn.held else data
            if len(held) <= CHUNK:
                conn.held = held
                self._hold(conn)
                return True
            # More than a chunk: written now, so a big response streams with back-pressure.
            conn.held = b""
            data = held
        return self._write_client(conn, data)

    def _write_client(self, conn: _Conn, data: bytes) -> bool:
        try:
            sent = os.write(conn.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        if sent < len(data):
            conn.out = data[sent:]
            self._epoll.modify(conn.fd, _IN_OUT)
            conn.up_paused = True
            if conn.state == _BODY:
                # Our own pause: the upstream's silence is not timed while the app reads.
                self.proxy.deadlines.discard(conn)
        return True

    def _flush_client(self, conn: _Conn) -> None:
        try:
            sent = os.write(conn.fd, conn.out)
        except BlockingIOError:
            return
        except OSError:
            self._client_gone(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            return
        self._epoll.modify(conn.fd, _IN)
        conn.up_paused = False
        if conn.state == _IDLE:
            self._after_response(conn)
        elif conn.up is not None:
            self._read_upstream(conn)

    def _client_gone(self, conn: _Conn) -> None:
        """The app's socket broke mid-exchange: 499, nothing more to send it."""
        if conn.up is not None and conn.ex is not None:
            # As the shell: the response's status once its head went out, else 499.
            response = conn.response if conn.state == _BODY else None
            self._end_attempt(conn, None, reusable=False)
            self._log(conn, response.status if response is not None else 499, "client_gone")
        self._finish(conn, LANE_DONE)

    def _abort(self, conn: _Conn) -> None:
        """Break the app's connection (RST) and end it: the lane cannot go on with it."""
        if conn.up is not None:
            self._end_attempt(conn, None, reusable=False)
        abort_stream(conn.c.stream)
        self._finish(conn, LANE_DONE)

    # ------------------------------------------------------------------ one request

    def _takes(self, conn: _Conn, req: RequestHead) -> bool:
        """The lane serves ``req``: plain HTTP/1.1, its body (if any) small enough to replay."""
        p = self.proxy
        if (
            req.upgrade
            or req.expect_continue
            or req.version != "1.1"
            or not req.keep_alive
            or req.method == b"CONNECT"
            or p.draining
            or req.framing == Framing.CHUNKED
            or req.content_length > p.settings.retry.replay_buffer
        ):
            return False
        # Without a body its end follows its head (llhttp parsed both at once).
        return req.framing != Framing.NONE or conn.c.reader.peek() is END

    def _begin(self, conn: _Conn, req: RequestHead, body: bytes) -> object:
        """Start ``req`` (read whole: ``body``) in the lane: None, or what the shell must serve."""
        p = self.proxy
        c = conn.c
        start = trio.current_time()
        route = p.route()
        if route is None or route.tls is not None:
            return Resume(req, start, route, body=body)
        ep = route.cluster.choose(start)
        if ep is None:
            return Resume(req, start, route, body=body)
        up = p.pool.take_idle(
            p._pool_key(route, ep),
            start,
            # Unchecked reuse only where a reset is surely retried (as the shell does).
            check=bool(body) or req.method not in IDEMPOTENT_METHODS,
        )
        if up is None:
            # No idle connection: the shell connects (the next request finds one).
            return Resume(req, start, route, ep, body=body)
        if not up.watchable:
            p.pool.release_now(up, reusable=True, now=start)
            return Resume(req, start, route, ep, body=body)
        injected = p._injected(start)
        template = conn.template
        if template is None or not template.matches(req.headers, injected):
            template = conn.template = p.request_template(req.headers, injected)
        if template.has_host:
            data, request_id, trace = template.render(req.method, req.target, p.ids)
            prepared = None
        else:
            # No Host from the app: the endpoint's is added (rare; not templated).
            prepared = p.prepare(req, start)
            headers = [(b"host", up.key.endpoint.encode()), *prepared.headers]
            data = request_head(req.method, req.target, headers)
            request_id, trace = prepared.request_id, prepared.trace
        ex = Exchange(method=req.method, target=req.target)
        ex.env = route.env
        ex.request_id, ex.trace_id = request_id, trace.trace_id
        ex.attempts = 1
        ex.upstream = ep.name
        ex.bytes_in = len(body)
        if body:
            data += body
        conn.body = body
        p._budget(route.env).record_request(start)
        c.responded = False
        c.keep_alive = True
        c.request_done = True
        conn.req, conn.route, conn.ep, conn.up = req, route, ep, up
        conn.prepared, conn.ex, conn.start = prepared, ex, start
        conn.request_id, conn.trace = request_id, trace
        conn.response = None
        conn.reused = up.requests > 0
        conn.up_hup = False
        up.requests += 1
        route.cluster.connect_started(ep)
        up.reader.start(req.method)
        fd = up.transport.sock.fileno()  # type: ignore[attr-defined]
        conn.up_fd = fd
        if self._registered.get(fd) is not up:
            try:
                self._epoll.register(fd, _IN)
            except FileExistsError:
                self._epoll.modify(fd, _IN)
            self._registered[fd] = up
        self._by_fd[fd] = conn
        conn.state = _HEAD
        p.deadlines.add(conn, start + p.settings.request_timeout)
        if self._batching:
            conn.up_held = data
            self._hold(conn)
            return None
        return self._write_upstream(conn, data)

    def _write_upstream(self, conn: _Conn, data: bytes) -> Resume | None:
        """Send the request; what does not fit waits for EPOLLOUT. A ``Resume``: it failed."""
        try:
            sent = os.write(conn.up_fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            return self._attempt_failed(conn, "reset", 502, f"upstream connection broken: {exc}")
        if sent < len(data):
            conn.up_out = data[sent:]
            self._epoll.modify(conn.up_fd, _IN_OUT)
        return None

    def _hand_back(self, conn: _Conn, value: object) -> object:
        self.handed_back += 1
        if conn.held:
            # Bytes this batch owes the app (a 1xx passed on before a retried 5xx): before
            # the shell writes to the socket.
            self._flush_once(conn)
        return self._finish(conn, value)

    def _flush_upstream(self, conn: _Conn) -> None:
        try:
            sent = os.write(conn.up_fd, conn.up_out)
        except BlockingIOError:
            return
        except OSError as exc:
            resume = self._attempt_failed(conn, "reset", 502, f"upstream connection broken: {exc}")
            self._hand_back(conn, resume)
            return
        conn.up_out = conn.up_out[sent:]
        if not conn.up_out:
            self._epoll.modify(conn.up_fd, _IN)

    def _read_upstream(self, conn: _Conn) -> None:
        """Read the upstream until a short read (edge-triggered), forwarding as it parses."""
        up = conn.up
        while up is not None and conn.up is up and not conn.up_paused:
            self._on_events(conn, up)
            if conn.up is not up or conn.up_paused:
                return
            try:
                data = os.read(conn.up_fd, CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                self._upstream_broken(conn, f"upstream connection broken: {exc}")
                return
            up.reader.feed(data)
            if not data or (len(data) < CHUNK and not conn.up_hup):
                # EOF, or drained: act on what came, then wait for the next edge.
                self._on_events(conn, up)
                return

    def _on_events(self, conn: _Conn, up: UpstreamConnection) -> None:
        """Act on the upstream reader's parsed events until it needs more bytes."""
        reader = up.reader
        ex, req, route = conn.ex, conn.req, conn.route
        assert ex is not None and req is not None and route is not None
        out: list[bytes] = []
        while True:
            event = reader.next_event()
            if event is None:
                break
            if conn.state == _HEAD:
                if type(event) is not ResponseHead:
                    reason = (
                        event.reason
                        if isinstance(event, ProtocolError)
                        else "upstream closed the connection"
                        if event is CLOSED
                        else "upstream sent body bytes before a head"
                    )
                    self._upstream_broken(conn, reason, out)
                    return
                if event.status < 200:
                    if event.status == 101:
                        # Only an Upgrade request may be answered 101 (those go to the shell).
                        # As the shell: the endpoint answered; the app gets a 502 line, a reset.
                        ex.reasons.append("upstream switched protocols unasked")
                        self._end_attempt(conn, Done(101, False), reusable=False)
                        self._log(conn, 502, "upstream_error")
                        self._abort(conn)
                        return
                    if reader.peek() is END:
                        reader.next_event()  # the 1xx's end (already parsed)
                    out.append(response_head(event.status, event.reason, []))
                    continue
                if event.status >= 500 and self.proxy.would_retry_status(
                    req.method, route.env, event.status, 0, True
                ):
                    # A 1xx read with it goes to the app first, as the shell passes one on.
                    if out and not self._send_client(conn, b"".join(out)):
                        self._client_gone(conn)
                        return
                    self._hand_back(
                        conn,
                        self._attempt_failed(
                            conn, "status", event.status, f"status {event.status}"
                        ),
                    )
                    return
                rt = conn.rtemplate = self.proxy.response_template(conn.c, event, conn.rtemplate)
                head, conn.chunked, conn.close = rt.render(conn.request_id), rt.chunked, rt.close
                conn.c.responded = True
                conn.state = _BODY
                conn.response = event
                out.append(head)
                continue
            if type(event) is bytes:
                ex.bytes_out += len(event)
                out.append(frame_chunk(event) if conn.chunked else event)
                continue
            if event is END:
                if conn.chunked:
                    out.append(LAST_CHUNK)
                if not self._send_client(conn, b"".join(out)):
                    self._client_gone(conn)
                    return
                self._response_done(conn)
                return
            # Mid-body: the app must see a broken response, not a short one.
            ex.reasons.append(
                event.reason if isinstance(event, ProtocolError) else "upstream closed mid-body"
            )
            self._broken_response(conn, conn.response.status if conn.response else 502, out)
            return
        if out and not self._send_client(conn, b"".join(out)):
            self._client_gone(conn)
            return
        if conn.state == _BODY and not conn.up_paused:
            # More body to come: each silence of the upstream is bounded too.
            p = self.proxy
            p.deadlines.add(conn, trio.current_time() + p.settings.request_timeout)

    def _end_attempt(self, conn: _Conn, result: Done | Failed | None, *, reusable: bool) -> None:
        """The exchange with the upstream is over: tell the cluster, pool or close the connection.

        ``result`` None: the attempt was cut (the app left, the lane stopped).
        """
        up, route, ep = conn.up, conn.route, conn.ep
        assert up is not None and route is not None and ep is not None
        p = self.proxy
        conn.up = None
        p.deadlines.discard(conn)
        fd = conn.up_fd
        if self._by_fd.get(fd) is conn:
            del self._by_fd[fd]
        conn.up_fd = -1
        conn.up_out = conn.up_held = b""
        now = trio.current_time()
        if result is None:
            route.cluster.connection_closed(ep)
        else:
            succeeded = isinstance(result, Done) and result.status < 500
            p.settle_attempt(route, ep, conn.start, now, result, succeeded, conn.reused)
        if not reusable:
            self._registered.pop(fd, None)
        p.pool.release_now(up, reusable=reusable, now=now)

    def _attempt_failed(self, conn: _Conn, failure: Any, status: int, reason: str) -> Resume:
        """Nothing reached the app yet: the shell decides on a retry (``Resume``, failure)."""
        failed = Failed(failure, status, reason)
        self._end_attempt(conn, failed, reusable=False)
        conn.state = _IDLE
        assert conn.req is not None and conn.route is not None
        prepared = conn.prepared
        if prepared is None:
            assert conn.template is not None and conn.trace is not None
            prepared = conn.template.prepared(conn.request_id, conn.trace)
        return Resume(
            conn.req,
            conn.start,
            conn.route,
            conn.ep,
            prepared,
            conn.ex,
            prior=failed,
            body=conn.body,
        )

    def _upstream_broken(self, conn: _Conn, reason: str, out: list[bytes] | None = None) -> None:
        if conn.state == _HEAD:
            self._hand_back(conn, self._attempt_failed(conn, "reset", 502, reason))
            return
        assert conn.ex is not None
        conn.ex.reasons.append(reason)
        self._broken_response(conn, conn.response.status if conn.response else 502, out)

    def _broken_response(self, conn: _Conn, status: int, out: list[bytes] | None) -> None:
        """The response broke after (or instead of) its head: the app sees a reset, not less."""
        if out:
            self._send_client(conn, b"".join(out))
            self._flush_once(conn)
        outcome_name = "upstream_reset" if conn.state == _BODY else "upstream_error"
        self._end_attempt(conn, Done(status, False, outcome_name), reusable=False)
        self._log(conn, status, outcome_name)
        self._abort(conn)

    def _flush_once(self, conn: _Conn) -> None:
        """One last try to hand the app what it is owed before a reset."""
        pending = conn.out or conn.held
        conn.held = b""
        if pending:
            try:
                sent = os.write(conn.fd, pending)
            except OSError:
                return
            conn.out = pending[sent:]

    def _timed_out(self, conn: _Conn) -> None:
        """No response head within ``request_timeout``, or the body went silent that long."""
        up = conn.up
        if up is None:
            return
        up.timed_out = True
        if conn.state == _HEAD:
            resume = self._attempt_failed(conn, "timeout", 504, "no response head in time")
            self._hand_back(conn, resume)
            return
        assert conn.ex is not None
        conn.ex.reasons.append("upstream body timeout")
        self._broken_response(conn, conn.response.status if conn.response else 504, None)

    def _response_done(self, conn: _Conn) -> None:
        response, up = conn.response, conn.up
        assert response is not None and up is not None
        reusable = response.keep_alive and not up.reader.stray and not up.timed_out
        done = Done(response.status, not conn.close)
        self._end_attempt(conn, done, reusable=reusable)
        self._log(conn, response.status, "ok")
        self.served += 1
        conn.state = _IDLE
        if not conn.out and not conn.held:
            self._after_response(conn)
        # else: _flush_client / _write_held call _after_response once the app took it all.

    def _after_response(self, conn: _Conn) -> None:
        if conn.close or self.proxy.draining:
            self._finish(conn, LANE_DONE)
            return
        self._advance(conn)

    def _log(self, conn: _Conn, status: int, outcome_name: str) -> None:
        assert conn.ex is not None
        self.proxy.finish_request(
            conn.c, conn.ex, conn.client, Done(status, False, outcome_name), conn.start
        )
