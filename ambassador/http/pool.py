"""A bounded keep-alive pool of upstream connections per endpoint.

``PoolBook`` is the pure bookkeeping (which idle connection to reuse, which to
close because the pool is full or they idled too long, how many are active);
``UpstreamPool`` is the trio shell that connects, checks a reused connection
is still open, and closes what the book says to close.

Reuse is LIFO (the most recently used connection is the least likely to have
been closed by the server's idle timeout) and expiry drops the oldest first.
"""

from __future__ import annotations

import errno
import math
import os
import socket
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import trio

from ..tls import UpstreamTLS, open_upstream
from .transport import SocketTransport, Transport, open_transport
from .wire import ResponseReader

__all__ = ["PEEK_AFTER", "PoolBook", "PoolKey", "UpstreamConnection", "UpstreamPool"]

#: An idle connection younger than this is reused unchecked when a reset would
#: only cost a retry: servers close idle keep-alive connections after seconds
#: (nginx 75 s, Go 90 s, Node 5 s), not milliseconds, and one that closes right
#: after a response says ``Connection: close``, which is honoured.
PEEK_AFTER = 1.0

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass
class _Slot(Generic[T]):
    idle: list[tuple[float, T]] = field(default_factory=list)  # (idle since, conn), oldest first
    active: int = 0


class PoolBook(Generic[K, T]):
    """Idle connections per key, bounded by ``max_idle`` and ``idle_timeout``. Pure.

    The caller counts a connection active from ``opened``/``checkout`` to
    ``checkin``/``discard``; every method returns the connections to close.
    """

    def __init__(self, *, max_idle: int, idle_timeout: float) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._slots: dict[K, _Slot[T]] = {}

    def _slot(self, key: K) -> _Slot[T]:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        return slot

    def checkout(self, key: K, now: float) -> tuple[T | None, list[T]]:
        """The newest fresh idle connection (now active) and the expired ones to close."""
        expired = self._expire_slot(key, now)
        slot = self._slot(key)
        if slot.idle:
            _, conn = slot.idle.pop()
            slot.active += 1
            return conn, expired
        return None, expired

    def opened(self, key: K) -> None:
        """A new connection for ``key`` is active."""
        self._slot(key).active += 1

    def checkin(self, key: K, conn: T, now: float) -> list[T]:
        """An active connection becomes idle; returns what to close (overflow, expired)."""
        slot = self._slot(key)
        slot.active = max(0, slot.active - 1)
        close = self._expire_slot(key, now)
        slot.idle.append((now, conn))
        while len(slot.idle) > self.max_idle:
            close.append(slot.idle.pop(0)[1])
        return close

    def discard(self, key: K) -> None:
        """An active connection was closed instead of returned."""
        slot = self._slot(key)
        slot.active = max(0, slot.active - 1)
        self._prune(key)

    def _expire_slot(self, key: K, now: float) -> list[T]:
        slot = self._slots.get(key)
        if slot is None:
            return []
        idle = slot.idle
        # Oldest first: the expired ones are a prefix (usually empty: no copy then).
        n = 0
        while n < len(idle) and now - idle[n][0] >= self.idle_timeout:
            n += 1
        if n == 0:
            return []
        expired = [c for _, c in idle[:n]]
        del idle[:n]
        return expired

    def expire(self, now: float) -> list[T]:
        """Idle connections past ``idle_timeout`` in every slot."""
        out: list[T] = []
        for key in list(self._slots):
            out += self._expire_slot(key, now)
            self._prune(key)
        return out

    def _prune(self, key: K) -> None:
        slot = self._slots.get(key)
        if slot is not None and not slot.idle and slot.active == 0:
            del self._slots[key]

    def drain(self) -> list[T]:
        """Every idle connection (shutdown)."""
        out = [c for slot in self._slots.values() for _, c in slot.idle]
        for slot in self._slots.values():
            slot.idle = []
        return out

    def counts(self) -> Iterator[tuple[K, int, int]]:
        """(key, active, idle) per key."""
        for key, slot in self._slots.items():
            yield key, slot.active, len(slot.idle)


class PoolKey:
    """Connections are shared only between requests with the same env, endpoint and TLS.

    Immutable, with its hash computed once: the pool looks a key up four
    times per request (a frozen dataclass hashes its fields every time).
    """

    __slots__ = ("_hash", "address", "endpoint", "env", "tls")

    env: str
    address: tuple[str, int]
    endpoint: str
    tls: UpstreamTLS | None
    _hash: int

    def __init__(
        self, env: str, address: tuple[str, int], endpoint: str, tls: UpstreamTLS | None
    ) -> None:
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "endpoint", endpoint)
        object.__setattr__(self, "tls", tls)
        object.__setattr__(self, "_hash", hash((env, address, endpoint, tls)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PoolKey is immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, PoolKey):
            return NotImplemented
        return (self.env, self.address, self.endpoint, self.tls) == (
            other.env,
            other.address,
            other.endpoint,
            other.tls,
        )

    def __repr__(self) -> str:
        return f"PoolKey({self.env!r}, {self.address!r}, {self.endpoint!r}, {self.tls!r})"


@dataclass(eq=False)
class UpstreamConnection:
    """One upstream connection: its byte pipe and the parser of its responses."""

    key: PoolKey
    stream: trio.abc.HalfCloseableStream
    reader: ResponseReader
    requests: int = 0
    #: When it went back to the pool (trio clock).
    idle_since: float = 0.0
    transport: Transport = field(init=False)
    #: The descriptor as a stdlib socket, for the reuse check (never closes it).
    view: socket.socket | None = field(init=False)
    #: Waiting for a response head until then (the proxy's ``Deadlines``).
    deadline: float = field(init=False, default=math.inf)
    #: The deadline passed: the wait was woken (the connection must be closed).
    timed_out: bool = field(init=False, default=False)
    #: Plain TCP: a wait on it can be woken by ``expire``.
    watchable: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.transport = open_transport(self.stream)
        self.view = _peek_view(self.stream)
        self.watchable = isinstance(self.transport, SocketTransport)

    def expire(self) -> None:
        """No response head in time: wake the task waiting on the socket (it sees a broken pipe)."""
        self.timed_out = True
        if isinstance(self.transport, SocketTransport):
            trio.lowlevel.notify_closing(self.transport.sock)


Connector = Callable[
    [tuple[str, int], UpstreamTLS | None, str], Awaitable[trio.abc.HalfCloseableStream]
]


def _peek_view(stream: trio.abc.Stream) -> socket.socket | None:
    """A stdlib view of a plain TCP stream's descriptor, for ``looks_closed`` (None: no socket).

    Made once per connection (building one costs more than the peek itself),
    on a duplicate of the descriptor: the view can be closed (or collected)
    on its own without ever touching a descriptor number the kernel reused.
    """
    sock = getattr(stream, "socket", None)
    if not isinstance(sock, trio.socket.SocketType) or sock.fileno() < 0:
        return None
    # Family, type and proto given: otherwise the constructor probes the fd.
    return socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))


def looks_closed(conn: UpstreamConnection) -> bool:
    """An idle connection the server has closed (EOF, reset, or unexpected bytes pending).

    A non-blocking MSG_PEEK costs one syscall and catches the usual race: the
    server's keep-alive timeout closed the connection while it sat in the pool.
    """
    view = conn.view
    if view is None:
        return False
    try:
        view.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError as exc:
        return exc.errno != errno.EAGAIN
    return True  # b"" (EOF) or stray bytes: either way not reusable


class UpstreamPool:
    """Keep-alive connections to the upstream endpoints of one HTTP listener."""

    def __init__(
        self,
        *,
        max_idle: int,
        idle_timeout: float,
        max_header_bytes: int = 65536,
        connect: Connector = open_upstream,
    ) -> None:
        self.book: PoolBook[PoolKey, UpstreamConnection] = PoolBook(
            max_idle=max_idle, idle_timeout=idle_timeout
        )
        self.max_header_bytes = max_header_bytes
        self._connect = connect
        self.opened_total = 0
        self.reused_total = 0

    async def acquire(
        self,
        key: PoolKey,
        *,
        connect_timeout: float | None = None,
        now: float | None = None,
        check: bool = True,
    ) -> UpstreamConnection:
        """A reused idle connection or a new one.

        A reused connection is checked (``looks_closed``) when ``check`` is
        true or it idled ``PEEK_AFTER`` seconds: the caller passes False for a
        request it will send again on a reset (idempotent, no body), so the
        hot path skips a syscall where a stale connection would only cost a retry.

        Raises ``OSError`` (``UpstreamTLSError`` included) when connecting fails,
        ``trio.TooSlowError`` when a new connection takes over ``connect_timeout``.
        Only a new connection is timed: a reused one costs no cancel scope (on
        the hot path of a keep-alive proxy, every scope counts).
        """
        conn = self.take_idle(key, trio.current_time() if now is None else now, check=check)
        if conn is not None:
            return conn
        if connect_timeout is None:
            stream = await self._connect(key.address, key.tls, "http")
        else:
            with trio.fail_after(connect_timeout):
                stream = await self._connect(key.address, key.tls, "http")
        self.book.opened(key)
        self.opened_total += 1
        return UpstreamConnection(key, stream, ResponseReader(self.max_header_bytes))

    def take_idle(self, key: PoolKey, now: float, *, check: bool) -> UpstreamConnection | None:
        """An idle connection to reuse now, or None (without waiting: the lane calls this too).

        Closes what it finds stale on the way (expired, or ``looks_closed``).
        """
        while True:
            conn, expired = self.book.checkout(key, now)
            for old in expired:
                close_now(old)
            if conn is None:
                return None
            if (check or now - conn.idle_since >= PEEK_AFTER) and looks_closed(conn):
                self.book.discard(key)
                close_now(conn)
                continue
            self.reused_total += 1
            return conn

    def release_now(self, conn: UpstreamConnection, *, reusable: bool, now: float) -> None:
        """Back to the pool when the exchange ended cleanly and both sides keep alive.

        The caller says whether it did (request sent whole, response read to
        its end, keep-alive on); bytes after a HEAD response spoil it too.
        Otherwise (or when the pool is full) the connection is closed now.
        """
        reader = conn.reader
        if reader.failed or reader.switched or reader.stray:
            reusable = False
        if not reusable:
            self.book.discard(conn.key)
            close_now(conn)
            return
        conn.idle_since = now
        for old in self.book.checkin(conn.key, conn, now):
            close_now(old)

    async def aclose(self) -> None:
        for conn in self.book.drain():
            close_now(conn)
        await trio.lowlevel.checkpoint()


def close_now(conn: UpstreamConnection) -> None:
    """Close an upstream connection at once (a plain or TLS stream: no goodbye is waited for).

    The descriptor view goes first, so no duplicate keeps the socket open.
    """
    if conn.view is not None:
        conn.view.close()
        conn.view = None
    stream: Any = conn.stream
    while not isinstance(stream, trio.SocketStream):
        inner = getattr(stream, "transport_stream", None)
        if inner is None:
            break
        stream = inner
    sock = getattr(stream, "socket", None)
    if sock is not None:
        sock.close()
