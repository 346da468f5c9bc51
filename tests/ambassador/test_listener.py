"""The listener shell in-process, on real loopback sockets: admission and fail-fast paths.

The end-to-end files run the real binary; these drive ``ListenerRuntime``
directly so each refusal path (pending timeout, per-endpoint limit, nothing
usable, no environment) is checked alone, with its metric and outcome.
"""

from __future__ import annotations

import contextlib
import functools
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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


# ------------------------------------------------------------ the accept and connect path


async def test_a_burst_of_clients_is_served_and_logged_with_their_addresses(
    rig_factory: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Clients that arrive together are accepted in one batch, each with its own address."""
    import logging

    caplog.set_level(logging.INFO, logger="ambassador.access")
    rig = await rig_factory(LimitsConfig())
    clients = [await rig.client() for _ in range(12)]
    for i, c in enumerate(clients):
        await c.send_all(b"n%02d" % i)
    for i, c in enumerate(clients):
        with trio.fail_after(10):
            assert await c.receive_some() == b"n%02d" % i
        await c.send_eof()
        assert await read_until_eof(c) == b""
    mine = {f"127.0.0.1:{c.socket.getsockname()[1]}" for c in clients}
    closed = {"listener": "t", "env": "dev", "outcome": "closed"}
    with trio.fail_after(10):
        # Counted when the hub reports the end, a moment after the client's EOF.
        while rig.value("ambassador_connections_total", **closed) < 12:  # noqa: ASYNC110
            await trio.sleep(0.01)
    logged = [
        r._sidecar_fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "ambassador.access"
    ]
    assert {f["client"] for f in logged} == mine
    assert all((f["bytes_in"], f["bytes_out"]) == (3, 3) for f in logged)
    for c in clients:
        await c.aclose()


async def test_upstream_connect_to_an_address_and_to_a_name(rig_factory: RigFactory) -> None:
    """IP literals take the lean connect; names still go through trio's resolver."""
    import errno

    from ambassador.tcp import open_tcp, start_tcp
    from tests.support.procs import refused_port

    rig = await rig_factory(LimitsConfig())
    assert start_tcp(("localhost", rig.backend_port)) is None  # a name: not the lean connect
    by_name = await rig.runtime.open_upstream(("localhost", rig.backend_port))
    resolved = await open_tcp(("localhost", rig.backend_port))
    direct = await open_tcp(("127.0.0.1", rig.backend_port))
    assert direct is not None
    for stream in (by_name, resolved, direct):
        await stream.send_all(b"ping")
        with trio.fail_after(10):
            assert await stream.receive_some() == b"ping"
        await stream.aclose()
    with refused_port() as port, pytest.raises(OSError) as info:
        await open_tcp(("127.0.0.1", port))
    assert info.value.errno == errno.ECONNREFUSED


async def test_cancelling_serve_closes_the_listening_socket(nursery: trio.Nursery) -> None:
    config = ListenerConfig(
        name="t",
        listen=HostPort("127.0.0.1", 0),
        environments={"dev": EnvironmentConfig("dev", (HostPort("127.0.0.1", 9),))},
        health_check=HealthCheckConfig(type="none"),
    )
    metrics = Metrics(Registry())
    switch = EnvSwitch(["dev"], "dev")
    clusters = {"dev": build_cluster(config, "dev", random.Random(1), trio.current_time())}
    runtime = ListenerRuntime(config, clusters, switch, metrics)
    sock = bind_socket("127.0.0.1", 0)
    async with trio.open_nursery() as accepting:
        await accepting.start(functools.partial(runtime.serve, [sock], handler_nursery=nursery))
        assert sock.fileno() != -1
        accepting.cancel_scope.cancel()
    assert sock.fileno() == -1


class SilentRuntime(RecordingRuntime):
    """An upstream whose connect never completes (a black-holed address)."""

    async def open_upstream(
        self, address: tuple[str, int], tls: object = None
    ) -> trio.abc.HalfCloseableStream:
        self.opened.append((address, tls))
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_connect_timeout_tries_the_next_endpoint_then_fails_fast(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO)
    envs = {"dev": EnvironmentConfig("dev", (HostPort("10.0.0.1", 1), HostPort("10.0.0.2", 1)))}
    config = ListenerConfig(
        name="db",
        listen=HostPort("127.0.0.1", 0),
        environments=envs,
        limits=LimitsConfig(connect_timeout=2.0, connect_attempts=2),
        health_check=HealthCheckConfig(type="none"),
    )
    metrics = Metrics(Registry())
    switch = EnvSwitch(["dev"], "dev")
    clusters = {"dev": build_cluster(config, "dev", random.Random(1), trio.current_time())}
    rt = SilentRuntime(config, clusters, switch, metrics)
    app, proxy_side = trio.testing.memory_stream_pair()
    t0 = trio.current_time()
    await rt._serve_admitted(proxy_side, "dev", rt.clusters["dev"], "app", t0)
    # Two attempts, one per endpoint, each cut at the connect timeout.
    assert sorted(a for a, _ in rt.opened) == [("10.0.0.1", 1), ("10.0.0.2", 1)]
    assert trio.current_time() - t0 == pytest.approx(4.0)
    failed = [r for r in caplog.records if r.getMessage() == "connect failed"]
    assert [r._sidecar_fields["reason"] for r in failed] == ["timeout", "timeout"]  # type: ignore[attr-defined]
    assert 'outcome="connect_failed"' in metrics.registry.render()
    await app.aclose()


class _FlakyListeningSocket(socket.socket):
    """A listening socket whose accept fails as scripted first (then accepts for real)."""

    def __init__(self, failures: list[int]) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.failures = failures

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            raise OSError(self.failures.pop(0), "scripted")
        return super().accept()


async def test_accept_errors_skip_a_gone_client_and_pause_when_out_of_descriptors(
    rig_factory: RigFactory, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """ECONNABORTED: that client is gone, go on. EMFILE: log, pause, go on; never stop serving."""
    import errno
    import logging

    caplog.set_level(logging.ERROR, logger="ambassador.listener")
    rig = await rig_factory(LimitsConfig())
    sock = _FlakyListeningSocket([errno.ECONNABORTED, errno.EMFILE])
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    async with trio.open_nursery() as accepting:
        # (trio wraps only exact stdlib sockets, so the loop is driven directly.)
        accepting.start_soon(rig.runtime._accept_loop, sock, nursery)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"still served")
        with trio.fail_after(10):
            assert await client.receive_some() == b"still served"
        accepting.cancel_scope.cancel()
    sock.close()
    assert sock.failures == []
    errors = [r for r in caplog.records if r.getMessage() == "accept failed; retrying"]
    assert len(errors) == 1 and "EMFILE" in errors[0]._sidecar_fields["error"]  # type: ignore[attr-defined]
    await client.aclose()


@contextlib.contextmanager
def _full_backlog() -> Iterator[tuple[int, list[Any]]]:
    """A listening port whose accept queue is full: a new connect stays in progress.

    (Linux drops the SYN while the queue is full, so the handshake cannot complete.)
    """
    from ambassador.tcp import start_tcp

    full = socket.socket()
    fillers: list[Any] = []
    try:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        for _ in range(8):
            started = start_tcp(("127.0.0.1", port))
            if isinstance(started, socket.socket):
                started.close()
                break
            fillers.append(started)
        else:
            pytest.skip("the accept queue never filled")
        yield port, fillers
    finally:
        for stream in fillers:
            stream.socket.close()
        full.close()


async def test_a_connect_still_in_progress_is_waited_for_and_closed_when_cut_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The lean connect hands back a socket still connecting; the bounded wait closes it."""
    from ambassador.tcp import finish_tcp, start_tcp

    with _full_backlog() as (port, _fillers):
        started = start_tcp(("127.0.0.1", port))
        assert isinstance(started, socket.socket)
        with trio.move_on_after(1.0) as scope:
            await finish_tcp(started, ("127.0.0.1", port))
        assert scope.cancelled_caught
        assert started.fileno() == -1


async def test_a_plain_connect_that_hangs_counts_as_a_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The lean connect path outside its cancel scope still honours the connect timeout."""
    import logging

    caplog.set_level(logging.INFO)
    with _full_backlog() as (port, _fillers):
        envs = {"dev": EnvironmentConfig("dev", (HostPort("127.0.0.1", port),))}
        config = ListenerConfig(
            name="db",
            listen=HostPort("127.0.0.1", 0),
            environments=envs,
            limits=LimitsConfig(connect_timeout=2.0, connect_attempts=1),
            health_check=HealthCheckConfig(type="none"),
        )
        metrics = Metrics(Registry())
        switch = EnvSwitch(["dev"], "dev")
        clusters = {"dev": build_cluster(config, "dev", random.Random(1), trio.current_time())}
        rt = ListenerRuntime(config, clusters, switch, metrics)
        app, proxy_side = trio.testing.memory_stream_pair()
        t0 = trio.current_time()
        await rt._serve_admitted(proxy_side, "dev", rt.clusters["dev"], "app", t0)
        assert trio.current_time() - t0 == pytest.approx(2.0)
        failed = [r for r in caplog.records if r.getMessage() == "connect failed"]
        assert [r._sidecar_fields["reason"] for r in failed] == ["timeout"]  # type: ignore[attr-defined]
        assert 'outcome="connect_failed"' in metrics.registry.render()
        await app.aclose()


# ------------------------------------------------------------ the task-less path (issue 4)


@pytest.fixture
def splice_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    """The threaded splice hub (the default), whatever AMBASSADOR_RELAY the run has."""
    monkeypatch.setenv("AMBASSADOR_RELAY", "splice")


def _task_less_rig(
    endpoints: tuple[HostPort, ...], limits: LimitsConfig
) -> tuple[ListenerRuntime, socket.socket]:
    config = ListenerConfig(
        name="t",
        listen=HostPort("127.0.0.1", 0),
        environments={"dev": EnvironmentConfig("dev", endpoints)},
        limits=limits,
        health_check=HealthCheckConfig(type="none"),
    )
    metrics = Metrics(Registry())
    switch = EnvSwitch(["dev"], "dev")
    metrics.switch = switch
    clusters = {"dev": build_cluster(config, "dev", random.Random(1), trio.current_time())}
    return ListenerRuntime(config, clusters, switch, metrics), bind_socket("127.0.0.1", 0)


def _outcomes(rt: ListenerRuntime) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: v
        for (name, labels), v in parse_text(rt.metrics.registry.render()).items()
        if name == "ambassador_connections_total"
    }


async def _until(check: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not check():  # noqa: ASYNC110
            await trio.sleep(0.01)


@pytest.mark.usefixtures("splice_relay")
async def test_a_plain_client_is_relayed_without_a_task_and_ends_in_one_callback(
    rig_factory: RigFactory,
) -> None:
    """Admitted at once, connected at once: handed to the hub from the accept loop."""
    rig = await rig_factory(LimitsConfig())
    rt = rig.runtime
    client = await rig.client()
    await client.send_all(b"hello")
    with trio.fail_after(10):
        assert await client.receive_some() == b"hello"
    # Tracked (drain, shutdown and the live metrics see it), but no task waits for it.
    (conn,) = rt.connections
    assert conn in rt._loose
    assert rig.value("ambassador_active_connections", listener="t", env="dev") == 1
    (ep,) = rt.clusters["dev"].endpoints
    assert ep.active == 1 and rt.breaker.active == 1
    await client.send_eof()
    assert await read_until_eof(client) == b""
    await _until(lambda: not rt.connections)
    assert rt._loose == {} and ep.active == 0 and rt.breaker.active == 0
    assert _outcomes(rt) == {"closed": 1}
    assert rig.value("ambassador_received_bytes_total", listener="t", env="dev") == 5
    assert rig.value("ambassador_sent_bytes_total", listener="t", env="dev") == 5
    await client.aclose()


@pytest.mark.usefixtures("splice_relay")
async def test_the_handler_nursery_waits_for_task_less_connections_until_shutdown(
    rig_factory: RigFactory, nursery: trio.Nursery
) -> None:
    """Structured concurrency: the nursery ends only when the connection did (the reaper)."""
    backend = await nursery.start(trio.serve_tcp, echo_handler, 0)
    port = backend[0].socket.getsockname()[1]
    rt, sock = _task_less_rig((HostPort("127.0.0.1", port),), LimitsConfig())
    lport = sock.getsockname()[1]
    with trio.fail_after(10):
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as accepting:
                await accepting.start(functools.partial(rt.serve, [sock], handler_nursery=handlers))
                client = await trio.open_tcp_stream("127.0.0.1", lport)
                await client.send_all(b"x")
                assert await client.receive_some() == b"x"
                assert len(rt._loose) == 1
                accepting.cancel_scope.cancel()
            t0 = trio.current_time()
            rt.shutdown_after(0.2)
        # Left only once the shutdown deadline cut the connection.
        assert trio.current_time() - t0 >= 0.2
    assert await read_until_eof(client) == b"<reset>"
    assert _outcomes(rt) == {"shutdown": 1}
    assert rt.connections == set() and rt.breaker.active == 0
    await client.aclose()


@pytest.mark.usefixtures("splice_relay")
async def test_a_switch_drain_and_an_idle_timeout_cut_task_less_connections(
    nursery: trio.Nursery,
) -> None:
    backend = await nursery.start(trio.serve_tcp, echo_handler, 0)
    port = backend[0].socket.getsockname()[1]
    rt, sock = _task_less_rig((HostPort("127.0.0.1", port),), LimitsConfig(idle_timeout=0.3))
    lport = sock.getsockname()[1]
    await nursery.start(functools.partial(rt.serve, [sock], handler_nursery=nursery))
    drained = await trio.open_tcp_stream("127.0.0.1", lport)
    idle = await trio.open_tcp_stream("127.0.0.1", lport)
    with trio.fail_after(10):
        for c in (drained, idle):
            await c.send_all(b"x")
            assert await c.receive_some() == b"x"
        (conn_d,) = [
            c for c in rt.connections if c.client.endswith(f":{drained.socket.getsockname()[1]}")
        ]
        assert rt.drain_env("prod", 0.0) == 2
        # Deadline 0 for both; the drain reason wins over the idle timeout.
        await _until(lambda: not rt.connections)
    assert await read_until_eof(drained) == b"<reset>"
    assert _outcomes(rt) == {"drained": 2}
    assert conn_d.cancel_reason == "drained"
    # Idle: no byte either way for idle_timeout.
    silent = await trio.open_tcp_stream("127.0.0.1", lport)
    await silent.send_all(b"y")
    with trio.fail_after(10):
        assert await silent.receive_some() == b"y"
        assert await read_until_eof(silent) == b""
    await _until(lambda: not rt.connections)
    assert _outcomes(rt) == {"drained": 2, "idle_timeout": 1}
    for c in (drained, idle, silent):
        await c.aclose()


@pytest.mark.usefixtures("splice_relay")
async def test_cancelling_the_handler_nursery_ends_task_less_connections(
    nursery: trio.Nursery,
) -> None:
    backend = await nursery.start(trio.serve_tcp, echo_handler, 0)
    port = backend[0].socket.getsockname()[1]
    rt, sock = _task_less_rig((HostPort("127.0.0.1", port),), LimitsConfig())
    lport = sock.getsockname()[1]
    async with trio.open_nursery() as handlers:
        await handlers.start(functools.partial(rt.serve, [sock], handler_nursery=handlers))
        client = await trio.open_tcp_stream("127.0.0.1", lport)
        await client.send_all(b"x")
        with trio.fail_after(10):
            assert await client.receive_some() == b"x"
        handlers.cancel_scope.cancel()
    # As a task's would: closed (FIN), counted, the slots given back.
    with trio.fail_after(10):
        assert await read_until_eof(client) == b""
    assert _outcomes(rt) == {"error": 1}
    (ep,) = rt.clusters["dev"].endpoints
    assert rt.connections == set() and ep.active == 0 and rt.breaker.active == 0
    await client.aclose()


@pytest.mark.usefixtures("splice_relay")
async def test_a_connect_that_fails_or_waits_continues_in_a_task(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """The attempt begun in the accept loop counts: reported, retried or timed out in a task."""
    import logging

    from tests.support.procs import refused_port

    caplog.set_level(logging.INFO)
    with refused_port() as dead:
        rt, sock = _task_less_rig((HostPort("127.0.0.1", dead),), LimitsConfig(connect_attempts=1))
        lport = sock.getsockname()[1]
        await nursery.start(functools.partial(rt.serve, [sock], handler_nursery=nursery))
        client = await trio.open_tcp_stream("127.0.0.1", lport)
        with trio.fail_after(10):
            assert await read_until_eof(client) == b"<reset>"
        await _until(lambda: _outcomes(rt) == {"connect_failed": 1})
        await client.aclose()
    failed = [r for r in caplog.records if r.getMessage() == "connect failed"]
    assert len(failed) == 1 and "refused" in failed[0]._sidecar_fields["reason"].lower()  # type: ignore[attr-defined]
    with _full_backlog() as (port, _fillers):
        rt, sock = _task_less_rig(
            (HostPort("127.0.0.1", port),), LimitsConfig(connect_attempts=1, connect_timeout=0.2)
        )
        lport = sock.getsockname()[1]
        await nursery.start(functools.partial(rt.serve, [sock], handler_nursery=nursery))
        client = await trio.open_tcp_stream("127.0.0.1", lport)
        with trio.fail_after(10):
            assert await read_until_eof(client) == b"<reset>"
        await _until(lambda: _outcomes(rt) == {"connect_failed": 1})
        (ep,) = rt.clusters["dev"].endpoints
        assert ep.active == 0 and rt.breaker.active == 0
        await client.aclose()
