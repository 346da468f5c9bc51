"""Header policy of the HTTP listener: pure functions over (name, value) header lists.

What the ambassador does to every request so the app does not have to:
- strips hop-by-hop headers (RFC 9110 7.6.1: ``Connection`` and every header it
  names, ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``,
  ``Transfer-Encoding``, ``Upgrade``); framing is re-done on the other side
  (``wire``), and ``Upgrade``/``Connection: upgrade`` are kept for a protocol switch;
- adds ``X-Request-Id`` when absent (a present, sane one is kept);
- continues a W3C ``traceparent`` with a new span id for this hop, or starts one;
- sets headers from files (``HeaderFiles``: Authorization from a mounted
  Secret), replacing whatever the app sent;
- sets the upstream ``Host`` when configured.

Header names are lower-case bytes, as ``wire``'s readers hand them over.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from .wire import header_lines

__all__ = [
    "HOP_BY_HOP",
    "HeaderFiles",
    "IdSource",
    "PreparedRequest",
    "RequestPlan",
    "RequestTemplate",
    "ResponseTemplate",
    "TraceContext",
    "connection_tokens",
    "is_upgrade_request",
    "parse_traceparent",
    "plan_request_headers",
    "prepare_request_headers",
    "prepare_response_headers",
    "request_ids",
    "strip_hop_by_hop",
    "with_ids",
]

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: A request id we accept from the app: visible ASCII, bounded (it ends up in logs).
_MAX_REQUEST_ID = 200


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The lower-cased tokens of every ``Connection`` header."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def is_upgrade_request(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """A protocol switch was asked for: ``Upgrade`` present and named by ``Connection``."""
    return b"upgrade" in connection_tokens(headers) and any(n == b"upgrade" for n, _ in headers)


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Drop hop-by-hop headers and those the ``Connection`` header names."""
    headers = list(headers)
    drop = HOP_BY_HOP | connection_tokens(headers)
    return [(n, v) for n, v in headers if n not in drop]


# --------------------------------------------------------------------------- trace context


class TraceContext(NamedTuple):
    """W3C trace context for one hop: the trace continued (or started), our new span.

    (A NamedTuple, not a frozen dataclass: made per request, and a frozen
    dataclass pays an ``object.__setattr__`` per field.)
    """

    trace_id: str  # 32 lower-case hex
    span_id: str  # 16 lower-case hex: the parent-id we send upstream
    flags: str  # 2 hex
    started: bool  # True when no valid traceparent came in

    @property
    def traceparent(self) -> bytes:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}".encode()


_HEX = frozenset("0123456789abcdef")


def _hex(text: str, length: int) -> bool:
    return len(text) == length and set(text) <= _HEX


def parse_traceparent(value: bytes) -> tuple[str, str, str] | None:
    """(trace_id, parent_id, flags) of a valid ``traceparent``, else None.

    Follows the W3C spec: version ``ff`` is invalid, all-zero ids are invalid,
    a future version may carry more fields after the four we read.
    """
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    parts = text.split("-")
    if len(parts) < 4:
        return None
    version, trace_id, parent_id, flags = parts[:4]
    if not _hex(version, 2) or version == "ff":
        return None
    if version == "00" and len(parts) != 4:
        return None
    if not _hex(trace_id, 32) or trace_id == "0" * 32:
        return None
    if not _hex(parent_id, 16) or parent_id == "0" * 16:
        return None
    if not _hex(flags, 2):
        return None
    return trace_id, parent_id, flags


# RFC 4122 variant (10xx) and version 4, as the uuid module sets them.
_UUID_CLEAR = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_UUID_V4 = (0x8000 << 48) | (4 << 76)
_LOW192 = (1 << 192) - 1
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class IdSource:
    """Random ids (request ids, trace and span ids); seeded in tests, OS randomness otherwise."""

    def __init__(self, rng: random.Random | None = None) -> None:
        # Not SystemRandom: that is one getrandom() syscall per id, three per
        # request. Ids must be unique and unguessable enough to not collide,
        # not secret; a Mersenne Twister seeded from the OS is plenty.
        self._rng = rng if rng is not None else random.Random(int.from_bytes(os.urandom(32)))

    def draw(self) -> tuple[str, str, str]:
        """A request id (a UUID 4 string), a trace id and a span id: one draw per request.

        The request id is ``str(uuid.UUID(int=bits, version=4))`` of the draw's
        top 128 bits, made without the object; the trace id and span id are
        the next 128 and the last 64 bits in lower-case hex (never all zero:
        W3C makes that invalid).
        """
        n = self._rng.getrandbits(320)
        h = f"{((n >> 192) & _UUID_CLEAR | _UUID_V4) << 192 | (n & _LOW192):080x}"
        trace, span = h[32:64], h[64:]
        while trace == _ZERO_TRACE:
            trace = f"{self._rng.getrandbits(128):032x}"
        while span == _ZERO_SPAN:
            span = f"{self._rng.getrandbits(64):016x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}", trace, span


# --------------------------------------------------------------------------- the policy


class PreparedRequest(NamedTuple):
    """Headers to send upstream, and the ids for the access log (per request: a NamedTuple)."""

    headers: Headers
    request_id: str
    trace: TraceContext
    upgrade: bool


def _valid_request_id(value: bytes) -> bool:
    return 0 < len(value) <= _MAX_REQUEST_ID and all(0x21 <= b <= 0x7E for b in value)


def _drop_set(headers: Sequence[tuple[bytes, bytes]]) -> tuple[frozenset[bytes], bool]:
    """(names to strip, Connection names ``upgrade``): one pass, no set built when no Connection."""
    tokens: set[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            if tokens is None:
                tokens = set()
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    if tokens is None:
        return HOP_BY_HOP, False
    return HOP_BY_HOP | tokens, b"upgrade" in tokens


class RequestPlan(NamedTuple):
    """The policy's result for one header section, before the request's own ids."""

    kept: Headers  # before the ids (Host first when the app sent one)
    request_id: str  # the app's, kept; "" when one is made per request
    traceparent: tuple[str, str, str] | None  # the app's valid trace context
    tail: Headers  # after the ids: tracestate, injected headers, TE, upgrade
    upgrade: bool


def plan_request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    injected: Sequence[tuple[bytes, bytes]] = (),
    upstream_host: bytes | None = None,
    default_host: bytes = b"",
    request_id_header: bytes = b"x-request-id",
) -> RequestPlan:
    """The policy for the app's header section (pure; no ids: see ``prepare_request_headers``).

    ``default_host`` is used when the client sent no Host (HTTP/1.0) and none
    is configured: an HTTP/1.1 request upstream must carry one. One pass over
    the headers: this runs for every request.
    """
    drop, upgrade_named = _drop_set(headers)
    injected_names = {n for n, _ in injected} if injected else ()
    request_id = ""
    traceparent: tuple[str, str, str] | None = None
    tracestate: list[bytes] = []
    upgrade_values: list[bytes] = []
    kept: Headers = []
    host_seen = False
    chunked = False
    content_length = False
    for name, value in headers:
        if name in drop:
            if name == b"upgrade":
                upgrade_values.append(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            continue
        if name in injected_names:
            continue
        if name == request_id_header:
            if not request_id and _valid_request_id(value):
                request_id = value.decode("ascii")
            continue
        if name == b"traceparent":
            if traceparent is None:
                traceparent = parse_traceparent(value)
            continue
        if name == b"tracestate":
            tracestate.append(value)
            continue
        if name == b"host":
            if host_seen:
                continue
            host_seen = True
            if upstream_host is not None:
                value = upstream_host
        elif name == b"content-length":
            content_length = True
        kept.append((name, value))
    upgrade = upgrade_named and bool(upgrade_values)
    if not host_seen:
        host = upstream_host if upstream_host is not None else default_host
        if host:
            kept.insert(0, (b"host", host))
    # tracestate travels with a valid traceparent only (W3C 3.3).
    tail: Headers = [(b"tracestate", v) for v in tracestate] if traceparent is not None else []
    tail.extend(injected)
    if chunked and not content_length:
        tail.append((b"transfer-encoding", b"chunked"))
    if upgrade:
        tail.append((b"connection", b"upgrade"))
        tail.extend((b"upgrade", v) for v in upgrade_values)
    return RequestPlan(kept, request_id, traceparent, tail, upgrade)


def request_ids(plan: RequestPlan, ids: IdSource) -> tuple[str, TraceContext]:
    """This request's id (the app's, else a new one) and trace context (continued or started)."""
    request_id, trace_id, span_id = ids.draw()
    if plan.request_id:
        request_id = plan.request_id
    if plan.traceparent is not None:
        trace_id, _, flags = plan.traceparent
        return request_id, TraceContext(trace_id, span_id, flags, started=False)
    return request_id, TraceContext(trace_id, span_id, "01", started=True)


def with_ids(
    plan: RequestPlan, request_id: str, trace: TraceContext, request_id_header: bytes
) -> PreparedRequest:
    """The upstream headers of ``plan`` with this request's ids in their place."""
    headers = [
        *plan.kept,
        (request_id_header, request_id.encode("ascii")),
        (b"traceparent", trace.traceparent),
        *plan.tail,
    ]
    return PreparedRequest(headers, request_id, trace, plan.upgrade)


def prepare_request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    ids: IdSource,
    injected: Sequence[tuple[bytes, bytes]] = (),
    upstream_host: bytes | None = None,
    default_host: bytes = b"",
    request_id_header: bytes = b"x-request-id",
) -> PreparedRequest:
    """The upstream request's headers from the client's (pure, given ``ids``)."""
    plan = plan_request_headers(
        headers,
        injected=injected,
        upstream_host=upstream_host,
        default_host=default_host,
        request_id_header=request_id_header,
    )
    request_id, trace = request_ids(plan, ids)
    return with_ids(plan, request_id, trace, request_id_header)


def _response_kept(
    headers: Sequence[tuple[bytes, bytes]], request_id_header: bytes
) -> tuple[Headers, list[bytes], bool]:
    """(the upstream's headers the app gets, its Upgrade values, it set the request id)."""
    drop, _ = _drop_set(headers)
    out: Headers = []
    upgrade_values: list[bytes] = []
    has_id = False
    for name, value in headers:
        if name in drop:
            if name == b"upgrade":
                upgrade_values.append(value)
            continue
        if name == request_id_header:
            has_id = True
        out.append((name, value))
    return out, upgrade_values, has_id


def prepare_response_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    request_id: str,
    request_id_header: bytes = b"x-request-id",
    switching: bool = False,
    close: bool = False,
) -> Headers:
    """The client's response headers from the upstream's.

    Hop-by-hop headers go (the body is framed again on the way out); the
    request id is echoed when the upstream did not set it; ``switching`` (a
    101) keeps ``Upgrade`` and says ``Connection: upgrade``; ``close`` ends
    keep-alive.
    """
    out, upgrade_values, has_id = _response_kept(headers, request_id_header)
    if not has_id:
        out.append((request_id_header, request_id.encode("ascii")))
    if switching:
        out.append((b"connection", b"upgrade"))
        out.extend((b"upgrade", v) for v in upgrade_values)
    elif close:
        out.append((b"connection", b"close"))
    return out


# --------------------------------------------------------------------------- templates


class RequestTemplate:
    """Upstream request heads for one repeated header section: the policy once, ids per request.

    Why: on a keep-alive connection an app sends the same header section with
    nearly every request (HTTP/2's HPACK is built on that), and the policy's
    result then differs only in the ids. ``render`` gives exactly the bytes
    ``request_head(method, target, prepare_request_headers(...).headers)``
    gives (the tests compare them); ``prepared`` the full ``PreparedRequest``
    when a request leaves the fast path.
    """

    __slots__ = ("_after", "_before", "_rid", "has_host", "headers", "injected", "plan")

    def __init__(
        self,
        headers: list[tuple[bytes, bytes]],
        injected: list[tuple[bytes, bytes]],
        plan: RequestPlan,
        request_id_header: bytes,
    ) -> None:
        self.headers = headers
        self.injected = injected
        self.plan = plan
        self._rid = request_id_header
        self._before = header_lines(plan.kept)
        self._after = header_lines(plan.tail) + b"\r\n"
        #: The head names a Host (else the caller adds the endpoint's: not templated).
        self.has_host = any(name == b"host" for name, _ in plan.kept)

    def matches(
        self, headers: list[tuple[bytes, bytes]], injected: list[tuple[bytes, bytes]]
    ) -> bool:
        return headers == self.headers and injected == self.injected

    def render(
        self, method: bytes, target: bytes, ids: IdSource
    ) -> tuple[bytes, str, TraceContext]:
        """(the request head, its request id, its trace context)."""
        request_id, trace = request_ids(self.plan, ids)
        head = b"%s %s HTTP/1.1\r\n%s%s: %s\r\ntraceparent: %s\r\n%s" % (
            method,
            target,
            self._before,
            self._rid,
            request_id.encode("ascii"),
            trace.traceparent,
            self._after,
        )
        return head, request_id, trace

    def prepared(self, request_id: str, trace: TraceContext) -> PreparedRequest:
        return with_ids(self.plan, request_id, trace, self._rid)


class ResponseTemplate:
    """The app's response heads for one upstream head: the policy once, the request id per response.

    ``close``: the app's connection ends after this response (``Connection:
    close`` is said); ``chunked``: the body goes to the app re-chunked.
    """

    __slots__ = ("_after", "_before", "_echo", "chunked", "close", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        request_id_header: bytes,
        *,
        close: bool,
        chunked: bool,
    ) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self.close, self.chunked = close, chunked
        kept, _, has_id = _response_kept(headers, request_id_header)
        self._before = b"HTTP/1.1 %d %s\r\n%s" % (status, reason, header_lines(kept))
        after: Headers = [(b"connection", b"close")] if close else []
        if chunked:
            after.append((b"transfer-encoding", b"chunked"))
        self._after = header_lines(after) + b"\r\n"
        #: The upstream did not set the request id: the app gets ours.
        self._echo = not has_id
        if self._echo:
            self._before += request_id_header + b": "
            self._after = b"\r\n" + self._after

    def matches(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        close: bool,
        chunked: bool,
    ) -> bool:
        return (
            headers == self.headers
            and status == self.status
            and close == self.close
            and chunked == self.chunked
            and reason == self.reason
        )

    def render(self, request_id: str) -> bytes:
        """The head for the app (the request id echoed unless the upstream set its own)."""
        if self._echo:
            return self._before + request_id.encode("ascii") + self._after
        return self._before + self._after


# --------------------------------------------------------------------------- header files


def _safe_value(raw: bytes) -> bytes | None:
    value = raw.strip()
    if not value or any(b in (0, 0x0A, 0x0D) for b in value):
        return None
    return value


class HeaderFiles:
    """Header values read from files, re-read when a file changes (stat, throttled).

    ``current(now)`` stats each file at most once per ``check_interval``
    seconds and reads it only when (inode, size, mtime) changed: a Kubernetes
    Secret update (an atomic symlink swap) is picked up within a second without
    a restart, and the app never holds the credential. A missing or unusable
    file drops that header (the upstream then answers 401, which is safer than
    a stale credential); ``problems`` names them for a log line.
    """

    def __init__(self, items: Sequence[tuple[str, Path]], *, check_interval: float = 1.0) -> None:
        self.items = [(name.lower().encode("ascii"), path) for name, path in items]
        self.check_interval = check_interval
        self._stamps: dict[Path, tuple[int, int, int] | None] = {}
        self._values: dict[bytes, bytes] = {}
        self._checked_at = -float("inf")
        self.problems: dict[str, str] = {}
        self.reloads = 0

    def current(self, now: float) -> list[tuple[bytes, bytes]]:
        if self.items and now - self._checked_at >= self.check_interval:
            self._checked_at = now
            self._refresh()
        return [(n, self._values[n]) for n, _ in self.items if n in self._values]

    def _refresh(self) -> None:
        for name, path in self.items:
            try:
                st = os.stat(path)
                stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                stamp = None
            if path in self._stamps and self._stamps[path] == stamp:
                continue
            self._stamps[path] = stamp
            self.reloads += 1
            key = name.decode("ascii")
            if stamp is None:
                self._values.pop(name, None)
                self.problems[key] = f"{path}: missing"
                continue
            try:
                raw = path.read_bytes()
            except OSError as exc:
                self._values.pop(name, None)
                self.problems[key] = f"{path}: {exc.strerror or exc}"
                continue
            value = _safe_value(raw)
            if value is None:
                self._values.pop(name, None)
                self.problems[key] = f"{path}: empty or not a single line"
                continue
            self._values[name] = value
            self.problems.pop(key, None)
