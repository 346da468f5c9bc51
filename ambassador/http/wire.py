"""HTTP/1.1 on the wire: llhttp parsers (httptools) and head/body framing. Pure, no I/O.

Both sides of the proxy parse with llhttp, Node's parser: strict by default
where request smuggling lives (Content-Length with Transfer-Encoding, a
duplicated or malformed Content-Length, obs-fold, bare LF or CR, a
Transfer-Encoding whose last coding is not chunked are all errors), and a C
parser costs about a microsecond per request where h11 cost ~70 us per
side. What llhttp accepts but an HTTP/1.1 proxy must not (HTTP/0.9 and 2.0
request lines) is refused here.

A reader is fed bytes (``b""`` is EOF) and hands out events in order:

    RequestHead / ResponseHead   the parsed head (header names lower-cased)
    bytes                        body bytes, de-chunked
    END                          the message ended
    CLOSED                       EOF between messages (or mid-message: the
                                 shell treats that as the peer gone)
    BadRequest / BadResponse     the peer broke HTTP; nothing after it

Heads are written back by hand (``request_head``, ``response_head``); a body
is forwarded as it comes, re-framed by ``frame_chunk``/``LAST_CHUNK`` when it
travels chunked. The limits: a request head over ``max_header_bytes`` is 431
(measured on the parsed head, and bounded while it arrives, so a never-ending
header line cannot grow memory past one read beyond the limit).
"""

from __future__ import annotations

from typing import Final

import httptools

__all__ = [
    "CLOSED",
    "END",
    "LAST_CHUNK",
    "BadRequest",
    "BadResponse",
    "Framing",
    "ProtocolError",
    "RequestHead",
    "RequestReader",
    "ResponseHead",
    "ResponseReader",
    "frame_chunk",
    "header_lines",
    "request_head",
    "response_head",
]


class ProtocolError(Exception):
    """A peer broke HTTP/1.1 (the events ``BadRequest``/``BadResponse`` are its kinds)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        #: What to answer the client with (400, 431), as h11's ``error_status_hint``.
        self.status = status


class BadRequest(ProtocolError):
    """The client sent something that is not a valid HTTP/1.x request."""


class BadResponse(ProtocolError):
    """The upstream sent something that is not a valid HTTP/1.x response."""


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: The message ended (after its head, or after its last body bytes).
END: Final = _Marker("END")
#: The peer closed its side.
CLOSED: Final = _Marker("CLOSED")


class Framing:
    """How a message body is delimited."""

    NONE: Final = 0  # no body (GET without one, HEAD/204/304 responses, 1xx)
    LENGTH: Final = 1  # Content-Length
    CHUNKED: Final = 2  # Transfer-Encoding: chunked
    CLOSE: Final = 3  # responses only: until the upstream closes


class RequestHead:
    """A parsed request head."""

    __slots__ = (
        "content_length",
        "expect_continue",
        "framing",
        "headers",
        "keep_alive",
        "method",
        "size",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        *,
        keep_alive: bool,
        framing: int,
        content_length: int,
        upgrade: bool,
        expect_continue: bool,
        size: int,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.framing = framing
        self.content_length = content_length
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        #: Bytes of the head as sent (request line, header lines, blank line).
        self.size = size


class ResponseHead:
    """A parsed response head (an informational 1xx too)."""

    __slots__ = ("framing", "headers", "keep_alive", "reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        *,
        keep_alive: bool,
        framing: int,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.framing = framing


Event = object  # RequestHead | ResponseHead | bytes | END | CLOSED | ProtocolError


class _Reader:
    """What both readers share: the event list, EOF, and error handling."""

    #: Read size the shell uses; a head still arriving may exceed the limit by this much.
    SLACK = 65536
    _parser: httptools.HttpRequestParser | httptools.HttpResponseParser  # each subclass's own

    def __init__(self, max_header_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self._events: list[Event] = []
        self._pos = 0
        self._begin: int | None = None  # index of the current message's first event, this feed
        self._in_head = False
        self._pending = 0  # bytes fed while a head was incomplete
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._error: ProtocolError | None = None  # raised from a callback
        self.failed = False
        #: Raw bytes after a protocol switch (the start of the tunnel).
        self.trailing = b""
        self.switched = False

    def next_event(self) -> Event | None:
        """The next event, or None: feed more bytes."""
        pos = self._pos
        if pos < len(self._events):
            self._pos = pos + 1
            return self._events[pos]
        return None

    def peek(self) -> Event | None:
        """The event ``next_event`` would return, left in place."""
        pos = self._pos
        return self._events[pos] if pos < len(self._events) else None

    def feed(self, data: bytes) -> None:
        """Parse ``data`` (``b""``: EOF); call only when ``next_event`` returned None."""
        self._events.clear()
        self._pos = 0
        self._begin = None
        if self.failed:
            return
        if self.switched:
            self.trailing += data
            return
        if not data:
            self._at_eof()
            self._events.append(CLOSED)
            return
        if self._repeat(data):
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Upgrade or CONNECT: the head is complete, the rest is not HTTP.
            self.switched = True
            self.trailing = data[exc.args[0] :]
        except httptools.HttpParserCallbackError:
            self._fail(self._error or self._invalid(None))
        except httptools.HttpParserError as exc:
            self._fail(self._invalid(exc))
        else:
            if self._in_head:
                self._pending += len(data)
                if self._pending > self.max_header_bytes + self.SLACK:
                    self._fail(self._too_large())

    def _repeat(self, data: bytes) -> bool:
        """Read ``data`` without llhttp when it repeats a message llhttp read (responses)."""
        return False

    # What the two readers say differently (the error wording is each side's).

    def _at_eof(self) -> None:
        """The connection ended: events owed before ``CLOSED`` (none for a request)."""

    def _invalid(self, exc: httptools.HttpParserError | None) -> ProtocolError:
        """The error for bytes llhttp refused (``exc``), or for a callback's refusal."""
        raise NotImplementedError

    def _too_large(self) -> ProtocolError:
        """The error for a head over ``max_header_bytes``."""
        raise NotImplementedError

    def _fail(self, error: ProtocolError) -> None:
        if self._begin is not None:
            # Nothing of the broken message may be acted on (its head may
            # already be parsed: llhttp rejects some framing only after it).
            del self._events[self._begin :]
        self._events.append(error)
        self.failed = True

    # llhttp callbacks shared by both parsers

    def on_message_begin(self) -> None:
        self._begin = len(self._events)
        self._in_head = True
        self._url = b""
        self._headers = []
        self._head_size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._head_size += len(name) + len(value) + 4

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._begin = None  # complete: its events stand whatever follows
        self._events.append(END)


class RequestReader(_Reader):
    """The app's requests on one client connection (keep-alive, pipelining)."""

    def __init__(self, max_header_bytes: int) -> None:
        super().__init__(max_header_bytes)
        self._parser: httptools.HttpRequestParser = httptools.HttpRequestParser(self)

    def _invalid(self, exc: httptools.HttpParserError | None) -> ProtocolError:
        return BadRequest((str(exc) if exc is not None else "") or "invalid request")

    def _too_large(self) -> ProtocolError:
        return BadRequest("request header section too large", 431)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._pending = 0
        p = self._parser
        version = p.get_http_version()
        method = p.get_method()
        # Request line: two spaces, "HTTP/1.x", CRLF (12); the blank line (2).
        size = len(method) + len(self._url) + 14 + self._head_size
        if size > self.max_header_bytes:
            self._error = BadRequest("request header section too large", 431)
            raise self._error
        if version != "1.1" and version != "1.0":
            self._error = BadRequest(f"unsupported HTTP version {version!r}")
            raise self._error
        framing = Framing.NONE
        length = 0
        expect = False
        upgrade = False
        for name, value in self._headers:
            if name == b"content-length":
                length = int(value)  # llhttp checked: digits only, one header
                framing = Framing.LENGTH if length else Framing.NONE
            elif name == b"transfer-encoding":
                # llhttp refuses a last coding other than chunked only when the
                # body starts; refuse it with the head, before anything is sent on.
                if value.rsplit(b",", 1)[-1].strip().lower() != b"chunked":
                    self._error = BadRequest("Transfer-Encoding must end with chunked")
                    raise self._error
                framing = Framing.CHUNKED
            elif name == b"expect":
                expect = value.lower() == b"100-continue"
            elif name == b"upgrade":
                upgrade = True
        self._events.append(
            RequestHead(
                method,
                self._url,
                version,
                self._headers,
                keep_alive=p.should_keep_alive(),
                framing=framing,
                content_length=length,
                upgrade=upgrade and p.should_upgrade(),
                expect_continue=expect,
                size=size,
            )
        )


class ResponseReader(_Reader):
    """The upstream's responses on one upstream connection.

    ``start(method)`` before each request: a response to HEAD has no body
    whatever its headers say (llhttp cannot be told, so the reader ends the
    message after the head and parses the next response with a fresh parser).
    """

    def __init__(self, max_header_bytes: int, *, memo: bool = True) -> None:
        super().__init__(max_header_bytes)
        self._parser: httptools.HttpResponseParser = httptools.HttpResponseParser(self)
        self._head_only = False
        self._fresh = True
        self._framing = Framing.NONE
        self._reason = b""
        #: Bytes arrived after a message this reader ended itself (HEAD): not reusable.
        self.stray = False
        #: Repeated heads (see ``_repeat``): the raw bytes of the last plain head
        #: llhttp read, its event and its Content-Length.
        self.memo = memo
        self._memo_head = b""
        self._memo_event: ResponseHead | None = None
        self._memo_length = 0
        #: llhttp has nothing of a message and takes another (after one that
        #: keeps the connection alive: after any other it refuses more bytes).
        self._between = True
        self._keeps_alive = True
        #: The next message llhttp begins starts at this feed's first byte; the
        #: current one did (only such a head's bytes are known: ``_data``).
        self._begins_feed = False
        self._memo_ok = False
        self._data = b""

    def _repeat(self, data: bytes) -> bool:
        """A response whose head is byte for byte the last plain head llhttp read, body whole.

        Why: an upstream answers the same resource with the same head (nginx's
        changes once a second, with its Date), and llhttp reads a head with a
        Python callback per header. The same bytes in the same parser state
        (between messages, not after HEAD) parse the same, so the event is
        reused: only a head llhttp accepted is ever reused, and only when
        ``data`` is that head and exactly its Content-Length of body.
        """
        head = self._memo_head
        if (
            head
            and self._between
            and self._fresh
            and not self._head_only
            and data.startswith(head)
            and len(data) - len(head) == self._memo_length
        ):
            events = self._events
            events.append(self._memo_event)
            if self._memo_length:
                events.append(data[len(head) :])
            events.append(END)
            return True
        if self.memo:
            self._data = data
            self._begins_feed = self._between
            self._memo_ok = False
        return False

    def feed(self, data: bytes) -> None:
        super().feed(data)
        self._data = b""  # only looked at while llhttp reads it

    def start(self, method: bytes) -> None:
        """A request with ``method`` was sent on this connection; its response comes next."""
        if not self._fresh:
            self._parser = httptools.HttpResponseParser(self)
            self._fresh = True
            self._between = True
        self._head_only = method == b"HEAD"

    def _at_eof(self) -> None:
        if not self._in_head and self._framing == Framing.CLOSE:
            self._framing = Framing.NONE
            self._events.append(END)  # a body delimited by the connection's end

    def _invalid(self, exc: httptools.HttpParserError | None) -> ProtocolError:
        if exc is None:
            return BadResponse("invalid response")
        return BadResponse(f"invalid HTTP from upstream: {exc}")

    def _too_large(self) -> ProtocolError:
        return BadResponse("upstream response head too large")

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reason = b""
        # Only a message that begins this feed (at its first byte) can be remembered.
        self._memo_ok, self._begins_feed = self._begins_feed, False
        self._between = False

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._pending = 0
        p = self._parser
        status = p.get_status_code()
        version = p.get_http_version()
        if self._head_size > self.max_header_bytes:
            self._error = BadResponse("upstream response head too large")
            raise self._error
        if version != "1.1" and version != "1.0":
            self._error = BadResponse(f"unsupported HTTP version {version!r} from upstream")
            raise self._error
        framing = Framing.CLOSE
        length = 0
        if status < 200 or status == 204 or status == 304:
            framing = Framing.NONE
        else:
            for name, value in self._headers:
                if name == b"content-length":
                    length = int(value)
                    framing = Framing.LENGTH if length else Framing.NONE
                elif name == b"transfer-encoding":
                    framing = Framing.CHUNKED
        keep_alive = p.should_keep_alive() and framing != Framing.CLOSE
        self._keeps_alive = keep_alive
        head_only = self._head_only and status >= 200
        if head_only:
            framing = Framing.NONE
        self._framing = framing
        self._events.append(
            ResponseHead(
                status, self._reason, version, self._headers, keep_alive=keep_alive, framing=framing
            )
        )
        if self._memo_ok and framing == Framing.LENGTH and keep_alive and not head_only:
            end = self._data.find(b"\r\n\r\n")
            if end >= 0:
                self._memo_head = self._data[: end + 4]
                self._memo_event = self._events[-1]  # type: ignore[assignment]  # just appended
                self._memo_length = length
        if head_only:
            # Whatever the headers promise, a response to HEAD ends here.
            self._events.append(END)
            self._fresh = False
            self._head_only = False

    def on_body(self, body: bytes) -> None:
        if not self._fresh:
            self.stray = True  # bytes after a HEAD response: the connection is not reusable
            return
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._begin = None
        self._between = self._keeps_alive
        if not self._fresh:
            return  # the HEAD response already ended
        self._framing = Framing.NONE
        self._events.append(END)


# --------------------------------------------------------------------------- writing


def header_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """``name: value`` lines, each ending CRLF (names and values validated when parsed or set)."""
    return b"".join([n + b": " + v + b"\r\n" for n, v in headers])


def request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HTTP/1.1 request head."""
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, header_lines(headers))


def response_head(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HTTP/1.1 response head."""
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, header_lines(headers))


def frame_chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (never empty: that would end the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


#: The end of a chunked body (trailers are not forwarded).
LAST_CHUNK: Final = b"0\r\n\r\n"
