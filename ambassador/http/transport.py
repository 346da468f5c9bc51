"""The proxy's byte pipes: ``recv``/``send`` over a trio stream, with a fast path for TCP.

trio's socket calls go round the scheduler even when the syscall succeeds at
once: two to four trips per proxied request that do nothing. For a plain TCP
socket (``trio.SocketStream``) ``SocketTransport`` makes the syscall first
and waits (``wait_readable``/``wait_writable``: cancellable as before) only
on EAGAIN. Anything else (TLS upstreams, memory streams in tests) goes
through ``StreamTransport``, the same interface over ``receive_some``/
``send_all``. Errors of either are translated once, here: ``TransportBroken``.

``counters`` (``RelayCounters``) adds what crossed: the listener's
``ambassador_*_bytes_total`` counters read them.
"""

from __future__ import annotations

import os

import trio

from ..relay import RelayCounters

__all__ = [
    "CHUNK",
    "SocketTransport",
    "StreamTransport",
    "Transport",
    "TransportBroken",
    "open_transport",
]

#: Bytes asked for per read.
CHUNK = 65536


class TransportBroken(Exception):
    """The connection broke (reset, closed under us): nothing more can cross it."""


_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class Transport:
    """``recv() -> bytes`` (``b""``: EOF) and ``send(data)``; both raise ``TransportBroken``."""

    stream: trio.abc.Stream
    counters: RelayCounters | None

    async def recv(self, wait_first: bool = False) -> bytes:
        """The next bytes; ``wait_first``: none can be there yet, wait before reading."""
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        raise NotImplementedError


class SocketTransport(Transport):
    """A plain TCP ``trio.SocketStream``: syscalls first, the scheduler only on EAGAIN."""

    __slots__ = ("counters", "sock", "stream")

    def __init__(self, stream: trio.SocketStream, counters: RelayCounters | None = None) -> None:
        self.stream = stream
        self.sock = stream.socket
        self.counters = counters

    async def recv(self, wait_first: bool = False) -> bytes:
        # The descriptor is read at each call: -1 once closed (EBADF), never a reused one.
        sock = self.sock
        if wait_first:
            try:
                await trio.lowlevel.wait_readable(sock)
            except _ERRORS as exc:
                raise TransportBroken(str(exc)) from None
        while True:
            try:
                data = os.read(sock.fileno(), CHUNK)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except _ERRORS as exc:
                    raise TransportBroken(str(exc)) from None
                continue
            except OSError as exc:
                raise TransportBroken(str(exc)) from None
            if self.counters is not None:
                self.counters.bytes_in += len(data)
            return data

    async def send(self, data: bytes) -> None:
        sock = self.sock
        if self.counters is not None:
            self.counters.bytes_out += len(data)
        view = memoryview(data)
        while True:
            try:
                sent = os.write(sock.fileno(), view)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise TransportBroken(str(exc)) from None
            if sent == len(view):
                return
            view = view[sent:]
            try:
                await trio.lowlevel.wait_writable(sock)
            except _ERRORS as exc:
                raise TransportBroken(str(exc)) from None


class StreamTransport(Transport):
    """Any trio stream (TLS, memory streams)."""

    __slots__ = ("counters", "stream")

    def __init__(self, stream: trio.abc.Stream, counters: RelayCounters | None = None) -> None:
        self.stream = stream
        self.counters = counters

    async def recv(self, wait_first: bool = False) -> bytes:
        try:
            data = bytes(await self.stream.receive_some(CHUNK))
        except _ERRORS as exc:
            raise TransportBroken(str(exc)) from None
        if self.counters is not None:
            self.counters.bytes_in += len(data)
        return data

    async def send(self, data: bytes) -> None:
        if self.counters is not None:
            self.counters.bytes_out += len(data)
        try:
            await self.stream.send_all(data)
        except _ERRORS as exc:
            raise TransportBroken(str(exc)) from None


def open_transport(stream: trio.abc.Stream, counters: RelayCounters | None = None) -> Transport:
    """The fastest transport for ``stream``."""
    if type(stream) is trio.SocketStream:
        return SocketTransport(stream, counters)
    return StreamTransport(stream, counters)
