"""Health checks against real servers (trio TCP, an h11 HTTP server, real PostgreSQL),
and the per-endpoint check loop on virtual time with scripted probes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import pytest
import trio
import trio.testing

from ambassador.cluster import Cluster
from ambassador.config import HealthCheckConfig
from ambassador.endpoint import Address, EndpointState
from ambassador.errors import HealthCheckFailed
from ambassador.health import HealthConfig, Transition
from ambassador.healthcheck import (
    ProbeSchedule,
    check_http,
    check_postgres,
    check_tcp,
    make_probe,
    probe_once,
    run_health_checks,
)
from ambassador.pgbridge import AsyncioBridge, open_asyncio_bridge
from tests.support.procs import free_port

# -- real servers ---------------------------------------------------------------------------


async def start_server(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> tuple[Address, trio.CancelScope]:
    """Serve ``handler`` on 127.0.0.1:<free>; cancel the returned scope to stop it."""
    scope = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await trio.serve_tcp(handler, 0, host="127.0.0.1", task_status=task_status)

    listeners = await nursery.start(serve)
    return ("127.0.0.1", listeners[0].socket.getsockname()[1]), scope


async def close_at_once(stream: trio.SocketStream) -> None:
    await stream.aclose()


async def never_answer(stream: trio.SocketStream) -> None:
    """Accepts and then says nothing, like a wedged server."""
    await trio.sleep_forever()


class Watch:
    """``on_transition`` callback that records transitions and wakes waiters."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen: list[tuple[Address, bool]] = []
        self._changed = trio.Event()

    def __call__(self, ep: EndpointState, transition: Transition) -> None:
        self.seen.append((ep.address, transition.healthy))
        self._changed.set()
        self._changed = trio.Event()

    async def until_usable(self, expected: list[Address], limit: float) -> None:
        with trio.fail_after(limit):
            while [ep.address for ep in self.cluster.usable(trio.current_time())] != expected:
                await self._changed.wait()


class HttpServer:
    """A small h11 server: /healthz 200, /sick 503, anything else 404; records Host headers."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    async def __call__(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        assert request is not None
        self.hosts += [v.decode() for k, v in request.headers if k == b"host"]
        status = {b"/healthz": 200, b"/sick": 503}.get(request.target, 404)
        body = b"x" * 100_000  # a body the checker need not read
        out = conn.send(
            h11.Response(
                status_code=status,
                headers=[("content-length", str(len(body))), ("connection", "close")],
            )
        )
        out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
        out += conn.send(h11.EndOfMessage()) or b""
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(out)  # the checker may hang up after the head: fine
        await stream.aclose()


async def test_tcp_check(nursery: trio.Nursery) -> None:
    up, _ = await start_server(nursery, close_at_once)
    await check_tcp(up)
    refused = ("127.0.0.1", free_port())
    with pytest.raises(HealthCheckFailed, match=r"tcp connect to 127\.0\.0\.1"):
        await check_tcp(refused)
    # A host name goes through the resolver (open_tcp_stream); an IP is one socket.
    await check_tcp(("localhost", up[1]))
    with pytest.raises(HealthCheckFailed, match=r"tcp connect to localhost:"):
        await check_tcp(("localhost", refused[1]))
    with pytest.raises(HealthCheckFailed, match=r"tcp connect to \[::1\]:"):
        await check_tcp(("::1", refused[1]))  # IPv6: refused, or no IPv6 at all


async def test_http_check(nursery: trio.Nursery) -> None:
    server = HttpServer()
    address, _ = await start_server(nursery, server)
    await check_http(address, "/healthz")
    await check_http(address, "healthz", host="api.internal")
    assert server.hosts == [f"127.0.0.1:{address[1]}", "api.internal"]
    with pytest.raises(HealthCheckFailed, match="answered 503, expected 200"):
        await check_http(address, "/sick")
    await check_http(address, "/sick", expect_status=503)
    with pytest.raises(HealthCheckFailed, match="answered 404"):
        await check_http(address, "/nope")
    with pytest.raises(HealthCheckFailed, match="failed"):
        await check_http(("127.0.0.1", free_port()), "/healthz")


async def test_a_hanging_server_fails_by_the_time_limit(nursery: trio.Nursery) -> None:
    address, _ = await start_server(nursery, never_answer)
    server = HttpServer()
    ok_address, _ = await start_server(nursery, server)
    probe = make_probe(HealthCheckConfig(type="http", path="/healthz"))
    assert await probe_once(probe, address, 0.1) == (
        False,
        f"no answer from 127.0.0.1:{address[1]} within 0.1s",
    )
    assert await probe_once(probe, ok_address, 5.0) == (True, "")


async def task_count(bridge: AsyncioBridge) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    return await bridge.run(count)


async def test_postgres_check_against_a_wedged_server_is_cancelled_cleanly(
    nursery: trio.Nursery,
) -> None:
    """A trio cancel scope stops an asyncpg connect that will never finish; the loop lives on."""
    wedged, _ = await start_server(nursery, never_answer)
    async with open_asyncio_bridge() as bridge:
        probe = make_probe(HealthCheckConfig(type="postgres"), bridge)
        results = []
        async with trio.open_nursery() as checks:
            for _ in range(10):

                async def one() -> None:
                    results.append(await probe_once(probe, wedged, 0.2))

                checks.start_soon(one)
        assert results == [(False, f"no answer from 127.0.0.1:{wedged[1]} within 0.2s")] * 10
        # Every asyncio task was cancelled and is gone (only the counting task remains).
        with trio.fail_after(10):
            # (polling: the state lives in the asyncio thread, no trio event to wait on)
            while await task_count(bridge) != 1:  # noqa: ASYNC110
                await trio.sleep(0.01)
        # ...and the loop still works: a refused port is an ordinary failure.
        with pytest.raises(HealthCheckFailed, match=r"postgres 127\.0\.0\.1"):
            await check_postgres(("127.0.0.1", free_port()), bridge=bridge)


@pytest.mark.slow
async def test_postgres_role_filter_and_failover(pg_factory: Any) -> None:
    primary = await trio.to_thread.run_sync(pg_factory, "hc-primary")
    replica = await trio.to_thread.run_sync(primary.make_replica, "hc-replica")
    try:
        p: Address = (primary.host, primary.port)
        r: Address = (replica.host, replica.port)
        async with open_asyncio_bridge() as bridge:
            await check_postgres(p, role="primary", bridge=bridge)
            await check_postgres(p, role="any", bridge=bridge)
            with pytest.raises(HealthCheckFailed, match="not in recovery"):
                await check_postgres(p, role="replica", bridge=bridge)
            await check_postgres(r, role="replica", bridge=bridge)
            await check_postgres(r, role="any", bridge=bridge)
            with pytest.raises(HealthCheckFailed, match="is in recovery"):
                await check_postgres(r, role="primary", bridge=bridge)
            with pytest.raises(HealthCheckFailed, match="does not exist"):
                await check_postgres(p, database="nope", bridge=bridge)

            # Many concurrent checks through the one bridge.
            outcomes: list[bool] = []

            async def check(address: Address, role: str) -> None:
                try:
                    await check_postgres(address, role=role, bridge=bridge)
                    outcomes.append(True)
                except HealthCheckFailed:
                    outcomes.append(False)

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(check, p if i % 2 else r, "primary")
            assert sorted(outcomes) == [False] * 10 + [True] * 10

            # A listener with role=primary over both follows the primary through a failover.
            cluster = Cluster("pg/prod", health=HealthConfig(1, 1))
            cluster.set_addresses([p, r], trio.current_time())
            check_config = HealthCheckConfig(
                type="postgres",
                role="primary",
                interval=0.1,
                timeout=5.0,
                healthy_threshold=1,
                unhealthy_threshold=1,
            )
            watch = Watch(cluster)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: run_health_checks(
                        cluster, check_config, on_transition=watch, bridge=bridge
                    )
                )
                await watch.until_usable([p], 30)
                await trio.to_thread.run_sync(primary.stop)
                await trio.to_thread.run_sync(replica.promote)
                await watch.until_usable([r], 30)
                nursery.cancel_scope.cancel()
            assert watch.seen[0] == (r, False)
            assert len(watch.seen) == 3 and set(watch.seen[1:]) == {(p, False), (r, True)}
    finally:
        await trio.to_thread.run_sync(replica.stop)


async def test_run_health_checks_with_real_tcp_servers(nursery: trio.Nursery) -> None:
    up, up_scope = await start_server(nursery, close_at_once)
    refused = ("127.0.0.1", free_port())
    # Start unhealthy so that every endpoint's first passing probe shows as a transition.
    cluster = Cluster("redis/dev", health=HealthConfig(1, 1, initial_healthy=False))
    cluster.set_addresses([up, refused], trio.current_time())
    watch = Watch(cluster)
    check = HealthCheckConfig(
        type="tcp", interval=0.05, timeout=2.0, healthy_threshold=1, unhealthy_threshold=1
    )
    async with trio.open_nursery() as checks:
        checks.start_soon(lambda: run_health_checks(cluster, check, on_transition=watch))
        await watch.until_usable([up], 10)
        # a new endpoint (from discovery) gets checked too
        late, _ = await start_server(nursery, close_at_once)
        cluster.set_addresses([up, refused, late], trio.current_time())
        await watch.until_usable([up, late], 10)
        # a server going away is noticed
        up_scope.cancel()
        await watch.until_usable([late], 10)
        checks.cancel_scope.cancel()
    assert watch.seen == [(up, True), (late, True), (up, False)]


# -- the check loop on virtual time, with scripted probes --------------------------------------


class ScriptedProbe:
    """Answers from a per-address script; records when each probe ran."""

    def __init__(self, script: dict[Address, list[str]]) -> None:
        self.script = {address: list(steps) for address, steps in script.items()}
        self.calls: list[tuple[float, Address]] = []

    async def __call__(self, address: Address) -> None:
        self.calls.append((trio.current_time(), address))
        steps = self.script[address]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if step == "hang":
            await trio.sleep_forever()
        if step == "fail":
            raise HealthCheckFailed("scripted failure")


A: Address = ("10.0.0.1", 80)
B: Address = ("10.0.0.2", 80)


async def test_check_loop_timing_thresholds_and_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cluster = Cluster("api/test", health=HealthConfig(healthy_threshold=2, unhealthy_threshold=2))
    cluster.set_addresses([A, B], 0.0)
    probe = ScriptedProbe({A: ["ok", "fail", "fail", "ok", "ok"], B: ["ok", "hang", "hang", "ok"]})
    check = HealthCheckConfig(type="tcp", interval=10.0, timeout=3.0)
    seen: list[tuple[float, Address, bool, str]] = []

    def record(ep: EndpointState, t: Transition) -> None:
        seen.append((t.at, ep.address, t.healthy, t.reason))

    with trio.move_on_after(45):
        await run_health_checks(
            cluster, check, on_transition=record, probe=probe, jitter=0.0, rng=random.Random(1)
        )
    # A probes at 0, 10, 20, ... (each probe is instant); B's hanging probes use up the timeout.
    assert [t for t, a in probe.calls if a == A] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert [t for t, a in probe.calls if a == B] == [0.0, 10.0, 23.0, 36.0]
    assert seen == [
        (20.0, A, False, "scripted failure"),
        (26.0, B, False, "no answer from 10.0.0.2:80 within 3s"),
        (40.0, A, True, ""),
    ]


async def test_check_loop_follows_address_changes(autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster("api/test")
    cluster.set_addresses([A], 0.0)
    probe = ScriptedProbe({A: ["ok"], B: ["ok"]})
    check = HealthCheckConfig(type="tcp", interval=1.0, timeout=0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_health_checks(
                cluster, check, on_transition=lambda ep, t: None, probe=probe, jitter=0.0
            )
        )
        await trio.sleep(2.5)
        cluster.set_addresses([B], trio.current_time())  # A leaves, B arrives
        await trio.sleep(2.1)
        nursery.cancel_scope.cancel()
    assert probe.calls == [(0.0, A), (1.0, A), (2.0, A), (2.5, B), (3.5, B), (4.5, B)]


async def test_type_none_never_probes(autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster("api/test")
    cluster.set_addresses([A], 0.0)
    with trio.move_on_after(100):
        await run_health_checks(
            cluster, HealthCheckConfig(type="none"), on_transition=lambda ep, t: None
        )
    assert cluster.endpoint(A) is not None and cluster.has_usable(trio.current_time())


def test_make_probe_needs_a_bridge_for_postgres() -> None:
    with pytest.raises(ValueError, match="bridge"):
        make_probe(HealthCheckConfig(type="postgres"))


# -- the schedule (pure) and the idle cost per endpoint --------------------------------------


def test_probe_schedule_orders_replaces_and_removes() -> None:
    s = ProbeSchedule()
    assert s.next_due() == float("inf") and s.pop_due(1e9) == []
    s.add(A, 5.0)
    s.add(B, 1.0)
    s.add(("10.0.0.3", 80), 1.0)
    assert s.next_due() == 1.0 and len(s) == 3 and A in s
    assert s.pop_due(1.0) == [B, ("10.0.0.3", 80)]  # same time: in the order added
    assert s.pop_due(4.9) == [] and s.next_due() == 5.0
    s.add(A, 2.0)  # replaces A's entry at 5.0
    assert s.pop_due(2.0) == [A] and s.next_due() == float("inf")
    s.add(B, 3.0)
    s.remove(B)
    s.remove(B)  # removing twice (or an unknown address) is fine
    assert B not in s and len(s) == 0 and s.pop_due(10.0) == []


def _all_tasks() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())  # type: ignore[arg-type]


async def test_idle_endpoints_hold_no_task(autojump_clock: trio.testing.MockClock) -> None:
    """Between probes no task exists per endpoint: the idle cost does not grow with them."""
    idle_tasks: list[int] = []
    for n in (1, 50):
        cluster = Cluster("api/test")
        addresses = [(f"10.0.1.{i}", 80) for i in range(n)]
        cluster.set_addresses(addresses, trio.current_time())
        probe = ScriptedProbe({a: ["ok"] for a in addresses})
        check = HealthCheckConfig(type="tcp", interval=10.0, timeout=1.0)
        async with trio.open_nursery() as nursery:
            checks = functools.partial(
                run_health_checks,
                cluster,
                check,
                on_transition=lambda ep, t: None,
                probe=probe,
                jitter=0.0,
            )
            nursery.start_soon(checks)
            await trio.sleep(15.0)  # two rounds of probes done, the next at 20
            idle_tasks.append(_all_tasks())
            nursery.cancel_scope.cancel()
        assert len(probe.calls) == 2 * n
    assert idle_tasks[0] == idle_tasks[1]


async def test_endpoint_replaced_while_its_probe_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A probe of an endpoint that left is cancelled and its result dropped; the new
    endpoint at the same address starts its own probes at once."""
    cluster = Cluster("api/test", health=HealthConfig(unhealthy_threshold=1))
    cluster.set_addresses([A], 0.0)
    probe = ScriptedProbe({A: ["hang", "ok"]})
    check = HealthCheckConfig(type="tcp", interval=10.0, timeout=5.0)
    seen: list[tuple[float, bool]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_health_checks(
                cluster, check, on_transition=lambda ep, t: seen.append((t.at, t.healthy)),
                probe=probe, jitter=0.0,
            )
        )  # fmt: skip
        await trio.sleep(1.0)
        cluster.set_addresses([], 1.0)
        await trio.sleep(1.0)
        cluster.set_addresses([A], 2.0)  # a new EndpointState for the same address
        await trio.sleep(25.0)
        nursery.cancel_scope.cancel()
    assert [t for t, _ in probe.calls] == [0.0, 2.0, 12.0, 22.0]
    assert seen == []  # the hanging probe's timeout (at 5) was never counted
