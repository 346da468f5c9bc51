"""PostgreSQL TLS negotiation: pure tables, memory-stream conversations, a real ssl=on server."""

from __future__ import annotations

import functools
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from hypothesis import given
from hypothesis import strategies as st

from ambassador.pgtls import (
    GSSENC_REQUEST_CODE,
    SSL_REQUEST,
    ClientGSSEncRequest,
    ClientSSLRequest,
    ClientStartup,
    ClientStartupReader,
    PgStartupError,
    negotiate_server_tls,
    read_client_startup,
    server_reply_action,
)
from ambassador.relay import RelayCounters, relay
from ambassador.tls import SslMode, UpstreamTLS, UpstreamTLSError, open_upstream
from tests.support.postgres import PostgresCluster

GSSENC_REQUEST = struct.pack("!ii", 8, GSSENC_REQUEST_CODE)


def startup_message(user: str = "postgres") -> bytes:
    body = struct.pack("!i", 196608) + b"user\x00" + user.encode() + b"\x00\x00"
    return struct.pack("!i", len(body) + 4) + body


# --------------------------------------------------------------------------- pure


def test_reader_answers_encryption_requests_then_yields_startup() -> None:
    reader = ClientStartupReader()
    sm = startup_message()
    assert reader.feed(GSSENC_REQUEST) == [ClientGSSEncRequest()]
    assert reader.feed(SSL_REQUEST + sm[:5]) == [ClientSSLRequest()]
    assert reader.feed(sm[5:] + b"Q-extra") == [ClientStartup(sm + b"Q-extra")]
    assert reader.done


@given(st.lists(st.integers(min_value=1, max_value=7), max_size=20))
def test_reader_any_split(cuts: list[int]) -> None:
    """However the bytes are split, the same events come out."""
    data = SSL_REQUEST + startup_message("alice")
    reader = ClientStartupReader()
    events = []
    pos = 0
    for n in cuts:
        if reader.done:
            break
        events += reader.feed(data[pos : pos + n])
        pos += n
    if not reader.done:
        events += reader.feed(data[pos:])
    assert events == [ClientSSLRequest(), ClientStartup(startup_message("alice"))]


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("!ii", 4, 0),  # shorter than a header
        struct.pack("!ii", 1_000_000, 196608),  # not PostgreSQL
        b"GET / HTTP/1.1\r\n",  # an HTTP client on the wrong port
        struct.pack("!ii", 12, 80877103) + b"\0\0\0\0",  # SSLRequest of the wrong length
    ],
)
def test_reader_rejects_garbage(data: bytes) -> None:
    with pytest.raises(PgStartupError):
        ClientStartupReader().feed(data)


@pytest.mark.parametrize(
    ("mode", "reply", "action"),
    [
        ("prefer", b"S", "tls"),
        ("prefer", b"N", "plain"),
        ("require", b"S", "tls"),
        ("require", b"N", None),
        ("verify-ca", b"N", None),
        ("verify-full", b"S", "tls"),
        ("verify-full", b"N", None),
        ("prefer", b"", None),
        ("prefer", b"E", None),
        ("prefer", b"X", None),
    ],
)
def test_server_reply_table(mode: str, reply: bytes, action: str | None) -> None:
    if action is None:
        with pytest.raises(UpstreamTLSError):
            server_reply_action(mode, reply)  # type: ignore[arg-type]
    else:
        assert server_reply_action(mode, reply) == action  # type: ignore[arg-type]


def test_sslmode_decides_verification() -> None:
    assert not UpstreamTLS(sslmode="require").for_postgres().verify
    ca = UpstreamTLS(sslmode="verify-ca").for_postgres()
    assert ca.verify and not ca.check_hostname
    full = UpstreamTLS(sslmode="verify-full").for_postgres()
    assert full.verify and full.check_hostname


# ----------------------------------------------------------------- shells on memory streams


async def test_read_client_startup_answers_n() -> None:
    app, proxy = trio.testing.memory_stream_pair()
    sm = startup_message()

    async def app_side() -> None:
        await app.send_all(SSL_REQUEST)
        assert await app.receive_some(1) == b"N"
        await app.send_all(GSSENC_REQUEST)
        assert await app.receive_some(1) == b"N"
        await app.send_all(sm)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(app_side)
        assert await read_client_startup(proxy) == sm


async def test_read_client_startup_eof() -> None:
    app, proxy = trio.testing.memory_stream_pair()
    await app.send_eof()
    assert await read_client_startup(proxy) == b""


async def test_negotiate_prefer_falls_back_to_plain_and_require_refuses() -> None:
    modes: tuple[tuple[SslMode, bool], ...] = (("prefer", True), ("require", False))
    for mode, expect_plain in modes:
        proxy, server = trio.testing.memory_stream_pair()

        async def server_side(server: trio.StapledStream[Any, Any] = server) -> None:
            assert await server.receive_some(8) == SSL_REQUEST
            await server.send_all(b"N")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_side)
            if expect_plain:
                got = await negotiate_server_tls(proxy, UpstreamTLS(sslmode=mode), "db")
                assert got is proxy
            else:
                with pytest.raises(UpstreamTLSError, match="does not support TLS"):
                    await negotiate_server_tls(proxy, UpstreamTLS(sslmode=mode), "db")


async def test_negotiate_reads_exactly_one_byte() -> None:
    """Bytes after the server's 'N' are left in the stream (nothing swallowed or trusted)."""
    proxy, server = trio.testing.memory_stream_pair()
    await server.send_all(b"Nrest")
    got = await negotiate_server_tls(proxy, UpstreamTLS(sslmode="prefer"), "db")
    assert await got.receive_some(10) == b"rest"


# --------------------------------------------------------------------------- real PostgreSQL


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_postgres(
    pg_factory: Callable[[str], PostgresCluster], server_ca: trustme.CA
) -> Iterator[PostgresCluster]:
    """A real PostgreSQL with ssl=on that refuses plaintext TCP clients (hostssl only)."""
    cluster = pg_factory("pgtls")
    cert = server_ca.issue_cert("127.0.0.1", "localhost")
    crt, key = cluster.datadir / "server.crt", cluster.datadir / "server.key"
    crt.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    for path in (crt, key):
        cluster.run_as.chown(path)
        path.chmod(0o600)
    with open(cluster.datadir / "postgresql.conf", "a") as conf:
        conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
    (cluster.datadir / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n"
    )
    cluster.stop()
    cluster.start()
    yield cluster


async def serve_pg_proxy(
    upstream: tuple[str, int],
    tls: UpstreamTLS,
    failures: list[str],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The listener's postgres path in miniature: 'N' to the app, TLS to the server, relay."""

    async def handle(client: trio.SocketStream) -> None:
        async with client:
            startup = await read_client_startup(client)
            if not startup:
                return
            try:
                with trio.fail_after(10):
                    server = await open_upstream(upstream, tls, "postgres")
            except OSError as exc:
                failures.append(str(exc))
                return
            async with server:
                await server.send_all(startup)
                await relay(client, server, RelayCounters())

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def psql(
    port: int, sql: str, *, sslmode: str = "prefer"
) -> subprocess.CompletedProcess[bytes]:
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode={sslmode}"
    return await trio.run_process(
        ["psql", "-X", "-A", "-t", "-d", dsn, "-c", sql],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.mark.slow
async def test_psql_plaintext_reaches_ssl_only_server(
    tls_postgres: PostgresCluster, server_ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = write_ca(server_ca, tmp_path / "ca.pem")
    upstream = (tls_postgres.host, tls_postgres.port)
    failures: list[str] = []
    async with trio.open_nursery() as nursery:
        tls = UpstreamTLS(ca_file=ca_file, sslmode="verify-full")
        port = await nursery.start(functools.partial(serve_pg_proxy, upstream, tls, failures))
        # The app's psql with its default sslmode=prefer gets 'N' and speaks plaintext;
        # the server only admits TLS clients, and sees this session as TLS.
        done = await psql(port, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().strip() == "t"
        plain = await psql(port, "SHOW cluster_name", sslmode="disable")
        assert plain.stdout.decode().strip() == "pgtls"
        # The app cannot get TLS from the ambassador on localhost: it was answered 'N'.
        refused = await psql(port, "SELECT 1", sslmode="require")
        assert refused.returncode != 0
        assert b"SSL" in refused.stderr
        nursery.cancel_scope.cancel()
    assert failures == []


@pytest.mark.slow
async def test_verify_full_refuses_a_certificate_that_does_not_verify(
    tls_postgres: PostgresCluster, tmp_path: Path
) -> None:
    other_ca = write_ca(trustme.CA(), tmp_path / "other.pem")
    upstream = (tls_postgres.host, tls_postgres.port)
    async with trio.open_nursery() as nursery:
        failures: list[str] = []
        tls = UpstreamTLS(ca_file=other_ca, sslmode="verify-full")
        port = await nursery.start(functools.partial(serve_pg_proxy, upstream, tls, failures))
        done = await psql(port, "SELECT 1")
        assert done.returncode != 0
        assert failures and "certificate verify failed" in failures[0]
        # sslmode=require encrypts without verifying (PgBouncer's meaning): it connects.
        loose: list[str] = []
        tls = UpstreamTLS(ca_file=other_ca, sslmode="require")
        port = await nursery.start(functools.partial(serve_pg_proxy, upstream, tls, loose))
        done = await psql(port, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().strip() == "t"
        assert loose == []
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_verify_full_checks_the_host_name(
    tls_postgres: PostgresCluster, server_ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = write_ca(server_ca, tmp_path / "ca.pem")
    upstream = (tls_postgres.host, tls_postgres.port)
    wrong_name = UpstreamTLS(ca_file=ca_file, server_name="db.elsewhere.test")
    with pytest.raises(UpstreamTLSError, match="certificate verify failed"):
        await open_upstream(upstream, wrong_name, "postgres")
    # verify-ca trusts the chain but not the name: it connects.
    ca_only = UpstreamTLS(ca_file=ca_file, server_name="db.elsewhere.test", sslmode="verify-ca")
    stream = await open_upstream(upstream, ca_only, "postgres")
    await stream.aclose()
