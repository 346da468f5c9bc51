"""Active health checks: probe each endpoint, feed the results to the cluster.

The probes are small trio functions that either return (healthy) or raise
``HealthCheckFailed`` with a reason for the log; foreign errors (OS, h11,
asyncpg) are translated here, once. None of them has a timeout of its own:
``run_health_checks`` bounds every probe with a cancel scope, and a probe that
runs out of time counts as a failure.

- TCP: the endpoint accepts a connection.
- HTTP: ``GET path`` answers ``expect_status`` (the body is not read).
- PostgreSQL: asyncpg connects, asks ``SELECT pg_is_in_recovery()``, and the
  answer must fit the role filter: ``primary`` wants False, ``replica`` wants
  True, ``any`` takes both. A listener with ``role = "primary"`` over all the
  members of a replicated cluster thus follows the primary after a failover.
  asyncpg is asyncio-only; it runs on the ``pgbridge`` loop.

asyncpg, asyncio and the bridge are imported only on the postgres path (about
4.5 MB of resident memory that a process without a PostgreSQL check never
needs).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, NoReturn, Protocol

import trio

from sidecar_common.httpclient import HttpClientError, open_stream

from .cluster import Cluster
from .endpoint import Address, EndpointState
from .errors import HealthCheckFailed
from .health import Transition
from .tcp import open_tcp

if TYPE_CHECKING:
    from .pgbridge import AsyncioBridge

Role = Literal["primary", "replica", "any"]
Probe = Callable[[Address], Awaitable[None]]
OnTransition = Callable[[EndpointState, Transition], object]


def _pg_errors() -> tuple[type[Exception], ...]:
    """asyncpg errors that mean "this server is not usable now" (connect refused,
    authentication, shutting down, protocol trouble). Anything else is a bug."""
    import asyncpg

    return (
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
    )


class HealthCheckSpec(Protocol):
    """What the checker reads of the shell's ``config.HealthCheckConfig``."""

    @property
    def type(self) -> str: ...  # "none" | "tcp" | "http" | "postgres"
    @property
    def interval(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def role(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def password(self) -> str | None: ...
    @property
    def database(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def expect_status(self) -> int: ...
    @property
    def host(self) -> str | None: ...


def _shown(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def check_tcp(address: Address) -> None:
    """The endpoint accepts a TCP connection (closed again at once).

    An IP address (what discovery hands over) is connected with one socket
    (``ambassador.tcp.open_tcp``): no resolver call and no happy-eyeballs
    nursery, so a probe allocates little (probes of many endpoints run at
    once, and what they allocate fragments the heap).
    """
    try:
        stream = await open_tcp(address)
    except OSError as exc:
        raise HealthCheckFailed(f"tcp connect to {_shown(address)} failed: {exc}") from exc
    stream.socket.close()


async def check_http(
    address: Address, path: str = "/", expect_status: int = 200, host: str | None = None
) -> None:
    """``GET path`` answers ``expect_status``; ``host`` overrides the Host header."""
    if not path.startswith("/"):
        path = "/" + path
    url = f"http://{_shown(address)}{path}"
    headers = [("host", host)] if host else []
    try:
        async with open_stream("GET", url, headers=headers) as response:
            status = response.status
    except HttpClientError as exc:
        raise HealthCheckFailed(f"http GET {url} failed: {exc}") from exc
    if status != expect_status:
        raise HealthCheckFailed(f"http GET {url} answered {status}, expected {expect_status}")


async def _pg_in_recovery(
    host: str, port: int, user: str, password: str | None, database: str
) -> bool:
    """Runs on the asyncio loop: connect, ask, close (terminate if cancelled or broken)."""
    import asyncpg

    conn = await asyncpg.connect(
        host=host,
        port=port,
        user=user,
        password=password,
        database=database,
        # No timeout of our own: the trio caller's cancel scope bounds the probe.
        timeout=3600.0,
        statement_cache_size=0,
        server_settings={"application_name": "ambassador-healthcheck"},
    )
    answered = False
    try:
        in_recovery = bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
        answered = True
    finally:
        if not answered:
            conn.terminate()  # cancelled or broken: drop it, do not wait on the server
    await conn.close()  # a polite Terminate, so the server logs no "unexpected EOF"
    return in_recovery


async def check_postgres(
    address: Address,
    *,
    role: Role | str = "any",
    user: str = "postgres",
    password: str | None = None,
    database: str = "postgres",
    bridge: AsyncioBridge,
) -> None:
    """The server answers queries, and its recovery state fits ``role``."""
    host, port = address
    pg_errors = _pg_errors()
    try:
        in_recovery = await bridge.run(
            lambda: _pg_in_recovery(host, port, user, password, database)
        )
    except pg_errors as exc:
        raise HealthCheckFailed(f"postgres {_shown(address)}: {type(exc).__name__}: {exc}") from exc
    if role == "primary" and in_recovery:
        raise HealthCheckFailed(f"postgres {_shown(address)} is in recovery (a replica)")
    if role == "replica" and not in_recovery:
        raise HealthCheckFailed(f"postgres {_shown(address)} is not in recovery (a primary)")


def make_probe(check: HealthCheckSpec, bridge: AsyncioBridge | None = None) -> Probe:
    """The probe function for ``check.type`` (``postgres`` needs a bridge)."""
    kind = check.type
    if kind == "tcp":
        return check_tcp
    if kind == "http":
        path, status, host = check.path, check.expect_status, check.host

        async def http_probe(address: Address) -> None:
            await check_http(address, path, status, host)

        return http_probe
    if kind == "postgres":
        if bridge is None:
            raise ValueError("a postgres health check needs an asyncio bridge")
        pg_bridge = bridge
        role, user, password, database = check.role, check.user, check.password, check.database

        async def pg_probe(address: Address) -> None:
            await check_postgres(
                address,
                role=role,
                user=user,
                password=password,
                database=database,
                bridge=pg_bridge,
            )

        return pg_probe
    raise ValueError(f"no probe for health check type {kind!r}")


async def probe_once(probe: Probe, address: Address, time_limit: float) -> tuple[bool, str]:
    """Run one probe bounded by ``time_limit`` seconds: (ok, reason)."""
    with trio.move_on_after(time_limit) as scope:
        try:
            await probe(address)
        except HealthCheckFailed as exc:
            return False, exc.reason
    if scope.cancelled_caught:
        return False, f"no answer from {_shown(address)} within {time_limit:g}s"
    return True, ""


class ProbeSchedule:
    """When each endpoint is next due for a probe: the pure part of the check loop.

    Why not a task per endpoint sleeping between probes: a sleeping trio task
    holds its frames, cancel scopes and timer (about 8 KiB), so idle memory grew
    with every configured endpoint. Here an idle endpoint is one heap entry; a
    probe task exists only while a probe runs. Entries are removed lazily: a
    popped entry counts only if it is still the endpoint's current one.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Address]] = []
        self._current: dict[Address, int] = {}
        self._seq = 0

    def __contains__(self, address: object) -> bool:
        return address in self._current

    def __len__(self) -> int:
        return len(self._current)

    def add(self, address: Address, at: float) -> None:
        """Due at ``at`` (replaces an earlier entry of the same address)."""
        self._seq += 1
        self._current[address] = self._seq
        heapq.heappush(self._heap, (at, self._seq, address))

    def remove(self, address: Address) -> None:
        self._current.pop(address, None)

    def next_due(self) -> float:
        """The earliest due time (``inf`` when nothing is scheduled)."""
        heap = self._heap
        while heap and self._current.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)  # removed or replaced
        return heap[0][0] if heap else math.inf

    def pop_due(self, now: float) -> list[Address]:
        """The addresses due at ``now``, earliest first; they leave the schedule."""
        due: list[Address] = []
        while self.next_due() <= now:
            _at, _seq, address = heapq.heappop(self._heap)
            del self._current[address]
            due.append(address)
        return due


async def _supervise(
    cluster: Cluster,
    check: HealthCheckSpec,
    probe: Probe,
    on_transition: OnTransition,
    rng: random.Random,
    jitter: float,
) -> NoReturn:
    """Probe every endpoint of ``cluster``, following its address changes.

    The first probe of an endpoint runs within ``jitter`` x ``interval``; the next
    one ``interval`` (plus up to ``jitter`` of it) after the previous probe ended.
    A probe runs in its own short-lived task; an endpoint that leaves the cluster
    has its running probe cancelled and its result dropped.
    """
    schedule = ProbeSchedule()
    tracked: dict[Address, EndpointState] = {}
    running: dict[Address, trio.CancelScope] = {}
    wake = [trio.Event()]

    def on_change() -> None:
        wake[0].set()

    async def run_probe(ep: EndpointState, scope: trio.CancelScope) -> None:
        with scope:
            ok, reason = await probe_once(probe, ep.address, check.timeout)
            now = trio.current_time()
            transition = cluster.health_result(ep, ok, now, reason)
            if transition is not None:
                on_transition(ep, transition)
            if running.get(ep.address) is scope:
                del running[ep.address]
            if tracked.get(ep.address) is ep:
                # Jitter spreads the probes of many endpoints (and many pods) apart.
                schedule.add(ep.address, now + check.interval * (1.0 + jitter * rng.random()))
                wake[0].set()

    unsubscribe = cluster.watch(on_change)
    try:
        async with trio.open_nursery() as nursery:
            while True:
                current = {ep.address: ep for ep in cluster.endpoints}
                now = trio.current_time()
                for address, ep in list(tracked.items()):
                    if current.get(address) is not ep:
                        del tracked[address]
                        schedule.remove(address)
                        scope = running.pop(address, None)
                        if scope is not None:
                            scope.cancel()
                for address, ep in current.items():
                    if address not in tracked:
                        tracked[address] = ep
                        # Spread the first probes too: a burst of them all at once leaves
                        # the heap fragmented (measured: +2 MiB idle RSS at 400 endpoints).
                        schedule.add(address, now + check.interval * jitter * rng.random())
                for address in schedule.pop_due(now):
                    scope = trio.CancelScope()
                    running[address] = scope
                    nursery.start_soon(run_probe, tracked[address], scope)
                with trio.move_on_at(schedule.next_due()):
                    await wake[0].wait()
                if wake[0].is_set():
                    wake[0] = trio.Event()
    finally:
        unsubscribe()
    raise AssertionError("unreachable")  # pragma: no cover


async def run_health_checks(
    cluster: Cluster,
    check: HealthCheckSpec,
    *,
    on_transition: OnTransition,
    bridge: AsyncioBridge | None = None,
    rng: random.Random | None = None,
    jitter: float = 0.1,
    probe: Probe | None = None,
) -> NoReturn:
    """Probe every endpoint of ``cluster`` every ``check.interval``; never returns.

    The first probe of an endpoint runs within ``jitter`` x ``interval`` (at
    once with ``jitter=0``), so that many endpoints are not probed in one burst;
    later ones ``interval`` plus up to ``jitter`` of it after the previous one
    ended. Each probe is bounded by ``check.timeout``. Health
    transitions go to the cluster and then to ``on_transition(ep, transition)``.
    ``type = "none"`` just sleeps. A postgres check without a ``bridge`` opens
    its own for as long as this runs. ``probe`` replaces the probe ``check.type``
    names (a custom check, or a scripted one in tests).
    """
    rng = rng if rng is not None else random.Random()
    if probe is not None:
        await _supervise(cluster, check, probe, on_transition, rng, jitter)
    if check.type == "none":
        await trio.sleep_forever()
    if check.type == "postgres" and bridge is None:
        from .pgbridge import open_asyncio_bridge

        async with open_asyncio_bridge() as own:
            await _supervise(cluster, check, make_probe(check, own), on_transition, rng, jitter)
    await _supervise(cluster, check, make_probe(check, bridge), on_transition, rng, jitter)
