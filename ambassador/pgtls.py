"""PostgreSQL TLS negotiation: plaintext to the app, TLS to the server.

PostgreSQL does not start TLS on connect: the client sends an 8-byte
SSLRequest, the server answers one byte, 'S' (go on with the TLS handshake) or
'N' (no TLS here), and only then the StartupMessage follows. The ambassador
plays both roles:

- towards the app (localhost), ``read_client_startup`` answers the app's own
  SSLRequest (and GSSENCRequest) with 'N', so a libpq with ``sslmode=prefer``
  carries on in plaintext, and returns the app's StartupMessage (or
  CancelRequest) for the caller to forward;
- towards the server, ``negotiate_server_tls`` sends the SSLRequest and acts on
  the reply as PgBouncer's ``server_tls_sslmode`` does.

The decisions are pure (``ClientStartupReader``, ``server_reply_action``);
the two async functions only move bytes.

The server's reply is read with ``receive_some(1)``: one byte and no more, so
bytes a man-in-the-middle injects after the 'S' cannot be taken for TLS-protected
data (CVE-2021-23214 in the server, CVE-2021-23222 in libpq).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import trio

from .errors import AmbassadorError
from .tls import SslMode, UpstreamTLS, UpstreamTLSError, wrap_tls

__all__ = [
    "CANCEL_REQUEST_CODE",
    "GSSENC_REQUEST_CODE",
    "MAX_STARTUP_PACKET",
    "SSL_REQUEST",
    "SSL_REQUEST_CODE",
    "ClientGSSEncRequest",
    "ClientSSLRequest",
    "ClientStartup",
    "ClientStartupReader",
    "PgStartupError",
    "negotiate_server_tls",
    "read_client_startup",
    "server_reply_action",
]

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST = struct.pack("!ii", 8, SSL_REQUEST_CODE)
#: PostgreSQL's own MAX_STARTUP_PACKET_LENGTH: a longer "startup" is not PostgreSQL.
MAX_STARTUP_PACKET = 10000


class PgStartupError(AmbassadorError):
    """The app's first bytes are not a PostgreSQL startup sequence."""


@dataclass(frozen=True)
class ClientSSLRequest:
    """The app asked for TLS: answer 'N' (localhost is plaintext)."""


@dataclass(frozen=True)
class ClientGSSEncRequest:
    """The app asked for GSSAPI encryption: answer 'N' too."""


@dataclass(frozen=True)
class ClientStartup:
    """The first real packet (StartupMessage or CancelRequest) and whatever followed it."""

    data: bytes


ClientEvent = ClientSSLRequest | ClientGSSEncRequest | ClientStartup


class ClientStartupReader:
    """Sans-I/O reader of the app's first packets: feed bytes, get events.

    After a ``ClientStartup`` the reader is done (the rest is the relay's).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.done = False

    def feed(self, data: bytes) -> list[ClientEvent]:
        if self.done:
            raise PgStartupError("startup already read")
        self._buf += data
        events: list[ClientEvent] = []
        while not self.done and len(self._buf) >= 4:
            (length,) = struct.unpack_from("!i", self._buf, 0)
            if length < 8 or length > MAX_STARTUP_PACKET:
                raise PgStartupError(f"invalid startup packet length {length}")
            if len(self._buf) < 8:
                break
            (code,) = struct.unpack_from("!i", self._buf, 4)
            if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
                if length != 8:
                    raise PgStartupError(f"invalid encryption request length {length}")
                del self._buf[:8]
                events.append(
                    ClientSSLRequest() if code == SSL_REQUEST_CODE else ClientGSSEncRequest()
                )
                continue
            if len(self._buf) < length:
                break
            self.done = True
            events.append(ClientStartup(bytes(self._buf)))
            self._buf.clear()
        return events


def server_reply_action(sslmode: SslMode, reply: bytes) -> Literal["tls", "plain"]:
    """What to do with the server's answer to our SSLRequest, per ``sslmode``.

    Raises ``UpstreamTLSError`` when the mode cannot be satisfied.
    """
    if reply == b"S":
        return "tls"
    if reply == b"N":
        if sslmode == "prefer":
            return "plain"
        raise UpstreamTLSError(f"server does not support TLS (sslmode {sslmode})")
    if reply == b"":
        raise UpstreamTLSError("server closed the connection after SSLRequest")
    if reply == b"E":
        raise UpstreamTLSError("server answered SSLRequest with an error")
    raise UpstreamTLSError(f"unexpected answer to SSLRequest: {reply!r}")


async def negotiate_server_tls(
    stream: trio.abc.HalfCloseableStream, tls: UpstreamTLS, host: str
) -> trio.abc.HalfCloseableStream:
    """SSLRequest to the server on a fresh connection; TLS-wrapped (or plain for prefer/'N').

    Closes ``stream`` on failure. ``sslmode = "disable"`` returns it untouched.
    """
    if tls.sslmode == "disable":
        return stream
    try:
        await stream.send_all(SSL_REQUEST)
        reply = await stream.receive_some(1)
        action = server_reply_action(tls.sslmode, bytes(reply))
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        raise UpstreamTLSError(f"server reset during SSLRequest: {exc}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    if action == "plain":
        return stream
    return await wrap_tls(stream, tls.for_postgres(), host)


async def read_client_startup(stream: trio.abc.Stream) -> bytes:
    """Answer the app's SSLRequest/GSSENCRequest with 'N'; return its StartupMessage bytes.

    The returned bytes (the startup or cancel packet, plus anything the app
    sent right after) must be sent upstream before relaying. b"" means the app
    closed before sending a startup packet. Raises ``PgStartupError`` on bytes
    that are not PostgreSQL. Bound time with a cancel scope (a silent client).
    """
    reader = ClientStartupReader()
    while True:
        data = await stream.receive_some(16384)
        if not data:
            return b""
        for event in reader.feed(bytes(data)):
            if isinstance(event, ClientStartup):
                return event.data
            await stream.send_all(b"N")
