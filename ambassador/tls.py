"""TLS origination: the app speaks plaintext on localhost, the ambassador speaks TLS upstream.

``UpstreamTLS`` is the validated, frozen setting (one per listener or per
environment); ``ssl_context`` turns it into an ``ssl.SSLContext``, cached and
rebuilt only when a certificate file changes on disk (a mounted Secret rotates
under a running pod). ``open_upstream`` is the one call the listener makes
to reach an endpoint: plain TCP, TLS, or PostgreSQL's SSLRequest negotiation,
already done when it returns.

Errors: a handshake or verification failure is ``UpstreamTLSError``, which is
both an ``AmbassadorError`` (our root) and a ``ConnectionError``: the
listener's connect loop already treats ``OSError`` as "this endpoint failed,
try the next one", so TLS failures fall into the same path (counted against
the endpoint by outlier detection, retried on another endpoint).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import trio

from sidecar_common.errors import ConfigError

from .errors import AmbassadorError
from .tcp import open_tcp

__all__ = [
    "SSLMODES",
    "SslMode",
    "TLSStream",
    "UpstreamTLS",
    "UpstreamTLSError",
    "open_tls_stream",
    "open_upstream",
    "parse_upstream_tls",
    "ssl_context",
    "wrap_tls",
]

SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
#: PgBouncer's ``server_tls_sslmode`` values (without ``allow``, which only
#: differs from ``prefer`` in the order of attempts and is not worth a setting).
SSLMODES: tuple[str, ...] = ("disable", "prefer", "require", "verify-ca", "verify-full")

TLSVersion = Literal["1.2", "1.3"]
#: Setting -> ``ssl.TLSVersion`` member name (names, not members: nothing of
#: ``ssl`` is touched at import, so a process without TLS never loads OpenSSL).
_VERSIONS: dict[str, str] = {"1.2": "TLSv1_2", "1.3": "TLSv1_3"}


class UpstreamTLSError(AmbassadorError, ConnectionError):
    """TLS to an upstream could not be established (handshake, verification, server refused)."""


@dataclass(frozen=True)
class UpstreamTLS:
    """How to speak TLS to an upstream endpoint.

    ``verify`` checks the certificate chain against ``ca_file`` (the system
    trust store when None); ``check_hostname`` also checks that the certificate
    names ``server_name`` (default: the endpoint's host). ``cert_file`` and
    ``key_file`` present a client certificate (mTLS to the backend).

    ``sslmode`` matters only for PostgreSQL listeners, where it decides both
    whether TLS is attempted and how the certificate is checked, as PgBouncer's
    ``server_tls_sslmode`` does: ``disable`` plain, ``prefer`` TLS when the server
    offers it (no verification), ``require`` TLS or fail (no verification),
    ``verify-ca`` TLS with the chain verified, ``verify-full`` chain and host name.
    """

    ca_file: Path | None = None
    server_name: str | None = None
    verify: bool = True
    check_hostname: bool = True
    cert_file: Path | None = None
    key_file: Path | None = None
    min_version: TLSVersion = "1.2"
    sslmode: SslMode = "verify-full"

    def for_postgres(self) -> UpstreamTLS:
        """The same settings with ``verify``/``check_hostname`` as ``sslmode`` dictates."""
        verify = self.sslmode in ("verify-ca", "verify-full")
        return UpstreamTLS(
            ca_file=self.ca_file,
            server_name=self.server_name,
            verify=verify,
            check_hostname=self.sslmode == "verify-full",
            cert_file=self.cert_file,
            key_file=self.key_file,
            min_version=self.min_version,
            sslmode=self.sslmode,
        )


# --------------------------------------------------------------------------- config

_TLS_KEYS = (
    "ca_file",
    "server_name",
    "verify",
    "check_hostname",
    "cert_file",
    "key_file",
    "min_version",
    "sslmode",
)


def _file(value: object, path: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, value, "a file path")
    return Path(value.strip())


def parse_upstream_tls(value: object, path: str, *, protocol: str) -> UpstreamTLS | None:
    """Validate a ``tls`` table of the config; None when TLS is off.

    Accepts ``true`` (TLS with defaults), ``false`` (off), or a table with the
    keys of ``UpstreamTLS``. Errors name the key under ``path``
    (``listeners[0].tls.ca_file``). Files are checked for existence here so a
    typo fails at start-up, not at the first connection.
    """
    if isinstance(value, bool):
        if not value:
            return None
        return UpstreamTLS()
    if not isinstance(value, Mapping):
        raise ConfigError(path, value, "true, false or a table")
    table = {str(k).replace("-", "_"): v for k, v in value.items()}
    for key in table:
        if key not in _TLS_KEYS:
            raise ConfigError(f"{path}.{key}", table[key], f"a known key ({', '.join(_TLS_KEYS)})")
    kwargs: dict[str, Any] = {}
    for key in ("ca_file", "cert_file", "key_file"):
        if key in table:
            file = _file(table[key], f"{path}.{key}")
            if not file.is_file():
                raise ConfigError(f"{path}.{key}", table[key], "an existing readable file")
            kwargs[key] = file
    if "server_name" in table:
        name = table["server_name"]
        if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
            raise ConfigError(f"{path}.server_name", name, "a host name")
        kwargs["server_name"] = name.strip()
    for key in ("verify", "check_hostname"):
        if key in table:
            if not isinstance(table[key], bool):
                raise ConfigError(f"{path}.{key}", table[key], "true or false")
            kwargs[key] = table[key]
    if "min_version" in table:
        version = str(table["min_version"])
        if version not in _VERSIONS:
            raise ConfigError(f"{path}.min_version", table["min_version"], '"1.2" or "1.3"')
        kwargs["min_version"] = version
    if "sslmode" in table:
        if protocol != "postgres":
            raise ConfigError(
                f"{path}.sslmode", table["sslmode"], 'sslmode only with protocol = "postgres"'
            )
        if table["sslmode"] not in SSLMODES:
            raise ConfigError(f"{path}.sslmode", table["sslmode"], f"one of {', '.join(SSLMODES)}")
        kwargs["sslmode"] = table["sslmode"]
    if ("cert_file" in kwargs) != ("key_file" in kwargs):
        missing = "key_file" if "cert_file" in kwargs else "cert_file"
        raise ConfigError(f"{path}.{missing}", None, "cert_file and key_file together")
    tls = UpstreamTLS(**kwargs)
    if not tls.verify and tls.check_hostname and "check_hostname" in kwargs:
        raise ConfigError(f"{path}.check_hostname", True, "false when verify = false")
    if not tls.verify:
        tls = UpstreamTLS(**{**kwargs, "check_hostname": False})
    if protocol == "postgres" and tls.sslmode == "disable":
        return None
    if tls.cert_file is not None:
        try:
            _build_context(tls)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{path}.cert_file", str(tls.cert_file), f"a certificate and key that load ({exc})"
            ) from None
    return tls


# --------------------------------------------------------------------------- contexts


def _build_context(tls: UpstreamTLS) -> ssl.SSLContext:
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file is not None else None
    )
    ctx.minimum_version = ssl.TLSVersion[_VERSIONS[tls.min_version]]
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = tls.check_hostname
    if tls.cert_file is not None:
        ctx.load_cert_chain(
            str(tls.cert_file), str(tls.key_file) if tls.key_file is not None else None
        )
    return ctx


def _file_stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


_contexts: dict[UpstreamTLS, tuple[tuple[object, ...], ssl.SSLContext]] = {}


def ssl_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """The ``SSLContext`` for ``tls``, built once and rebuilt when a file it reads changed.

    A stat of up to three files per connection is the price of following a
    rotated Secret without a restart; building a context (parsing a CA bundle)
    per connection would cost far more.
    """
    stamp = (_file_stamp(tls.ca_file), _file_stamp(tls.cert_file), _file_stamp(tls.key_file))
    cached = _contexts.get(tls)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        ctx = _build_context(tls)
    except (OSError, ssl.SSLError) as exc:
        raise UpstreamTLSError(f"cannot load TLS files: {exc}") from None
    _contexts[tls] = (stamp, ctx)
    return ctx


# --------------------------------------------------------------------------- streams


class TLSStream(trio.abc.HalfCloseableStream):
    """A client ``trio.SSLStream`` that fits the relay's half-closeable interface.

    TLS has no half-close (close_notify ends both directions), so ``send_eof``
    only stops our sending: the other direction keeps flowing until the server
    closes, which is what PostgreSQL (Terminate, then close) and HTTP do.
    ``socket`` is the TCP socket underneath, for ``relay.abort_stream`` (RST).
    """

    def __init__(self, ssl_stream: trio.SSLStream[trio.abc.Stream]) -> None:
        self.ssl_stream = ssl_stream
        transport = ssl_stream.transport_stream
        self.socket = getattr(transport, "socket", None)
        self._eof_sent = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof() was called")
        await self.ssl_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.ssl_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        self._eof_sent = True

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.ssl_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.ssl_stream.aclose()


async def wrap_tls(stream: trio.abc.Stream, tls: UpstreamTLS, host: str) -> TLSStream:
    """Run the TLS handshake over ``stream`` as a client; returns the wrapped stream.

    ``host`` is the endpoint's host, used for SNI and the host-name check
    unless ``server_name`` says otherwise. On failure the transport is closed
    and ``UpstreamTLSError`` says why (for the access log and connect-failure log).
    """
    ctx = ssl_context(tls)
    server_name = tls.server_name or host
    ssl_stream = trio.SSLStream(stream, ctx, server_hostname=server_name, https_compatible=True)
    try:
        await ssl_stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = f"certificate verify failed: {cause.verify_message}"
        elif cause is not None:
            reason = f"TLS handshake failed: {cause}"
        else:
            reason = "TLS handshake failed: connection closed"
        raise UpstreamTLSError(reason) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return TLSStream(ssl_stream)


async def open_tls_stream(address: tuple[str, int], tls: UpstreamTLS) -> TLSStream:
    """TCP connect to ``address`` and complete the TLS handshake (the caller bounds time)."""
    tcp = await open_tcp(address)
    return await wrap_tls(tcp, tls, address[0])


Connector = Callable[[str, int], Awaitable[trio.abc.HalfCloseableStream]]


async def _tcp(host: str, port: int) -> trio.abc.HalfCloseableStream:
    return await open_tcp((host, port))


async def open_upstream(
    address: tuple[str, int],
    tls: UpstreamTLS | None,
    protocol: str = "tcp",
    *,
    connect: Connector = _tcp,
) -> trio.abc.HalfCloseableStream:
    """Connect to an endpoint, ready for the app's bytes: plain, TLS, or PostgreSQL-negotiated TLS.

    - ``tls`` None: a plain TCP stream (``trio.SocketStream``: half-closeable).
    - ``protocol`` "postgres": SSLRequest first; the server's 'S' starts the
      handshake, its 'N' gives plaintext (``sslmode = prefer``) or
      ``UpstreamTLSError`` (``require`` and stricter).
    - otherwise: TLS handshake right after connect.

    The caller bounds the whole thing with its connect timeout
    (``trio.fail_after``); raises ``OSError`` (``UpstreamTLSError`` included).
    A TLS result is a ``TLSStream``: its ``send_eof`` only stops sending (TLS
    has no half-close), and its ``socket`` attribute lets ``abort_stream`` reset it.
    """
    host, port = address
    stream = await connect(host, port)
    if tls is None:
        return stream
    if protocol == "postgres":
        from .pgtls import negotiate_server_tls

        return await negotiate_server_tls(stream, tls, host)
    return await wrap_tls(stream, tls, host)
