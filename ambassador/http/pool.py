"""A bounded keep-alive pool of upstream connections per endpoint.

``PoolBook`` is the pure bookkeeping (which idle connection to reuse, which to
close because the pool is full or they idled too long, how many are active);
``UpstreamPool`` is the trio shell that connects, checks a reused connection
is still open, and closes what the book says to close.

Reuse is LIFO (the most recently used connection is the least likely to have
been closed by the server's idle timeout) and expiry drops the oldest first.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import h11
import trio

from ..tls import UpstreamTLS, open_upstream

__all__ = ["PoolBook", "PoolKey", "UpstreamConnection", "UpstreamPool"]

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


@dataclass(frozen=True)
class PoolKey:
    """Connections are shared only between requests with the same env, endpoint and TLS."""

    env: str
    address: tuple[str, int]
    endpoint: str
    tls: UpstreamTLS | None


@dataclass(eq=False)
class UpstreamConnection:
    """One upstream connection and its h11 client state."""

    key: PoolKey
    stream: trio.abc.HalfCloseableStream
    conn: h11.Connection
    requests: int = 0
    #: The plain TCP socket for the proxy's direct reads/writes; None: use the stream.
    sock: trio.socket.SocketType | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if type(self.stream) is trio.SocketStream:
            self.sock = self.stream.socket


Connector = Callable[
    [tuple[str, int], UpstreamTLS | None, str], Awaitable[trio.abc.HalfCloseableStream]
]


def _raw_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    sock = getattr(stream, "socket", None)
    return sock if isinstance(sock, trio.socket.SocketType) else None


def looks_closed(stream: trio.abc.Stream) -> bool:
    """An idle connection the server has closed (EOF, reset, or unexpected bytes pending).

    A non-blocking MSG_PEEK costs one syscall and catches the usual race: the
    server's keep-alive timeout closed the connection while it sat in the pool.
    """
    sock = _raw_socket(stream)
    if sock is None:
        return False
    fd = sock.fileno()
    if fd < 0:
        return True
    # A borrowed stdlib view of the same descriptor (trio's recv is async).
    # Family, type and proto given: otherwise the constructor probes the fd
    # with three syscalls, on every reuse.
    view = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
    try:
        view.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError as exc:
        return exc.errno != errno.EAGAIN
    finally:
        view.detach()
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
        self, key: PoolKey, *, connect_timeout: float | None = None
    ) -> UpstreamConnection:
        """A reused idle connection or a new one.

        Raises ``OSError`` (``UpstreamTLSError`` included) when connecting fails,
        ``trio.TooSlowError`` when a new connection takes over ``connect_timeout``.
        Only a new connection is timed: a reused one costs no cancel scope (on
        the hot path of a keep-alive proxy, every scope counts).
        """
        while True:
            conn, expired = self.book.checkout(key, trio.current_time())
            for old in expired:
                await _close(old)
            if conn is None:
                break
            if looks_closed(conn.stream):
                self.book.discard(key)
                await _close(conn)
                continue
            self.reused_total += 1
            return conn
        if connect_timeout is None:
            stream = await self._connect(key.address, key.tls, "http")
        else:
            with trio.fail_after(connect_timeout):
                stream = await self._connect(key.address, key.tls, "http")
        self.book.opened(key)
        self.opened_total += 1
        return UpstreamConnection(
            key, stream, h11.Connection(h11.CLIENT, max_incomplete_event_size=self.max_header_bytes)
        )

    async def release(self, conn: UpstreamConnection, *, reusable: bool) -> None:
        """Back to the pool when the exchange ended cleanly and both sides keep alive."""
        c = conn.conn
        if reusable and c.our_state is h11.DONE and c.their_state is h11.DONE:
            try:
                c.start_next_cycle()
            except h11.LocalProtocolError:
                reusable = False
        else:
            reusable = False
        if not reusable:
            self.book.discard(conn.key)
            await _close(conn)
            return
        for old in self.book.checkin(conn.key, conn, trio.current_time()):
            await _close(old)

    async def aclose(self) -> None:
        for conn in self.book.drain():
            await _close(conn)


async def _close(conn: UpstreamConnection) -> None:
    with contextlib.suppress(trio.TooSlowError):
        await trio.aclose_forcefully(conn.stream)
