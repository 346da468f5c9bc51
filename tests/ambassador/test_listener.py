"""The listener shell in-process, on real loopback sockets: admission and fail-fast paths.

The end-to-end files run the real binary; these drive ``ListenerRuntime``
directly so each refusal path (pending timeout, per-endpoint limit, nothing
usable, no environment) is checked alone, with its metric and outcome.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

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


# ------------------------------------------------------------ TLS, PostgreSQL, HTTP wiring


def _pg_startup(user: bytes = b"app") -> bytes:
    import struct

    body = struct.pack("!i", 196608) + b"user\x00" + user + b"\x00\x00"
    return struct.pack("!i", len(body) + 4) + body


class RecordingRuntime(ListenerRuntime):
    """``open_upstream`` replaced by an in-memory server that records what it was given."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.opened: list[tuple[tuple[str, int], object]] = []
        self.server_side: list[Any] = []

    async def open_upstream(
        self, address: tuple[str, int], tls: object = None
    ) -> trio.abc.HalfCloseableStream:
        self.opened.append((address, tls))
        ours, theirs = trio.testing.memory_stream_pair()
        self.server_side.append(theirs)
        return ours


def _runtime(protocol: str, envs: dict[str, EnvironmentConfig]) -> RecordingRuntime:
    config = ListenerConfig(
        name="db",
        listen=HostPort("127.0.0.1", 0),
        environments=envs,
        protocol=protocol,  # type: ignore[arg-type]
        health_check=HealthCheckConfig(type="none"),
    )
    metrics = Metrics(Registry())
    switch = EnvSwitch(list(envs), next(iter(envs)))
    metrics.switch = switch
    clusters = {e: build_cluster(config, e, random.Random(1), trio.current_time()) for e in envs}
    return RecordingRuntime(config, clusters, switch, metrics)


async def test_postgres_with_tls_answers_n_and_sends_the_startup_first() -> None:
    from ambassador.pgtls import SSL_REQUEST
    from ambassador.tls import UpstreamTLS

    tls = UpstreamTLS(sslmode="require")
    rt = _runtime(
        "postgres",
        {
            "prod": EnvironmentConfig("prod", (HostPort("10.0.0.1", 5432),), tls=tls),
            "dev": EnvironmentConfig("dev", (HostPort("10.0.0.2", 5432),)),
        },
    )
    app, proxy_side = trio.testing.memory_stream_pair()
    startup = _pg_startup()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rt._serve_admitted, proxy_side, "prod", rt.clusters["prod"], "app", 0.0)
        await app.send_all(SSL_REQUEST)
        # Answered by the ambassador before any upstream connection exists.
        assert await app.receive_some(1) == b"N"
        assert rt.opened == []
        await app.send_all(startup + b"Q-query")
        await trio.testing.wait_all_tasks_blocked()
        assert rt.opened == [(("10.0.0.1", 5432), tls)]
        server = rt.server_side[0]
        got = b""
        while len(got) < len(startup) + 7:
            got += await server.receive_some()
        assert got == startup + b"Q-query"
        await server.send_all(b"R-auth-ok")
        assert await app.receive_some() == b"R-auth-ok"
        await app.send_eof()
        await server.send_eof()
    conn_bytes = rt.closed_bytes_in["prod"]
    assert conn_bytes == len(startup) + 7


async def test_postgres_without_tls_relays_transparently() -> None:
    from ambassador.pgtls import SSL_REQUEST

    rt = _runtime("postgres", {"dev": EnvironmentConfig("dev", (HostPort("10.0.0.2", 5432),))})
    app, proxy_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rt._serve_admitted, proxy_side, "dev", rt.clusters["dev"], "app", 0.0)
        await app.send_all(SSL_REQUEST)
        await trio.testing.wait_all_tasks_blocked()
        # Connected at once, no TLS, and the app's SSLRequest goes to the server untouched.
        assert rt.opened == [(("10.0.0.2", 5432), None)]
        assert await rt.server_side[0].receive_some() == SSL_REQUEST
        await app.send_eof()
        await rt.server_side[0].send_eof()


async def test_postgres_tls_not_a_postgres_client_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from ambassador.tls import UpstreamTLS

    envs = {
        "prod": EnvironmentConfig(
            "prod", (HostPort("10.0.0.1", 5432),), tls=UpstreamTLS(sslmode="require")
        )
    }
    rt = _runtime("postgres", envs)
    app, proxy_side = trio.testing.memory_stream_pair()
    await app.send_all(b"GET / HTTP/1.1\r\n\r\n")
    await rt._serve_admitted(proxy_side, "prod", rt.clusters["prod"], "app", 0.0)
    assert rt.opened == []
    # A silent client: cut after the connect timeout, never connected upstream.
    _app2, proxy2 = trio.testing.memory_stream_pair()
    await rt._serve_admitted(proxy2, "prod", rt.clusters["prod"], "app", 0.0)
    assert rt.opened == []
    text = rt.metrics.registry.render()
    assert 'outcome="bad_request"' in text and 'outcome="client_timeout"' in text


async def test_http_listener_routes_per_request_and_drains_the_proxy() -> None:
    from ambassador.tls import UpstreamTLS

    tls = UpstreamTLS()
    rt = _runtime(
        "http",
        {
            "dev": EnvironmentConfig("dev", (HostPort("127.0.0.1", 1),)),
            "prod": EnvironmentConfig("prod", (HostPort("127.0.0.1", 2),), tls=tls),
        },
    )
    assert rt.http_proxy is not None
    route = rt.route()
    assert route is not None and (route.env, route.cluster, route.tls) == (
        "dev",
        rt.clusters["dev"],
        None,
    )
    rt.switch.set("prod", "test")
    route = rt.route()
    assert route is not None and (route.env, route.tls) == ("prod", tls)
    # An HTTP connection is not tied to an environment: a switch drains nothing.
    assert rt.drain_env("prod", 0.0) == 0
    rt.shutdown_after(1.0)
    assert rt.http_proxy.draining
    await rt.aclose()


async def test_accepted_and_upstream_sockets_have_nodelay(rig_factory: RigFactory) -> None:
    import socket

    from ambassador.listener import set_nodelay

    rig = await rig_factory(LimitsConfig())
    stream = await rig.runtime.open_upstream(("127.0.0.1", rig.backend_port))
    assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # type: ignore[attr-defined]
    raw = socket.socket()
    try:
        raw.connect(("127.0.0.1", rig.backend_port))
        sock_stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
        sock_stream.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        set_nodelay(sock_stream)
        assert sock_stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        raw.close()
    await stream.aclose()
