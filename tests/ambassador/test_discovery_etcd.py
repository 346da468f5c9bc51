"""etcd discovery: the snapshot-to-addresses core as tables, the apply loop on virtual time,
then a real etcd with the real registration code and real ``watcher run`` processes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ambassador.cluster import Cluster
from ambassador.config import EnvironmentConfig, HealthCheckConfig, ListenerConfig
from ambassador.discovery_etcd import (
    Discovered,
    apply_snapshots,
    instance_address,
    normalize_prefix,
    run_etcd_discovery,
    select_endpoints,
)
from ambassador.endpoint import Address
from ambassador.listener import ListenerRuntime, Metrics, bind_socket
from ambassador.switch import EnvSwitch
from sidecar_common.etcd import EtcdClient, ServiceInstance
from sidecar_common.metrics import Registry
from sidecar_common.netaddr import HostPort
from sidecar_common.retry import Backoff
from tests.support.etcd import EtcdServer, free_port
from watcher.probes import HealthState
from watcher.registration import Registrar, RegistrationMetrics, revoke, run_registration

WATCHER_BIN = Path(sys.executable).with_name("watcher")
#: What the requirement promises: a registration or departure is routed on within a second.
WITHIN_A_SECOND = 1.0


def record(
    instance: str,
    address: str = "10.0.0.1",
    port: int = 8080,
    *,
    environment: str = "prod",
    healthy: bool = True,
    service: str = "api",
) -> bytes:
    return (
        ServiceInstance(
            service=service,
            instance=instance,
            address=address,
            port=port,
            environment=environment,
            healthy=healthy,
        )
        .to_json()
        .encode()
    )


def addresses_of(cluster: Cluster) -> set[Address]:
    return {ep.address for ep in cluster.endpoints}


# ---------------------------------------------------------------------------
# Pure: prefixes, addresses, snapshot selection.


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("/services/api", "/services/api/"),
        ("/services/api/", "/services/api/"),
        ("/services/api//", "/services/api/"),
        ("services", "services/"),
    ],
)
def test_normalize_prefix(prefix: str, expected: str) -> None:
    assert normalize_prefix(prefix) == expected


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("10.0.0.7", 8080, ("10.0.0.7", 8080)),
        ("api-0.api.prod.svc", 80, ("api-0.api.prod.svc", 80)),
        ("::1", 9000, ("::1", 9000)),
        ("[fd00::7]", 9000, ("fd00::7", 9000)),
        (" 10.0.0.7 ", 1, ("10.0.0.7", 1)),
        ("", 8080, None),
        ("[]", 8080, None),
        ("10.0.0.7", 0, None),
        ("10.0.0.7", 65536, None),
        ("10.0.0.7", -1, None),
    ],
)
def test_instance_address(address: str, port: int, expected: Address | None) -> None:
    inst = ServiceInstance(service="api", instance="i", address=address, port=port)
    assert instance_address(inst) == expected


P = "/services/api/"


@pytest.mark.parametrize(
    ("snapshot", "environment", "expected"),
    [
        ({}, None, Discovered(())),
        # key order, not value or insertion order
        (
            {P + "b": record("b", "10.0.0.2"), P + "a": record("a", "10.0.0.1")},
            None,
            Discovered((("10.0.0.1", 8080), ("10.0.0.2", 8080))),
        ),
        # unhealthy instances are left out (the watcher's on_unhealthy=mark)
        (
            {P + "a": record("a", "10.0.0.1"), P + "b": record("b", "10.0.0.2", healthy=False)},
            None,
            Discovered((("10.0.0.1", 8080),), unhealthy=1),
        ),
        # environment filter: exact match; None takes every environment
        (
            {
                P + "a": record("a", "10.0.0.1", environment="prod"),
                P + "b": record("b", "10.0.0.2", environment="staging"),
                P + "c": record("c", "10.0.0.3", environment="default"),
            },
            "prod",
            Discovered((("10.0.0.1", 8080),), other_environment=2),
        ),
        (
            {
                P + "a": record("a", "10.0.0.1", environment="prod"),
                P + "b": record("b", "10.0.0.2", environment="staging"),
            },
            None,
            Discovered((("10.0.0.1", 8080), ("10.0.0.2", 8080))),
        ),
        # an unhealthy instance of another environment counts as another environment
        (
            {P + "b": record("b", environment="staging", healthy=False)},
            "prod",
            Discovered((), other_environment=1),
        ),
        # records that do not decode or cannot be routed to are skipped, not fatal
        (
            {
                P + "a": b"not json",
                P + "b": b'{"service": "api"}',
                P + "c": b"[1, 2]",
                P + "d": record("d", "", 8080),
                P + "e": record("e", "10.0.0.5", 0),
                P + "f": record("f", "10.0.0.6"),
            },
            None,
            Discovered((("10.0.0.6", 8080),), invalid=5),
        ),
        # a restarted pod's old and new records on one address: one endpoint
        (
            {P + "old": record("old", "10.0.0.1"), P + "new": record("new", "10.0.0.1")},
            None,
            Discovered((("10.0.0.1", 8080),)),
        ),
        # same host, different ports: two endpoints
        (
            {P + "a": record("a", "10.0.0.1", 8080), P + "b": record("b", "10.0.0.1", 8081)},
            None,
            Discovered((("10.0.0.1", 8080), ("10.0.0.1", 8081))),
        ),
        # unknown fields in a record are ignored (the record may grow)
        (
            {P + "a": json.dumps({**json.loads(record("a")), "zone": "eu-1"}).encode()},
            "prod",
            Discovered((("10.0.0.1", 8080),)),
        ),
    ],
)
def test_select_endpoints(
    snapshot: dict[str, bytes], environment: str | None, expected: Discovered
) -> None:
    assert select_endpoints(snapshot, environment=environment) == expected


# ---------------------------------------------------------------------------
# The apply loop on a memory channel and virtual time.


async def test_snapshots_drive_the_cluster(autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster("api/prod")
    changes: list[list[Address]] = []
    send, receive = trio.open_memory_channel[dict[str, bytes]](16)
    a, b = ("10.0.0.1", 8080), ("10.0.0.2", 8080)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(apply_snapshots, cluster, receive, environment="prod", on_change=changes.append)
        )
        await send.send({P + "a": record("a", "10.0.0.1")})
        await trio.testing.wait_all_tasks_blocked()
        assert addresses_of(cluster) == {a}
        kept = cluster.endpoint(a)
        # a new instance joins; the one that stays keeps its state
        await send.send({P + "a": record("a", "10.0.0.1"), P + "b": record("b", "10.0.0.2")})
        await trio.testing.wait_all_tasks_blocked()
        assert [ep.address for ep in cluster.endpoints] == [a, b]
        assert cluster.endpoint(a) is kept
        # a change elsewhere in the prefix that does not move the address set: no change
        generation = cluster.generation
        await send.send(
            {
                P + "a": record("a", "10.0.0.1"),
                P + "b": record("b", "10.0.0.2"),
                P + "c": record("c", "10.0.0.3", environment="staging"),
            }
        )
        await trio.testing.wait_all_tasks_blocked()
        assert cluster.generation == generation
        # b marked unhealthy, then every instance gone: an empty cluster (fail fast)
        await send.send({P + "a": record("a", "10.0.0.1"), P + "b": record("b", healthy=False)})
        await trio.testing.wait_all_tasks_blocked()
        assert addresses_of(cluster) == {a}
        await send.send({})
        await trio.testing.wait_all_tasks_blocked()
        assert cluster.endpoints == []
        await send.aclose()
    assert changes == [[a], [a, b], [a], []]


async def test_queued_snapshots_are_coalesced(autojump_clock: trio.testing.MockClock) -> None:
    """Each snapshot is the whole prefix: when several queued up, only the newest counts."""
    cluster = Cluster("api/prod")
    changes: list[list[Address]] = []
    send, receive = trio.open_memory_channel[dict[str, bytes]](16)
    for n in range(1, 6):
        await send.send({P + f"i{n}": record(f"i{n}", f"10.0.0.{n}")})
    await send.aclose()
    await apply_snapshots(cluster, receive, on_change=changes.append)
    assert changes == [[("10.0.0.5", 8080)]]
    assert cluster.generation == 1


# ---------------------------------------------------------------------------
# A real etcd, written by the watcher's own registration code.


async def until_addresses(cluster: Cluster, expected: set[Address], limit: float) -> None:
    """Wait (without polling: the cluster says when it changes) until the set is ``expected``."""
    with trio.fail_after(limit):
        while addresses_of(cluster) != expected:
            changed = trio.Event()
            unsubscribe = cluster.watch(changed.set)
            try:
                await changed.wait()
            finally:
                unsubscribe()


@asynccontextmanager
async def discovering(
    url: str, prefix: str, *, environment: str | None = None, backoff: Backoff | None = None
) -> AsyncIterator[Cluster]:
    cluster = Cluster("api/prod")
    kwargs: dict[str, Any] = {"environment": environment}
    if backoff is not None:
        kwargs["backoff"] = backoff
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_etcd_discovery, cluster, url, prefix, **kwargs))
        yield cluster
        nursery.cancel_scope.cancel()


class Registration:
    """One instance registered by ``watcher.registration`` in this process, on a lease."""

    def __init__(self, client: EtcdClient, prefix: str, inst: ServiceInstance, ttl: int) -> None:
        self.client = client
        self.health = HealthState(healthy=True)
        self.registrar = Registrar(
            key=ServiceInstance.key(prefix, inst.service, inst.instance), record=inst, ttl=ttl
        )
        self.metrics = RegistrationMetrics(Registry())
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            await run_registration(self.client, self.registrar, self.health, self.metrics)

    async def registered(self, limit: float = 10.0) -> None:
        """Until the key is known to be in etcd on a live lease (the registrar's own view)."""
        with trio.fail_after(limit):
            while not self.registrar.registered:  # noqa: ASYNC110 - set by another task's etcd call
                await trio.sleep(0.01)

    async def deregister(self) -> None:
        """What the watcher does on SIGTERM: stop the loop, revoke the lease."""
        self.scope.cancel()
        assert await revoke(self.client, self.registrar)


@pytest.mark.slow
async def test_registrations_are_followed_within_a_second(etcd: EtcdServer) -> None:
    client = EtcdClient(etcd.url)

    def inst(name: str, n: int, environment: str = "prod") -> ServiceInstance:
        return ServiceInstance(
            service="api", instance=name, address=f"10.0.0.{n}", port=8080, environment=environment
        )

    a, b = ("10.0.0.1", 8080), ("10.0.0.2", 8080)
    # A sibling service whose name starts like ours must not leak in.
    await client.put("/services/api-v2/x", inst("x", 9).to_json())
    async with (
        discovering(etcd.url, "/services/api", environment="prod") as cluster,
        trio.open_nursery() as nursery,
    ):
        ra = Registration(client, "/services", inst("pod-a", 1), ttl=5)
        nursery.start_soon(ra.run)
        await ra.registered()
        await until_addresses(cluster, {a}, WITHIN_A_SECOND)
        regs = {
            "b": Registration(client, "/services", inst("pod-b", 2), ttl=5),
            "s": Registration(client, "/services", inst("pod-s", 3, "staging"), ttl=5),
        }
        for reg in regs.values():
            nursery.start_soon(reg.run)
        for reg in regs.values():
            await reg.registered()
        # staging registered too, but is not ours (its put precedes every change
        # awaited below, so each of them shows it was seen and left out)
        await until_addresses(cluster, {a, b}, WITHIN_A_SECOND)

        # The app behind b turns unhealthy: marked healthy=false, left out.
        regs["b"].health.set(False, "probe failed")
        await until_addresses(cluster, {a}, WITHIN_A_SECOND)
        value = await client.get("/services/api/pod-b")
        assert value is not None and not ServiceInstance.from_json(value.value).healthy
        regs["b"].health.set(True, "probe ok")
        await until_addresses(cluster, {a, b}, WITHIN_A_SECOND)

        # Graceful exit: the lease is revoked, the key goes, so does the endpoint.
        await ra.deregister()
        await until_addresses(cluster, {b}, WITHIN_A_SECOND)
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_etcd_down_keeps_the_last_known_set(
    etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = EtcdClient(etcd.url, request_timeout=1.0)
    a, b = ("10.0.0.1", 8080), ("10.0.0.2", 8080)
    await client.put("/services/api/pod-a", record("a", "10.0.0.1"))
    fast = Backoff(initial=0.05, maximum=0.5)
    with caplog.at_level(logging.INFO, logger="sidecar.etcd"):
        async with discovering(etcd.url, "/services/api/", backoff=fast) as cluster:
            await until_addresses(cluster, {a}, 10)
            await trio.to_thread.run_sync(etcd.stop)
            # The follower notices and retries; the cluster is left alone meanwhile.
            with trio.fail_after(10):
                while not any("re-listing" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110 - log records, nothing to wait on
                    await trio.sleep(0.05)
            generation = cluster.generation
            await trio.sleep(1.0)  # several failed retries
            assert addresses_of(cluster) == {a} and cluster.generation == generation
            await trio.to_thread.run_sync(etcd.start)
            await client.put("/services/api/pod-b", record("b", "10.0.0.2"))
            await until_addresses(cluster, {a, b}, 10)


@pytest.mark.slow
async def test_etcd_down_at_start_then_up(etcd: EtcdServer) -> None:
    """Started while etcd is down: starts at once, routes as soon as etcd answers."""
    await trio.to_thread.run_sync(etcd.stop)
    fast = Backoff(initial=0.05, maximum=0.5)
    async with discovering(etcd.url, "/services/api", backoff=fast) as cluster:
        assert cluster.endpoints == []
        await trio.to_thread.run_sync(etcd.start)
        await EtcdClient(etcd.url).put("/services/api/pod-a", record("a", "10.0.0.1"))
        await until_addresses(cluster, {("10.0.0.1", 8080)}, 10)


# ---------------------------------------------------------------------------
# Real ``watcher run`` processes registering real (listening) apps.


class Watchers:
    """``watcher run`` subprocesses, each logging to its own file; killed by PID at the end."""

    def __init__(self, tmp_path: Path, etcd_url: str) -> None:
        self.tmp_path = tmp_path
        self.etcd_url = etcd_url
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, instance: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
        log_path = self.tmp_path / f"watcher-{instance}.log"
        args = [
            str(WATCHER_BIN), "run", "--admin", f"127.0.0.1:{free_port()}",
            "--etcd", self.etcd_url, "--prefix", "/services", "--service", "api",
            "--instance", instance, "--address", f"127.0.0.1:{port}",
            "--environment", "prod", "--probe", f"tcp://127.0.0.1:{port}",
            "--probe-period", "0.2", "--probe-failure-threshold", "1", *extra,
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def watchers(tmp_path: Path, etcd: EtcdServer) -> Iterator[Watchers]:
    w = Watchers(tmp_path, etcd.url)
    try:
        yield w
    finally:
        w.stop_all()


def listening_app() -> tuple[socket.socket, int]:
    """A stand-in app: a socket that accepts TCP connections (into its backlog)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, int(sock.getsockname()[1])


def wait_exit(proc: subprocess.Popen[bytes]) -> Callable[[], int]:
    return partial(proc.wait, 15)


@pytest.mark.slow
async def test_watchers_register_and_ambassador_discovers(
    etcd: EtcdServer, watchers: Watchers
) -> None:
    """The loop closed: watchers register their apps, the ambassador routes to the healthy ones."""
    app_a, port_a = listening_app()
    app_k, port_k = listening_app()
    port_b = free_port()  # nothing listens: b's probe fails, it is registered healthy=false
    a, b, k = ("127.0.0.1", port_a), ("127.0.0.1", port_b), ("127.0.0.1", port_k)
    ttl = 2
    try:
        async with discovering(etcd.url, "/services/api", environment="prod") as cluster:
            proc_a = watchers.start("pod-a", port_a, "--ttl", str(ttl))
            proc_b = watchers.start("pod-b", port_b, "--ttl", str(ttl))
            proc_k = watchers.start("pod-k", port_k, "--ttl", str(ttl))
            # Three python processes starting on a busy machine: generous here.
            await until_addresses(cluster, {a, k}, 30)

            # b is in etcd, marked unhealthy, and not routed to.
            client = EtcdClient(etcd.url)
            with trio.fail_after(30):
                while (kv := await client.get("/services/api/pod-b")) is None:  # noqa: ASYNC110 - another process writes it
                    await trio.sleep(0.05)
            assert ServiceInstance.from_json(kv.value).healthy is False
            assert addresses_of(cluster) == {a, k}
            # b's app comes up: its watcher marks it healthy, and it joins.
            app_b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                app_b.bind(b)
                app_b.listen(64)
                await until_addresses(cluster, {a, b, k}, 10)
            finally:
                app_b.close()
            # ... and down again: out.
            await until_addresses(cluster, {a, k}, 10)
            assert proc_b.poll() is None

            # SIGTERM: the watcher revokes its lease before it exits; the instance
            # is gone from the cluster within a second of the key going.
            os.kill(proc_a.pid, signal.SIGTERM)
            assert await trio.to_thread.run_sync(wait_exit(proc_a)) == 0
            assert await client.get("/services/api/pod-a") is None
            await until_addresses(cluster, {k}, WITHIN_A_SECOND)

            # SIGKILL: nobody revokes, nobody keeps the lease alive: gone within the
            # TTL (plus etcd's expiry tick and the last keepalive's slack).
            os.kill(proc_k.pid, signal.SIGKILL)
            await trio.to_thread.run_sync(wait_exit(proc_k))
            await until_addresses(cluster, set(), ttl + 2)
            assert await client.get("/services/api/pod-k") is None
    finally:
        app_a.close()
        app_k.close()


# ---------------------------------------------------------------------------
# Traffic: a real listener routes to whatever discovery found.


def named_backend(name: bytes) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def handler(stream: trio.SocketStream) -> None:
        try:
            await stream.send_all(name)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    return handler


async def answer_through(port: int) -> bytes:
    """Connect through the ambassador and read what the upstream says (b"" if refused)."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        chunks = []
        try:
            while data := await stream.receive_some():
                chunks.append(data)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()
    return b"".join(chunks)


@pytest.mark.slow
async def test_listener_routes_to_discovered_instances(etcd: EtcdServer) -> None:
    client = EtcdClient(etcd.url)
    async with trio.open_nursery() as nursery:
        ports = {}
        for name in (b"A", b"B"):
            listeners = await nursery.start(
                partial(trio.serve_tcp, named_backend(name), 0, host="127.0.0.1")
            )
            ports[name] = int(listeners[0].socket.getsockname()[1])

        def reg(name: bytes) -> Registration:
            inst = ServiceInstance(
                service="api", instance=f"pod-{name.decode()}", address="127.0.0.1",
                port=ports[name], environment="prod",
            )  # fmt: skip
            return Registration(client, "/services", inst, ttl=5)

        config = ListenerConfig(
            name="api",
            listen=HostPort("127.0.0.1", 0),
            environments={"prod": EnvironmentConfig("prod", ())},
            health_check=HealthCheckConfig(type="none"),
        )
        metrics = Metrics(Registry())
        switch = EnvSwitch(["prod"], "prod")
        metrics.switch = switch
        async with discovering(etcd.url, "/services/api", environment="prod") as cluster:
            runtime = ListenerRuntime(config, {"prod": cluster}, switch, metrics)
            sock = bind_socket("127.0.0.1", 0)
            port = int(sock.getsockname()[1])
            await nursery.start(
                lambda task_status: runtime.serve(
                    [sock], handler_nursery=nursery, task_status=task_status
                )
            )
            # Nothing registered: fail fast.
            assert await answer_through(port) == b""
            ra, rb = reg(b"A"), reg(b"B")
            nursery.start_soon(ra.run)
            await ra.registered()
            await until_addresses(cluster, {("127.0.0.1", ports[b"A"])}, WITHIN_A_SECOND)
            assert await answer_through(port) == b"A"
            nursery.start_soon(rb.run)
            await rb.registered()
            await ra.deregister()
            await until_addresses(cluster, {("127.0.0.1", ports[b"B"])}, WITHIN_A_SECOND)
            assert {await answer_through(port) for _ in range(4)} == {b"B"}
        nursery.cancel_scope.cancel()
