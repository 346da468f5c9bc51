"""TLS origination against a real TLS server of the test's own (certificates from trustme)."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trustme

from ambassador.relay import RelayCounters, relay
from ambassador.tls import (
    TLSStream,
    UpstreamTLS,
    UpstreamTLSError,
    open_upstream,
    parse_upstream_tls,
    ssl_context,
)
from sidecar_common.errors import ConfigError


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pki(ca: trustme.CA, tmp_path: Path) -> dict[str, Path]:
    other = trustme.CA()
    client = ca.issue_cert("app.client.test")
    files = {
        "ca": tmp_path / "ca.pem",
        "other_ca": tmp_path / "other-ca.pem",
        "client_cert": tmp_path / "client.crt",
        "client_key": tmp_path / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    other.cert_pem.write_to_path(str(files["other_ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return files


@asynccontextmanager
async def tls_echo_server(
    ca: trustme.CA, *, require_client_cert: bool = False, names: tuple[str, ...] = ("127.0.0.1",)
) -> AsyncIterator[tuple[int, list[str]]]:
    """A TLS echo server on 127.0.0.1; yields (port, peers) where peers lists client cert names."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    peers: list[str] = []

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
            cert = stream.getpeercert()
            if cert:
                peers.extend(str(value) for _, value in cert.get("subjectAltName", ()))
            async for data in stream:
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_ssl_over_tcp, handler, 0, ctx, host="127.0.0.1")
        )
        port = listeners[0].transport_listener.socket.getsockname()[1]
        yield port, peers
        nursery.cancel_scope.cancel()


async def roundtrip(stream: trio.abc.Stream, payload: bytes = b"hello tls") -> bytes:
    await stream.send_all(payload)
    got = b""
    while len(got) < len(payload):
        got += await stream.receive_some(1024)
    return got


async def test_verified_tls_roundtrip(ca: trustme.CA, pki: dict[str, Path]) -> None:
    async with tls_echo_server(ca) as (port, _):
        stream = await open_upstream(("127.0.0.1", port), UpstreamTLS(ca_file=pki["ca"]), "tcp")
        assert isinstance(stream, TLSStream)
        assert await roundtrip(stream) == b"hello tls"
        await stream.aclose()


async def test_unknown_ca_is_refused(ca: trustme.CA, pki: dict[str, Path]) -> None:
    async with tls_echo_server(ca) as (port, _):
        with pytest.raises(UpstreamTLSError, match="certificate verify failed") as info:
            await open_upstream(("127.0.0.1", port), UpstreamTLS(ca_file=pki["other_ca"]), "tcp")
        # The listener's connect loop catches OSError: TLS failures take the same path.
        assert isinstance(info.value, OSError)


async def test_server_name_mismatch_and_override(ca: trustme.CA, pki: dict[str, Path]) -> None:
    async with tls_echo_server(ca, names=("db.internal.test",)) as (port, _):
        with pytest.raises(UpstreamTLSError, match="certificate verify failed"):
            await open_upstream(("127.0.0.1", port), UpstreamTLS(ca_file=pki["ca"]), "tcp")
        tls = UpstreamTLS(ca_file=pki["ca"], server_name="db.internal.test")
        stream = await open_upstream(("127.0.0.1", port), tls, "tcp")
        assert await roundtrip(stream) == b"hello tls"
        await stream.aclose()


async def test_verify_off_accepts_any_certificate(ca: trustme.CA, pki: dict[str, Path]) -> None:
    async with tls_echo_server(ca) as (port, _):
        tls = UpstreamTLS(ca_file=pki["other_ca"], verify=False, check_hostname=False)
        stream = await open_upstream(("127.0.0.1", port), tls, "tcp")
        assert await roundtrip(stream) == b"hello tls"
        await stream.aclose()


async def test_mutual_tls(ca: trustme.CA, pki: dict[str, Path]) -> None:
    async with tls_echo_server(ca, require_client_cert=True) as (port, peers):
        without = UpstreamTLS(ca_file=pki["ca"])
        with pytest.raises(UpstreamTLSError):
            stream = await open_upstream(("127.0.0.1", port), without, "tcp")
            # TLS 1.3: the server's refusal of a missing client cert may arrive after
            # the client's handshake completes, at the first read.
            try:
                await roundtrip(stream)
            except trio.BrokenResourceError as exc:
                raise UpstreamTLSError(str(exc)) from exc
        with_cert = UpstreamTLS(
            ca_file=pki["ca"], cert_file=pki["client_cert"], key_file=pki["client_key"]
        )
        stream = await open_upstream(("127.0.0.1", port), with_cert, "tcp")
        assert await roundtrip(stream) == b"hello tls"
        await stream.aclose()
        assert peers == ["app.client.test"]


async def test_relay_over_tls_upstream(ca: trustme.CA, pki: dict[str, Path]) -> None:
    """The shell's byte relay runs unchanged over a TLS upstream (TLSStream is half-closeable)."""
    async with tls_echo_server(ca) as (port, _):
        upstream = await open_upstream(("127.0.0.1", port), UpstreamTLS(ca_file=pki["ca"]), "tcp")
        app_side, proxy_side = trio.testing.memory_stream_pair()
        counters = RelayCounters()
        async with trio.open_nursery() as nursery:

            async def run_relay() -> None:
                await relay(proxy_side, upstream, counters)

            nursery.start_soon(run_relay)
            assert await roundtrip(app_side, b"through the relay") == b"through the relay"
            # TLS has no half-close: the app's EOF must not break the relay.
            await app_side.send_eof()
            await trio.testing.wait_all_tasks_blocked()
            assert counters.bytes_in == len(b"through the relay")
            nursery.cancel_scope.cancel()
        await upstream.aclose()
        assert counters.bytes_in == counters.bytes_out == len(b"through the relay")


def test_context_cached_and_rebuilt_on_file_change(ca: trustme.CA, pki: dict[str, Path]) -> None:
    tls = UpstreamTLS(ca_file=pki["ca"])
    first = ssl_context(tls)
    assert ssl_context(tls) is first
    # A rotated Secret: new content (and inode) at the same path.
    replacement = pki["ca"].with_suffix(".new")
    trustme.CA().cert_pem.write_to_path(str(replacement))
    replacement.replace(pki["ca"])
    assert ssl_context(tls) is not first


def test_context_settings(pki: dict[str, Path]) -> None:
    ctx = ssl_context(UpstreamTLS(ca_file=pki["ca"], min_version="1.3"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    loose = ssl_context(UpstreamTLS(verify=False, check_hostname=False))
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname


# ----------------------------------------------------------------------- config table


def test_parse_tls_table(pki: dict[str, Path]) -> None:
    assert parse_upstream_tls(False, "tls", protocol="tcp") is None
    assert parse_upstream_tls(True, "tls", protocol="http") == UpstreamTLS()
    tls = parse_upstream_tls(
        {
            "ca-file": str(pki["ca"]),
            "server_name": "db.test",
            "cert_file": str(pki["client_cert"]),
            "key_file": str(pki["client_key"]),
            "min_version": "1.3",
        },
        "listeners[0].tls",
        protocol="tcp",
    )
    assert tls == UpstreamTLS(
        ca_file=pki["ca"],
        server_name="db.test",
        cert_file=pki["client_cert"],
        key_file=pki["client_key"],
        min_version="1.3",
    )
    assert parse_upstream_tls({"verify": False}, "t", protocol="tcp") == UpstreamTLS(
        verify=False, check_hostname=False
    )
    pg = parse_upstream_tls({"sslmode": "require"}, "t", protocol="postgres")
    assert pg is not None and pg.sslmode == "require"
    assert parse_upstream_tls({"sslmode": "disable"}, "t", protocol="postgres") is None


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"ca_file": "/nonexistent/ca.pem"}, "listeners[0].tls.ca_file"),
        ({"cafile": "x"}, "listeners[0].tls.cafile"),
        ({"verify": "yes"}, "listeners[0].tls.verify"),
        ({"min_version": "1.1"}, "listeners[0].tls.min_version"),
        ({"sslmode": "verify-full"}, "listeners[0].tls.sslmode"),  # not a postgres listener
        ({"server_name": "a b"}, "listeners[0].tls.server_name"),
        ({"verify": False, "check_hostname": True}, "listeners[0].tls.check_hostname"),
    ],
)
def test_parse_tls_errors_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_upstream_tls(table, "listeners[0].tls", protocol="tcp")
    assert info.value.setting == key


def test_parse_tls_cert_needs_key(pki: dict[str, Path]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_upstream_tls({"cert_file": str(pki["client_cert"])}, "tls", protocol="tcp")
    assert info.value.setting == "tls.key_file"
    with pytest.raises(ConfigError) as info:
        parse_upstream_tls({"sslmode": "sometimes"}, "tls", protocol="postgres")
    assert info.value.setting == "tls.sslmode"
