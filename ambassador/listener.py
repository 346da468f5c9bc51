"""One local port: accept, admit, pick an endpoint, connect, relay, log.

The decisions (which endpoint, is it ejected, is the breaker open) are the pure
routing core's; this module is the trio shell that moves a connection through
them and records what happened:

    accept -> allow-list -> current environment -> listener breaker (bounded
    pending queue with a timeout) -> connect with timeout, retried on the next
    endpoint (bounded attempts, failures reported to the cluster) -> relay ->
    one access-log line and the metrics.

Upstream TLS (the ``tls`` key of the listener or the environment) happens in
``open_upstream``; a PostgreSQL listener with TLS first reads the app's
startup packet itself (answering its SSLRequest with 'N'), connects and
negotiates TLS with the server, then sends the startup on. An HTTP listener
(``protocol = "http"``) hands each admitted connection to its ``HttpProxy``,
which routes every request on its own (``ambassador.http``).

Every path that cannot serve a client closes it at once (fail fast): a client
left hanging on a dead backend is worse than one told "no" immediately.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from sidecar_common.jsonlog import get_logger, log_event
from sidecar_common.metrics import CounterChild, HistogramChild, Registry
from sidecar_common.netaddr import address_allowed

from . import tls as upstream_tls
from .breaker import Breaker
from .cluster import Cluster
from .config import ListenerConfig
from .control import register_switch_metrics
from .endpoint import EndpointState
from .fastrelay import SpliceHub, detached_available, hubs, relay, settle_counters
from .pgtls import PgStartupError, read_client_startup
from .relay import RelayCounters, abort_stream
from .switch import EnvSwitch
from .tcp import connect_socket, finish_tcp, start_tcp
from .tls import UpstreamTLS

if TYPE_CHECKING:
    # Imported where an HTTP listener is built: a TCP-only ambassador does not
    # pay for h11 and the HTTP package in its idle RSS.
    from .fastrelay import _Conn as HubConn
    from .http import HttpProxy, Route

__all__ = [
    "CONNECT_BUCKETS",
    "Connection",
    "ListenerRuntime",
    "Metrics",
    "bind_socket",
    "set_nodelay",
]

access_log = get_logger("ambassador.access")
log = get_logger("ambassador.listener")

#: Connections accepted per wake-up of a listener before others get a turn.
ACCEPT_BATCH = 64
#: Pause after accept failed for lack of resources (file descriptors, memory).
ACCEPT_RETRY = 0.1
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: accept errors that concern one client who is gone already (as trio's SocketListener).
_IGNORED_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
)

# Connect latency on loopback is ~100 us, across a cluster ~1 ms, a struggling
# backend seconds: the buckets span that range.
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The ambassador's metric families; live values are read from the runtimes on scrape."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.runtimes: list[ListenerRuntime] = []
        self.switch: EnvSwitch | None = None
        self.connections = registry.counter(
            "ambassador_connections_total",
            "Client connections by how they ended.",
            ("listener", "env", "outcome"),
        )
        self.connect_duration = registry.histogram(
            "ambassador_connect_duration_seconds",
            "Time to connect to the upstream endpoint (successful connects).",
            ("listener", "env"),
            buckets=CONNECT_BUCKETS,
        )
        self.env_switches = register_switch_metrics(registry, lambda: self.switch)
        self.ejections = registry.counter(
            "ambassador_ejections_total",
            "Endpoints ejected by passive outlier detection.",
            ("listener", "env", "endpoint"),
        )
        self.breaker_rejections = registry.counter(
            "ambassador_circuit_breaker_rejections_total",
            "Connections refused by a circuit breaker (listener or endpoint limit).",
            ("listener", "scope"),
        )
        registry.gauge_callback(
            "ambassador_active_connections",
            "Client connections being relayed now.",
            self._active,
        )
        registry.gauge_callback(
            "ambassador_pending_connections",
            "Clients waiting in the listener's pending queue for a connection slot.",
            self._pending,
        )
        registry.counter_callback(
            "ambassador_received_bytes_total",
            "Bytes received from clients and forwarded upstream.",
            lambda: self._bytes(inbound=True),
        )
        registry.counter_callback(
            "ambassador_sent_bytes_total",
            "Bytes received from upstreams and sent to clients.",
            lambda: self._bytes(inbound=False),
        )
        registry.gauge_callback(
            "ambassador_endpoint_healthy",
            "1 when the endpoint is usable (healthy and not ejected), else 0.",
            self._healthy,
        )

    # A listener replaced by a config reload has two runtimes of one name while
    # the old one drains: the samples below are summed by label set (healthy:
    # the newest runtime's word), so every series stays one series.

    def _pending(self) -> Iterable[tuple[dict[str, str], float]]:
        totals: dict[str, int] = {}
        for rt in self.runtimes:
            totals[rt.name] = totals.get(rt.name, 0) + rt.breaker.pending
        return (({"listener": name}, float(n)) for name, n in totals.items())

    def _active(self) -> Iterable[tuple[dict[str, str], float]]:
        totals: dict[tuple[str, str], int] = {}
        for rt in self.runtimes:
            for env in rt.clusters:
                totals.setdefault((rt.name, env), 0)
            for conn in rt.connections:
                key = (rt.name, conn.env)
                totals[key] = totals.get(key, 0) + 1
        return (({"listener": n, "env": e}, float(v)) for (n, e), v in totals.items())

    def _bytes(self, *, inbound: bool) -> Iterable[tuple[dict[str, str], float]]:
        settle_counters()  # the relay hub's C path counts in its own table
        totals: dict[tuple[str, str], int] = {}
        for rt in self.runtimes:
            closed = rt.closed_bytes_in if inbound else rt.closed_bytes_out
            for env in rt.clusters:
                totals.setdefault((rt.name, env), 0)
            for env, n in closed.items():
                totals[(rt.name, env)] = totals.get((rt.name, env), 0) + n
            for conn in rt.connections:
                live = conn.counters.bytes_in if inbound else conn.counters.bytes_out
                key = (rt.name, conn.env)
                totals[key] = totals.get(key, 0) + live
        return (({"listener": n, "env": e}, float(v)) for (n, e), v in totals.items())

    def _healthy(self) -> Iterable[tuple[dict[str, str], float]]:
        now = trio.current_time()
        values: dict[tuple[str, str, str], float] = {}
        for rt in self.runtimes:  # in creation order: the newest runtime's value wins
            for env, cluster in rt.clusters.items():
                for ep in cluster.endpoints:
                    values[(rt.name, env, ep.name)] = 1.0 if ep.usable(now) else 0.0
        return (({"listener": n, "env": e, "endpoint": ep}, v) for (n, e, ep), v in values.items())


@dataclass(eq=False)
class Connection:
    """A client connection being relayed (what drain and metrics need to see)."""

    env: str
    client: str
    endpoint: str
    scope: trio.CancelScope
    counters: RelayCounters = field(default_factory=RelayCounters)
    #: Set before cancelling ``scope``; the access log's outcome.
    cancel_reason: str = ""


#: A connect attempt begun before its task existed (the listener's task-less
#: path, handing over): endpoint, start time, socket still connecting, error.
FirstAttempt = tuple[EndpointState, float, socket.socket | None, OSError | None]


class _Detached:
    """A connection the splice hub relays with no task waiting for it (``_detach``).

    Its end (the hub's ``on_done``, or the reaper cutting it) does in one
    synchronous call what the task's ``finally`` blocks do on the task path.
    """

    __slots__ = (
        "attempts",
        "client",
        "cluster",
        "conn",
        "connect_time",
        "ep",
        "hub",
        "relay",
        "rt",
        "start",
        "upstream",
    )

    def __init__(
        self,
        rt: ListenerRuntime,
        conn: Connection,
        client: socket.socket,
        upstream: socket.socket,
        cluster: Cluster,
        ep: EndpointState,
        start: float,
        connect_time: float,
        hub: SpliceHub,
    ) -> None:
        self.rt = rt
        self.conn = conn
        self.client = client
        self.upstream = upstream
        self.cluster = cluster
        self.ep = ep
        self.start = start
        self.attempts = 1
        self.connect_time = connect_time
        self.hub = hub
        self.relay: HubConn | None = None

    def finished(self) -> None:
        """The hub's ``on_done`` (in the trio thread): the relay ended on its own."""
        relay = self.relay
        self.rt._end_detached(self, (relay.outcome if relay is not None else None) or "closed")


def bind_socket(
    host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024
) -> socket.socket:
    """Bind a listening socket synchronously, before trio starts.

    Binding before the event loop means "address in use" is reported as a
    one-line start-up error, and worker processes (SO_REUSEPORT) can bind the
    same port.
    """
    # bytes, not str: a str host loads the idna codec (and stringprep) for good.
    node: str | bytes = host.encode() if host.isascii() else host
    infos = socket.getaddrinfo(node, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def set_nodelay(stream: trio.abc.Stream) -> None:
    """Disable Nagle on the TCP socket under ``stream`` (a TLS stream's too).

    trio's ``SocketStream`` already does this; it is done here again on purpose
    so that a swapped relay or a stream from elsewhere never falls into the
    Nagle/delayed-ACK trap (40 ms stalls per small write on a keep-alive
    connection). Not a socket (memory streams in tests): nothing to do.
    """
    sock = getattr(stream, "socket", None)
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer(stream: trio.SocketStream) -> tuple[str, str]:
    """(ip, "ip:port") of the client; ("", "?") when the socket is already gone."""
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "", "?"
    return _format_peer(addr)


def _format_peer(addr: Any) -> tuple[str, str]:
    """(ip, "ip:port") from a socket address tuple; ("", "?") for anything else."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return "", "?"
    host, port = str(addr[0]), int(addr[1])
    return host, (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


async def _close(stream: trio.abc.AsyncResource) -> None:
    """Close ``stream`` now (a plain socket stream without a trip through the scheduler)."""
    if type(stream) is trio.SocketStream:
        stream.socket.close()
    else:
        await trio.aclose_forcefully(stream)


def _make_breaker(config: ListenerConfig) -> Breaker:
    limits = config.limits
    return Breaker(limits.max_connections, limits.max_pending, limits.pending_timeout)


class ListenerRuntime:
    """The running state of one listener: its clusters per environment, live connections."""

    def __init__(
        self,
        config: ListenerConfig,
        clusters: Mapping[str, Cluster],
        switch: EnvSwitch,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.name = config.name
        self.clusters: dict[str, Cluster] = dict(clusters)
        self.switch = switch
        self.metrics = metrics
        self.connections: set[Connection] = set()
        self.closed_bytes_in: dict[str, int] = {}
        self.closed_bytes_out: dict[str, int] = {}
        #: ``route()``'s answers by environment (see there).
        self._routes: dict[str, Route] = {}
        self.accepting = True
        self.breaker = _make_breaker(config)
        # Metric children per label set, looked up once (label checks cost per connection).
        self._counted: dict[tuple[str, str], CounterChild] = {}
        self._connect_timers: dict[str, HistogramChild] = {}
        self._idle = trio.Event()
        self._idle.set()
        #: Connections relayed with no task (``_detach``), and the one task that
        #: enforces their deadlines (drain, shutdown, idle timeout) and keeps the
        #: handler nursery open while any is left (``_reap``).
        self._loose: dict[Connection, _Detached] = {}
        self._reaping = False
        self._reap_wake: trio.Event | None = None
        #: When the reaper looks next by itself (trio time; inf: only when poked).
        self._reap_at = math.inf
        self._accept_loops = 0
        #: The hubs of the task-less connections (known after the first one).
        self._hubs: list[SpliceHub] = []
        #: ``open_upstream`` is ours (not a subclass's): plain TCP may take the
        #: synchronous connect in ``_connect``.
        self._plain_open = type(self).open_upstream is ListenerRuntime.open_upstream
        metrics.runtimes.append(self)
        #: The HTTP listener's proxy (``protocol = "http"``); None for TCP and PostgreSQL.
        self.http_proxy: HttpProxy | None = None
        if config.protocol == "http":
            from .http import HttpProxy

            self.http_proxy = HttpProxy(
                config.name,
                config.http,
                metrics.registry,
                self.route,
                connect_timeout=config.limits.connect_timeout,
                on_ejection=self._count_ejection,
            )

    def _count_ejection(self, env: str, ep: EndpointState) -> None:
        self.metrics.ejections.labels(listener=self.name, env=env, endpoint=ep.name).inc()

    def route(self) -> Route | None:
        """The HTTP proxy's per-request routing: the current environment's cluster and TLS."""
        env = self.switch.current
        if env is None:
            return None
        route = self._routes.get(env)
        if route is None:
            cluster = self.clusters.get(env)
            if cluster is None:
                return None
            from .http import Route

            # Built once per environment (called on every request); reconfigure clears it.
            route = self._routes[env] = Route(env, cluster, self.env_tls(env))
        return route

    def env_tls(self, env: str) -> UpstreamTLS | None:
        """The upstream TLS of ``env`` on this listener (resolved by the config)."""
        env_cfg = self.config.environments.get(env)
        return env_cfg.tls if env_cfg is not None else None

    async def aclose(self) -> None:
        """Release what outlives connections (the HTTP proxy's pooled upstream connections)."""
        if self.http_proxy is not None:
            await self.http_proxy.aclose()

    # ------------------------------------------------------------ reconfiguration

    def reconfigure(self, config: ListenerConfig, clusters: Mapping[str, Cluster]) -> None:
        """Apply a reloaded config (same name and address); open connections are untouched."""
        self.config = config
        self.clusters = dict(clusters)
        self._routes.clear()
        limits = config.limits
        self.breaker.max_connections = limits.max_connections
        self.breaker.max_pending = limits.max_pending
        self.breaker.pending_timeout = limits.pending_timeout
        if self.http_proxy is not None:
            # The proxy reads clusters per request through route(); timing follows the config.
            self.http_proxy.connect_timeout = limits.connect_timeout

    def has_usable(self, env: str | None) -> bool:
        cluster = self.clusters.get(env) if env is not None else None
        return cluster is not None and cluster.has_usable(trio.current_time())

    def drain_env(self, keep_env: str | None, timeout: float) -> int:
        """Close connections of other environments than ``keep_env`` after ``timeout`` seconds."""
        deadline = trio.current_time() + timeout
        n = 0
        if self.http_proxy is not None:
            # HTTP connections are not tied to an environment: each request is
            # routed when it arrives, so the next one already follows the switch.
            return 0
        for conn in self.connections:
            if conn.env != keep_env:
                if not conn.cancel_reason:
                    conn.cancel_reason = "drained"
                conn.scope.deadline = min(conn.scope.deadline, deadline)
                n += 1
        self._poke_reaper()
        return n

    def shutdown_after(self, timeout: float) -> None:
        """Graceful shutdown: connections still open after ``timeout`` are closed."""
        self.accepting = False
        if self.http_proxy is not None:
            # Idle keep-alive clients close now, busy ones after their response.
            self.http_proxy.start_drain()
        deadline = trio.current_time() + timeout
        for conn in self.connections:
            conn.cancel_reason = "shutdown"
            conn.scope.deadline = min(conn.scope.deadline, deadline)
        self._poke_reaper()

    async def wait_idle(self) -> None:
        """Return once no connection is open."""
        await self._idle.wait()

    # ------------------------------------------------------------ serving

    async def serve(
        self,
        sockets: list[socket.socket],
        *,
        handler_nursery: trio.Nursery,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on the bound ``sockets`` until cancelled; handlers run in ``handler_nursery``.

        Cancelling this stops accepting and closes the listening sockets; the
        connections live on in ``handler_nursery`` so a drain can let them finish.
        """
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
        try:
            async with trio.open_nursery() as nursery:
                for sock in sockets:
                    nursery.start_soon(self._accept_loop, sock, handler_nursery)
                task_status.started(listeners)
        finally:
            for listener in listeners:
                listener.socket.close()

    async def _accept_loop(self, sock: socket.socket, handler_nursery: trio.Nursery) -> None:
        """Accept every queued connection per wake-up, each with the peer address it came with.

        Leaner than ``trio.serve_listeners`` on the new-connection path (issue 4,
        ``pgbench -C``): one ``wait_readable`` per batch instead of two scheduler
        trips per accept, no ``getpeername`` (accept returns the address), and the
        handler closes its socket once instead of twice.
        """
        accept = sock.accept
        start = handler_nursery.start_soon
        handler = self._handle_accepted
        serve_now = self._serve_now
        self._accept_loops += 1
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                for hub in self._hubs:
                    if hub.ended:
                        hub.flush_ended()  # connections that ended since (no wake-up of theirs)
                for _ in range(ACCEPT_BATCH):
                    try:
                        conn, addr = accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in _IGNORED_ACCEPT_ERRNOS:
                            continue  # that client is gone already; the next one may not be
                        if exc.errno not in _CAPACITY_ERRNOS:
                            raise
                        log_event(
                            log,
                            "accept failed; retrying",
                            level=logging.ERROR,
                            listener=self.name,
                            error=f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc}",
                        )
                        await trio.sleep(ACCEPT_RETRY)
                        break
                    if serve_now(conn, addr, handler_nursery):
                        continue
                    try:
                        stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                        start(handler, stream, addr)
                    except BaseException:
                        conn.close()
                        raise
        finally:
            self._accept_loops -= 1
            if not self._accept_loops:
                self._poke_reaper()

    # ------------------------------------------------------------ the task-less path

    def _serve_now(self, sock: socket.socket, addr: Any, handler_nursery: trio.Nursery) -> bool:
        """Serve a just-accepted plain TCP client without a task, when nothing needs waiting.

        The common case of a new connection (issue 4, ``pgbench -C``): admitted
        at once, a plain endpoint whose loopback handshake is done when
        ``connect`` returns, relayed by the threaded splice hub. Then accept,
        admission, connect and the hand-over to the hub all happen here, in
        the accept loop, and the hub, which closes the sockets when the relay
        ends, leaves the rest of the end (``_end_detached``) for the accept loop
        to collect on its next wake-up: no task is started, resumed or finished
        for it, no cancel scope entered, the sockets are never wrapped for trio,
        and under a steady stream of connections trio is not woken for ends.
        Drain, shutdown and idle deadlines of such connections are kept by one
        reaper task per listener (``_reap``), which also keeps the handler
        nursery open while any is left: structured concurrency holds.

        False (nothing done, ``sock`` untouched) when the client needs the task
        path: HTTP, upstream TLS, an allow-list refusal, no environment, a full
        listener (pending queue), the stream or loop relay, shutting down. A
        connect that is still in progress or failed continues in a task
        (``_continue``) with the attempt already made.
        """
        if not self.accepting or self.http_proxy is not None or not self._plain_open:
            return False
        env = self.switch.current
        if env is None:
            return False
        cluster = self.clusters.get(env)
        if cluster is None or self.env_tls(env) is not None:
            return False
        client_ip, client = _format_peer(addr)
        allow = self.config.allow
        if allow and not address_allowed(client_ip, allow):
            return False
        hub = detached_available()
        if hub is None:
            return False
        breaker = self.breaker
        if not breaker.try_acquire():
            return False
        start = trio.current_time()
        ep = cluster.choose(start)
        if ep is None:
            breaker.release()
            return False
        # From here on the connection is ours: every way out ends it.
        cluster.connect_started(ep)
        first: FirstAttempt | None = None
        upstream: socket.socket | None = None
        try:
            started = connect_socket(ep.address)
        except OSError as exc:
            first = (ep, start, None, exc)
        else:
            if started is None:
                first = (ep, start, None, None)  # a host name: trio's resolver, in the task
            elif started[1]:
                upstream = started[0]
            else:
                first = (ep, start, started[0], None)
        try:
            sock.setblocking(False)
            if first is not None:
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                attempt: FirstAttempt = first
                handler_nursery.start_soon(
                    self._continue, stream, env, cluster, client, start, attempt
                )
                return True
            assert upstream is not None
            connect_time = self._connected(env, cluster, ep, start)
            self._detach(
                sock, upstream, env, cluster, ep, client, start, connect_time, hub, handler_nursery
            )
        except BaseException as exc:
            # ``setblocking`` refused (the client is gone already), or not
            # expected at all (the nursery is closed): end what was begun.
            sock.close()
            if first is not None and first[2] is not None:
                first[2].close()
            if upstream is not None:
                upstream.close()
            cluster.connection_closed(ep)
            breaker.release()
            if not isinstance(exc, OSError):
                raise
            self._ended(env, client, "error", start)
            self._connection_error(client, exc)
        return True

    async def _continue(
        self,
        stream: trio.SocketStream,
        env: str,
        cluster: Cluster,
        client: str,
        start: float,
        first: FirstAttempt,
    ) -> None:
        """The task path from a connect attempt ``_serve_now`` began (connecting or failed)."""
        try:
            try:
                await self._serve_admitted(stream, env, cluster, client, start, first)
            finally:
                self.breaker.release()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._connection_error(client, exc)
        finally:
            await _close(stream)

    def _connection_error(self, client: str, exc: BaseException) -> None:
        """Safety net: one client's I/O trouble is logged, never takes the accept loop down."""
        log_event(
            log,
            "connection error",
            level=logging.WARNING,
            listener=self.name,
            client=client,
            error=f"{type(exc).__name__}: {exc}",
        )

    def _detach(
        self,
        client_sock: socket.socket,
        upstream: socket.socket,
        env: str,
        cluster: Cluster,
        ep: EndpointState,
        client: str,
        start: float,
        connect_time: float,
        hub: SpliceHub,
        handler_nursery: trio.Nursery,
    ) -> None:
        """Hand an admitted, connected pair to the hub; ``_end_detached`` ends it."""
        # Nagle off, as trio's SocketStream sets it (these are bare sockets); not
        # trio's 16 KiB TCP_NOTSENT_LOWAT, which the hub undoes for streams too
        # (see fastrelay._unlimit_unsent).
        # (OSError: the client gone already; trio ignores it too.)
        for sock in (client_sock, upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._reaping:
            # (Raises when the nursery is closed: nothing is tracked yet.)
            handler_nursery.start_soon(self._reap)
            self._reaping = True
        conn = Connection(env=env, client=client, endpoint=ep.name, scope=trio.CancelScope())
        d = _Detached(self, conn, client_sock, upstream, cluster, ep, start, connect_time, hub)
        if not self._hubs:
            self._hubs = hubs()
        self._track(conn)
        self._loose[conn] = d
        try:
            d.relay = hub.add(client_sock, upstream, conn.counters, d.finished)
        except OSError:
            self._end_detached(d, "error")
            return
        if self._reap_at == math.inf and self.config.limits.idle_timeout is not None:
            self._poke_reaper()  # the reaper sleeps with no deadline: it has one now

    def _end_detached(self, d: _Detached, outcome: str) -> None:
        """A task-less connection is over: what the task path's ``finally`` blocks do.

        Idempotent (the hub's callback and the reaper may both get here).
        """
        conn = d.conn
        if self._loose.pop(conn, None) is None:
            return
        try:
            d.upstream.close()
            d.client.close()
            d.cluster.connection_closed(d.ep)
            self.breaker.release()
            env = conn.env
            counters = conn.counters
            self._keep_bytes(env, counters)
            self._ended(
                env,
                conn.client,
                outcome,
                d.start,
                endpoint=conn.endpoint,
                attempts=d.attempts,
                connect_time=round(d.connect_time, 6),
                bytes_in=counters.bytes_in,
                bytes_out=counters.bytes_out,
            )
        finally:
            self._untrack(conn)
            if not self._loose and not self._accept_loops:
                self._poke_reaper()

    def _poke_reaper(self) -> None:
        """Deadlines changed, or the reaper may be done: let it look again."""
        wake = self._reap_wake
        if wake is not None:
            wake.set()

    async def _reap(self) -> None:
        """Enforce task-less connections' deadlines; last while they or an accept loop do.

        It runs in the handler nursery, so that nursery (and the app's drain)
        waits for every task-less connection as it waits for the tasks. If it
        is cancelled, the connections end with it (as their tasks would).
        """
        try:
            while self._loose or self._accept_loops:
                wake = self._reap_wake = trio.Event()
                self._reap_at = self._next_reap()
                with trio.CancelScope(deadline=self._reap_at):
                    await wake.wait()
                self._reap_due()
        finally:
            self._reaping = False
            self._reap_wake = None
            self._reap_at = math.inf
            for d in list(self._loose.values()):
                if d.relay is not None:
                    d.hub.cut(d.relay, "closed")
                self._end_detached(d, d.conn.cancel_reason or "error")

    def _next_reap(self) -> float:
        """The trio time of the earliest drain/shutdown deadline or idle timeout (inf: none)."""
        deadline = math.inf
        idle = self.config.limits.idle_timeout
        last = math.inf
        for conn, d in self._loose.items():
            deadline = min(deadline, conn.scope.deadline)
            if idle is not None and d.relay is not None:
                last = min(last, d.hub.idle_since(d.relay))
        if last != math.inf and idle is not None:
            deadline = min(deadline, trio.current_time() + last + idle - time.perf_counter())
        return deadline

    def _reap_due(self) -> None:
        """End the task-less connections whose deadline or idle timeout has passed."""
        now = trio.current_time()
        idle = self.config.limits.idle_timeout
        perf = time.perf_counter()
        for conn, d in list(self._loose.items()):
            relay = d.relay
            if relay is None:
                continue
            if conn.scope.deadline <= now:
                reason = conn.cancel_reason or "cancelled"
                if d.hub.cut(relay, "closed"):
                    abort_stream(d.client)
                    abort_stream(d.upstream)
                    self._end_detached(d, reason)
            elif (
                idle is not None
                and d.hub.idle_since(relay) + idle <= perf
                and d.hub.cut(relay, "idle_timeout")
            ):
                self._end_detached(d, "idle_timeout")

    def _keep_bytes(self, env: str, counters: RelayCounters) -> None:
        """An ended connection's bytes stay in the byte totals (live ones are read on scrape)."""
        self.closed_bytes_in[env] = self.closed_bytes_in.get(env, 0) + counters.bytes_in
        self.closed_bytes_out[env] = self.closed_bytes_out.get(env, 0) + counters.bytes_out

    def _count(self, env: str, outcome: str) -> None:
        child = self._counted.get((env, outcome))
        if child is None:
            child = self.metrics.connections.labels(listener=self.name, env=env, outcome=outcome)
            self._counted[(env, outcome)] = child
        child.inc()

    def _log(self, **fields: Any) -> None:
        log_event(access_log, "connection", listener=self.name, **fields)

    def _ended(
        self, env: str, client: str, outcome: str, start: float | None = None, **fields: Any
    ) -> None:
        """A connection is over: count its outcome and write its access-log line.

        ``start`` None: it ended at accept (duration 0).
        """
        self._count(env, outcome)
        duration = 0.0 if start is None else round(trio.current_time() - start, 6)
        self._log(env=env, client=client, outcome=outcome, duration=duration, **fields)

    @contextlib.contextmanager
    def _tracked(self, conn: Connection) -> Iterator[Connection]:
        """``conn`` is open (drain, shutdown and the live metrics see it) while inside."""
        self._track(conn)
        try:
            yield conn
        finally:
            self._untrack(conn)

    def _track(self, conn: Connection) -> None:
        self.connections.add(conn)
        if self._idle.is_set():
            self._idle = trio.Event()

    def _untrack(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._idle.set()

    async def _admit(self) -> str | None:
        """Listener circuit breaker with a bounded pending queue; None when admitted.

        Over ``max_connections``, up to ``max_pending`` clients wait (FIFO) up to
        ``pending_timeout`` for a slot; the rest are refused at once.
        """
        breaker = self.breaker
        if breaker.try_acquire():
            return None
        granted = trio.Event()
        waiter = breaker.enqueue(granted.set)
        if waiter is None:
            return "rejected"
        try:
            with trio.move_on_after(breaker.pending_timeout):
                await granted.wait()
        finally:
            if not waiter.granted:
                breaker.abandon(waiter)
        return None if waiter.granted else "pending_timeout"

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one client connection from accept to close (never raises on I/O errors)."""
        await self._handle_accepted(stream, None)

    async def _handle_accepted(self, stream: trio.SocketStream, addr: Any) -> None:
        """``handle`` with the peer address ``accept`` returned (None: ask the socket)."""
        start = trio.current_time()
        client_ip, client = _peer(stream) if addr is None else _format_peer(addr)
        if type(stream) is not trio.SocketStream:
            set_nodelay(stream)  # (trio's SocketStream sets TCP_NODELAY itself)
        env = self.switch.current
        env_label = env or ""
        try:
            if not self.accepting:
                # Accepted just before the listening socket closed: refuse, do not start.
                self._ended(env_label, client, "shutdown")
                return
            if self.config.allow and not address_allowed(client_ip, self.config.allow):
                self._ended(env_label, client, "denied")
                log_event(
                    log,
                    "client not in allow list",
                    level=logging.WARNING,
                    listener=self.name,
                    client=client,
                )
                return
            cluster = self.clusters.get(env) if env is not None else None
            if (env is None or cluster is None) and self.http_proxy is None:
                # (An HTTP client gets a 503 with a JSON body from the proxy instead.)
                self._ended(env_label, client, "no_env")
                return
            refused = await self._admit()
            if refused is not None:
                self.metrics.breaker_rejections.labels(listener=self.name, scope="listener").inc()
                self._ended(env_label, client, refused, start)
                return
            try:
                if self.http_proxy is not None:
                    await self._serve_http(stream, self.http_proxy, client, start)
                    return
                # A client that waited in the pending queue goes where the switch
                # points now, not where it pointed when it arrived.
                env = self.switch.current
                cluster = self.clusters.get(env) if env is not None else None
                if env is None or cluster is None:
                    self._ended(env or "", client, "no_env")
                    return
                await self._serve_admitted(stream, env, cluster, client, start)
            finally:
                self.breaker.release()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._connection_error(client, exc)
        finally:
            await _close(stream)

    async def _serve_http(
        self, stream: trio.SocketStream, proxy: HttpProxy, client: str, start: float
    ) -> None:
        """An admitted HTTP client: the proxy serves its requests (one access-log line each).

        The ``Connection`` bookkeeping stays, so drain and shutdown deadlines
        cut a connection that outlives them; the per-connection outcome is
        counted (``ambassador_connections_total``) but not logged: the
        per-request lines say more.
        """
        env = self.switch.current or ""
        conn = Connection(env=env, client=client, endpoint="", scope=trio.CancelScope())
        outcome = "closed"
        from .http import serve_http_client

        try:
            with self._tracked(conn), conn.scope:
                await serve_http_client(stream, proxy, client, conn.counters)
            if conn.scope.cancelled_caught:
                outcome = conn.cancel_reason or "cancelled"
                abort_stream(stream)
        finally:
            self._count(env, outcome)
            self._keep_bytes(env, conn.counters)

    async def open_upstream(
        self, address: tuple[str, int], tls: UpstreamTLS | None = None
    ) -> trio.abc.HalfCloseableStream:
        """Open the stream to one endpoint; the caller bounds it with the connect timeout.

        The one place a connection to a backend is made: plain TCP, TLS, or
        PostgreSQL's SSLRequest negotiation (``ambassador.tls.open_upstream``).
        Any ``OSError`` it raises (``UpstreamTLSError`` included: a certificate
        that does not verify) counts as a failed connect: retried on the next
        endpoint and reported to outlier detection.
        """
        protocol = "postgres" if self.config.protocol == "postgres" else "tcp"
        stream = await upstream_tls.open_upstream(address, tls, protocol)
        set_nodelay(stream)
        return stream

    async def _connect(
        self, env: str, cluster: Cluster, first: FirstAttempt | None = None
    ) -> tuple[trio.abc.HalfCloseableStream | None, EndpointState | None, str, int, float]:
        """Connect to an endpoint with bounded retries; (stream, ep, outcome, attempts, seconds).

        ``first``: an attempt already begun (``_serve_now``), counted as the first.
        """
        limits = self.config.limits
        tried: set[tuple[str, int]] = set()
        attempts = 0
        outcome = "no_endpoint"
        connect_time = 0.0
        tls = self.env_tls(env)
        plain = tls is None and self._plain_open
        while attempts < limits.connect_attempts:
            begun: socket.socket | None = None
            failed: OSError | None = None
            if first is not None:
                ep, t0, begun, failed = first
                first = None
            else:
                now = trio.current_time()
                chosen = cluster.choose(now, exclude=tried)
                if chosen is None:
                    if attempts == 0 and any(e.usable(now) for e in cluster.endpoints):
                        # Usable endpoints exist but all are at their connection limit.
                        outcome = "rejected"
                        self.metrics.breaker_rejections.labels(
                            listener=self.name, scope="endpoint"
                        ).inc()
                    break
                ep = chosen
                cluster.connect_started(ep)
                t0 = trio.current_time()
            attempts += 1
            tried.add(ep.address)
            try:
                opened: trio.abc.HalfCloseableStream | None = None
                if failed is not None:
                    raise failed
                # A plain connect that completes at once (loopback, the common
                # case) needs no cancel scope: entering and leaving one with a
                # deadline is trio bookkeeping on every new connection.
                started: trio.SocketStream | socket.socket | None = begun
                if started is None and plain:
                    started = start_tcp(ep.address)
                if type(started) is trio.SocketStream:
                    opened = started
                else:
                    # ``fail_after`` without its generator-based context manager:
                    # the same scope, TooSlowError by hand.
                    with trio.CancelScope(deadline=t0 + limits.connect_timeout):
                        if isinstance(started, socket.socket):
                            opened = await finish_tcp(started, ep.address)
                        else:
                            opened = await self.open_upstream(ep.address, tls)
                if opened is None:
                    raise trio.TooSlowError
                upstream = opened
            except (OSError, trio.TooSlowError) as exc:
                now = trio.current_time()
                ejected = cluster.connect_failed(ep, now)
                outcome = "connect_failed"
                reason = "timeout" if isinstance(exc, trio.TooSlowError) else str(exc)
                log_event(
                    log,
                    "connect failed",
                    level=logging.WARNING,
                    listener=self.name,
                    env=env,
                    endpoint=ep.name,
                    attempt=attempts,
                    reason=reason,
                    ejected=ejected,
                )
                if ejected:
                    self.metrics.ejections.labels(
                        listener=self.name, env=env, endpoint=ep.name
                    ).inc()
                    log_event(
                        log,
                        "endpoint ejected",
                        level=logging.WARNING,
                        listener=self.name,
                        env=env,
                        endpoint=ep.name,
                        until=round(ep.ejected_until - now, 3),
                    )
                continue
            except BaseException:
                # Cancelled mid-connect (shutdown): give the slot back without
                # counting a failure against the endpoint.
                cluster.connection_closed(ep)
                raise
            connect_time = self._connected(env, cluster, ep, t0)
            return upstream, ep, "connected", attempts, connect_time
        return None, None, outcome, attempts, connect_time

    def _connected(self, env: str, cluster: Cluster, ep: EndpointState, t0: float) -> float:
        """A connect begun at ``t0`` succeeded: the balancer and the histogram hear of it."""
        now = trio.current_time()
        connect_time = now - t0
        cluster.connect_succeeded(ep, connect_time, now)
        timer = self._connect_timers.get(env)
        if timer is None:
            timer = self.metrics.connect_duration.labels(listener=self.name, env=env)
            self._connect_timers[env] = timer
        timer.observe(connect_time)
        return connect_time

    async def _read_pg_startup(
        self, stream: trio.abc.HalfCloseableStream, env: str, client: str, start: float
    ) -> bytes | None:
        """PostgreSQL with upstream TLS: the app's startup packet, read before connecting.

        The app's SSLRequest is answered 'N' (plaintext on localhost); the
        ambassador negotiates TLS with the server itself. None when the app
        left, was silent past the connect timeout, or is not PostgreSQL (all
        counted and logged here).
        """
        outcome = ""
        startup = b""
        with trio.move_on_after(self.config.limits.connect_timeout) as scope:
            try:
                startup = await read_client_startup(stream)
            except PgStartupError as exc:
                outcome = "bad_request"
                log_event(
                    log,
                    "not a PostgreSQL client",
                    level=logging.WARNING,
                    listener=self.name,
                    client=client,
                    reason=str(exc),
                )
        if scope.cancelled_caught:
            outcome = "client_timeout"
        elif not outcome and not startup:
            outcome = "client_gone"
        if outcome:
            self._ended(env, client, outcome, start)
            return None
        return startup

    async def _serve_admitted(
        self,
        stream: trio.abc.HalfCloseableStream,
        env: str,
        cluster: Cluster,
        client: str,
        start: float,
        first: FirstAttempt | None = None,
    ) -> None:
        startup = b""
        if self.config.protocol == "postgres" and self.env_tls(env) is not None:
            got = await self._read_pg_startup(stream, env, client, start)
            if got is None:
                return
            startup = got
        upstream, ep, outcome, attempts, connect_time = await self._connect(env, cluster, first)
        if upstream is None or ep is None:
            # Fail fast: RST rather than FIN, so a client reading a reply sees
            # an error at once and not an empty answer.
            abort_stream(stream)
            self._ended(env, client, outcome, start, attempts=attempts)
            return
        conn = Connection(env=env, client=client, endpoint=ep.name, scope=trio.CancelScope())
        result_outcome = "error"
        # (``_tracked`` inlined: this runs once per connection.)
        self._track(conn)
        try:
            with conn.scope:
                sent = True
                if startup:
                    try:
                        await upstream.send_all(startup)
                        conn.counters.bytes_in += len(startup)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        sent = False
                        result_outcome = "upstream_reset"
                        abort_stream(stream)
                if sent:
                    result = await relay(
                        stream,
                        upstream,
                        conn.counters,
                        idle_timeout=self.config.limits.idle_timeout,
                    )
                    result_outcome = result.outcome
            if conn.scope.cancelled_caught:
                result_outcome = conn.cancel_reason or "cancelled"
                abort_stream(stream)
                abort_stream(upstream)
        finally:
            try:
                if result_outcome == "error" and conn.cancel_reason:
                    result_outcome = conn.cancel_reason
                await _close(upstream)
                cluster.connection_closed(ep)
                counters = conn.counters
                self._keep_bytes(env, counters)
                self._ended(
                    env,
                    client,
                    result_outcome,
                    start,
                    endpoint=ep.name,
                    attempts=attempts,
                    connect_time=round(connect_time, 6),
                    bytes_in=counters.bytes_in,
                    bytes_out=counters.bytes_out,
                )
            finally:
                self._untrack(conn)
