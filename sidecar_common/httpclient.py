"""A small HTTP/1.1 client: h11 pumped over a trio TCP stream.

For the sidecars' own outbound calls: the watcher's webhooks, the
ambassador's HTTP health checks and the etcd JSON gateway (including its
streamed watch responses). Deliberately small:

* ``http://`` only (these calls stay inside the pod or the cluster network);
* one request per connection (``Connection: close``): no pool to go stale;
* no timeouts of its own: the caller bounds time with ``trio.fail_after`` or
  ``trio.move_on_after`` around the call, as trio intends;
* every OS, trio and h11 error is translated once, here, into
  ``HttpClientError``; callers catch exactly one exception type.

Response bodies with ``Content-Length``, chunked transfer encoding or read
until EOF are all handled by h11.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

import h11
import trio

from .errors import SidecarError

DEFAULT_MAX_BODY = 16 * 1024 * 1024
#: Largest response head we accept; more is a broken or hostile server.
MAX_HEAD_BYTES = 65536
RECEIVE_SIZE = 65536
USER_AGENT = "sidecars/0.1"

HeaderList = list[tuple[str, str]]


def header_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The last value of header ``name`` (case-insensitive) in lowercased-name ``headers``.

    The one lookup for the admin server's requests and the client's responses:
    both keep h11's lowercased names, and a repeated header's last value wins.
    """
    name = name.lower()
    found = None
    for k, v in headers:
        if k == name:
            found = v
    return found


class HttpClientError(SidecarError):
    """The request could not be completed: bad URL, connect failure, broken
    connection, protocol violation by the server, or a body over the cap.

    An HTTP error *status* (404, 500) is not an exception: it is a response.
    """


@dataclass
class HttpResponse:
    status: int
    headers: HeaderList
    body: bytes

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (case-insensitive), or None."""
        return header_value(self.headers, name)

    def json(self) -> object:
        """The body parsed as JSON; ``HttpClientError`` if it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpClientError(f"response body is not JSON: {exc}") from exc


class StreamedResponse(NamedTuple):
    """What ``open_stream`` yields; unpacks as ``status, headers, body_chunks``."""

    status: int
    headers: HeaderList
    body_chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    host_header: str
    target: str


def _parse_url(url: str) -> _Target:
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError as exc:
        raise HttpClientError(f"bad URL {url!r}: {exc}") from exc
    if split.scheme != "http":
        raise HttpClientError(f"bad URL {url!r}: only http:// is supported")
    host = split.hostname
    if not host:
        raise HttpClientError(f"bad URL {url!r}: no host")
    if port is None:
        port = 80
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == 80 else f"{shown}:{port}"
    target = (split.path or "/") + (f"?{split.query}" if split.query else "")
    return _Target(host, port, host_header, target)


@contextlib.contextmanager
def _translate_errors(url: str) -> Iterator[None]:
    """The one place foreign errors become ``HttpClientError``."""
    try:
        yield
    except OSError as exc:
        raise HttpClientError(f"{url}: {exc.strerror or exc}") from exc
    except trio.BrokenResourceError as exc:
        raise HttpClientError(f"{url}: connection broken: {exc.__cause__ or exc}") from exc
    except h11.ProtocolError as exc:
        raise HttpClientError(f"{url}: HTTP protocol error: {exc}") from exc


class _Exchange:
    """One request/response on one connection; the h11 pump."""

    def __init__(self, stream: trio.SocketStream, url: str) -> None:
        self.stream = stream
        self.url = url
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)

    async def _next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(bytes(await self.stream.receive_some(RECEIVE_SIZE)))

    async def send_request(
        self, method: str, target: _Target, headers: Iterable[tuple[str, str]], body: bytes
    ) -> None:
        given = [(k, v) for k, v in headers]
        names = {k.lower() for k, _ in given}
        out: HeaderList = [("host", target.host_header)] if "host" not in names else []
        out += given
        if "user-agent" not in names:
            out.append(("user-agent", USER_AGENT))
        if body or method.upper() in ("POST", "PUT", "PATCH"):
            out.append(("content-length", str(len(body))))
        out.append(("connection", "close"))
        data = self.conn.send(h11.Request(method=method.upper(), target=target.target, headers=out))
        if body:
            data = (data or b"") + (self.conn.send(h11.Data(data=body)) or b"")
        data = (data or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        await self.stream.send_all(data)

    async def receive_head(self) -> tuple[int, HeaderList]:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and friends
            if isinstance(event, h11.Response):
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
                return event.status_code, headers
            raise HttpClientError(f"{self.url}: connection closed before a response")

    async def receive_chunk(self) -> bytes | None:
        """The next piece of body, or None at its end."""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
                continue
            if isinstance(event, h11.EndOfMessage):
                return None
            raise HttpClientError(f"{self.url}: connection closed in the middle of the body")


async def request(
    method: str,
    url: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    max_body: int = DEFAULT_MAX_BODY,
) -> HttpResponse:
    """Send one request and read the whole response (at most ``max_body`` bytes of body)."""
    target = _parse_url(url)
    with _translate_errors(url):
        stream = await trio.open_tcp_stream(target.host, target.port)
        try:
            exchange = _Exchange(stream, url)
            await exchange.send_request(method, target, headers, body)
            status, resp_headers = await exchange.receive_head()
            chunks: list[bytes] = []
            size = 0
            while (chunk := await exchange.receive_chunk()) is not None:
                size += len(chunk)
                if size > max_body:
                    raise HttpClientError(f"{url}: response body larger than {max_body} bytes")
                chunks.append(chunk)
            return HttpResponse(status, resp_headers, b"".join(chunks))
        finally:
            await trio.aclose_forcefully(stream)


class _BodyChunks:
    """Async iterator over a streamed body; errors translated like the rest.

    A class, not an async generator: async generators that are abandoned
    mid-iteration are finalised outside their cancel scope in trio.
    """

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange
        self._done = False

    def __aiter__(self) -> _BodyChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        with _translate_errors(self._exchange.url):
            chunk = await self._exchange.receive_chunk()
        if chunk is None:
            self._done = True
            raise StopAsyncIteration
        return chunk


@contextlib.asynccontextmanager
async def open_stream(
    method: str,
    url: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> AsyncIterator[StreamedResponse]:
    """Send one request and yield ``(status, headers, body_chunks)`` once the head arrives.

    For long-lived responses (an etcd watch): iterate ``body_chunks`` as data
    comes; leaving the ``async with`` closes the connection.
    """
    target = _parse_url(url)
    with _translate_errors(url):
        stream = await trio.open_tcp_stream(target.host, target.port)
    try:
        exchange = _Exchange(stream, url)
        with _translate_errors(url):
            await exchange.send_request(method, target, headers, body)
            status, resp_headers = await exchange.receive_head()
        yield StreamedResponse(status, resp_headers, _BodyChunks(exchange))
    finally:
        await trio.aclose_forcefully(stream)
