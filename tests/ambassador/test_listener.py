"""The listener shell in-process, on real loopback sockets: admission and fail-fast paths.

The end-to-end files run the real binary; these drive ``ListenerRuntime``
directly so each refusal path (pending timeout, per-endpoint limit, nothing
usable, no environment) is checked alone, with its metric and outcome.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import trio

from ambassador.app import build_cluster
from ambassador.config import EnvironmentConfig, HealthCheckConfig, LimitsConfig, ListenerConfig
from ambassador.listener import ListenerRuntime, Metrics, bind_socket
from ambassador.switch import EnvSwitch
from sidecar_common.metrics import Registry, parse_text
from sidecar_common.netaddr import HostPort


async def echo_handler(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()
    except trio.BrokenResourceError:
        pass


@dataclass
class Rig:
    runtime: ListenerRuntime
    registry: Registry
    port: int
    backend_port: int

    def value(self, name: str, **labels: str) -> float:
        return parse_text(self.registry.render()).get((name, frozenset(labels.items())), 0.0)

    async def client(self) -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rig_factory(nursery: trio.Nursery) -> AsyncIterator[RigFactory]:
    backend = await nursery.start(trio.serve_tcp, echo_handler, 0)
    backend_port = backend[0].socket.getsockname()[1]

    async def make(limits: LimitsConfig, env: str | None = "dev") -> Rig:
        config = ListenerConfig(
            name="t",
            listen=HostPort("127.0.0.1", 0),
            environments={"dev": EnvironmentConfig("dev", (HostPort("127.0.0.1", backend_port),))},
            limits=limits,
            health_check=HealthCheckConfig(type="none"),
        )
        registry = Registry()
        metrics = Metrics(registry)
        switch = EnvSwitch(["dev", "prod"], env)
        metrics.switch = switch
        clusters = {"dev": build_cluster(config, "dev", random.Random(1), trio.current_time())}
        runtime = ListenerRuntime(config, clusters, switch, metrics)
        sock = bind_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        await nursery.start(lambda task_status: runtime.serve([sock], handler_nursery=nursery,
                                                              task_status=task_status))  # fmt: skip
        return Rig(runtime, registry, port, backend_port)

    yield make


async def read_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    out = b""
    try:
        while data := await stream.receive_some():
            out += data
    except trio.BrokenResourceError:
        out += b"<reset>"
    return out


async def test_pending_client_times_out_and_is_counted(rig_factory: RigFactory) -> None:
    rig = await rig_factory(LimitsConfig(max_connections=1, max_pending=1, pending_timeout=0.2))
    held = await rig.client()
    await held.send_all(b"a")
    assert await held.receive_some() == b"a"
    waiting = await rig.client()
    with trio.fail_after(10):
        assert await read_until_eof(waiting) == b""
    assert rig.value("ambassador_connections_total", listener="t", env="dev",
                     outcome="pending_timeout") == 1  # fmt: skip
    assert rig.value("ambassador_circuit_breaker_rejections_total", listener="t",
                     scope="listener") == 1  # fmt: skip
    await held.aclose()


async def test_pending_client_gets_the_freed_slot(rig_factory: RigFactory) -> None:
    rig = await rig_factory(LimitsConfig(max_connections=1, max_pending=1, pending_timeout=30))
    held = await rig.client()
    await held.send_all(b"a")
    assert await held.receive_some() == b"a"
    waiting = await rig.client()
    await waiting.send_all(b"queued")
    await held.send_eof()
    assert await read_until_eof(held) == b""
    await held.aclose()
    with trio.fail_after(10):
        assert await waiting.receive_some() == b"queued"
    await waiting.aclose()


async def test_per_endpoint_limit_rejects_at_once(rig_factory: RigFactory) -> None:
    rig = await rig_factory(LimitsConfig(max_connections_per_endpoint=1))
    held = await rig.client()
    await held.send_all(b"a")
    assert await held.receive_some() == b"a"
    with trio.fail_after(10):
        assert await read_until_eof(await rig.client()) == b"<reset>"
    assert rig.value("ambassador_connections_total", listener="t", env="dev",
                     outcome="rejected") == 1  # fmt: skip
    assert rig.value("ambassador_circuit_breaker_rejections_total", listener="t",
                     scope="endpoint") == 1  # fmt: skip
    await held.aclose()


async def test_nothing_usable_fails_fast_without_connecting(rig_factory: RigFactory) -> None:
    rig = await rig_factory(LimitsConfig())
    cluster = rig.runtime.clusters["dev"]
    (ep,) = cluster.endpoints
    cluster.health_result(ep, False, trio.current_time(), "probe failed")
    assert not rig.runtime.has_usable("dev")
    with trio.fail_after(10):
        assert await read_until_eof(await rig.client()) == b"<reset>"
    assert rig.value("ambassador_connections_total", listener="t", env="dev",
                     outcome="no_endpoint") == 1  # fmt: skip
    labels = {"listener": "t", "env": "dev", "endpoint": f"127.0.0.1:{rig.backend_port}"}
    assert rig.value("ambassador_endpoint_healthy", **labels) == 0


async def test_environment_missing_on_this_listener_refuses(rig_factory: RigFactory) -> None:
    rig = await rig_factory(LimitsConfig(), env="prod")
    with trio.fail_after(10):
        assert await read_until_eof(await rig.client()) == b""
    assert rig.value("ambassador_connections_total", listener="t", env="prod",
                     outcome="no_env") == 1  # fmt: skip
    assert rig.value("ambassador_current_env", env="prod") == 1
