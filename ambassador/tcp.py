"""Plain TCP connections to endpoints: the one way the ambassador opens them.

``trio.open_tcp_stream`` resolves the name and races attempts in a nursery
(happy eyeballs): right for a host name, a dozen scheduler trips too many for
the IP literal that discovery hands over, on every new connection and every
health probe. An IP literal gets one non-blocking ``connect`` instead, and on
loopback the handshake is usually complete when it returns (no wait at all).
Used by the listener (new connections), ``tls.open_upstream`` (the plain
stream under TLS and the HTTP pool's connections) and the TCP health check.
"""

from __future__ import annotations

import errno
import functools
import os
import socket

import trio

__all__ = ["connect_socket", "finish_tcp", "numeric_family", "open_tcp", "start_tcp"]


@functools.lru_cache(maxsize=256)
def numeric_family(host: str) -> int | None:
    """AF_INET / AF_INET6 when ``host`` is an IP literal, else None (a name to resolve).

    Cached: asked on every new connection, about the same few endpoint hosts.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family
    return None


def start_tcp(address: tuple[str, int]) -> trio.SocketStream | socket.socket | None:
    """Begin a plain TCP connection to an IP literal without waiting.

    The stream when the handshake is already complete (on loopback it usually
    is when ``connect`` returns), the socket still connecting otherwise (the
    caller waits in :func:`finish_tcp`, under its connect timeout), None for a
    name (the caller uses trio's resolver). Raises ``OSError`` (refused, ...).
    Synchronous so that the common case needs no cancel scope and no checkpoint.
    """
    started = connect_socket(address)
    if started is None:
        return None
    sock, connected = started
    if not connected:
        return sock
    try:
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    except BaseException:
        sock.close()
        raise


def connect_socket(address: tuple[str, int]) -> tuple[socket.socket, bool] | None:
    """:func:`start_tcp` without the trio stream: (non-blocking socket, handshake done).

    For the listener's task-less path, which hands both sockets to the splice
    hub and never does trio I/O on them. None for a name; raises ``OSError``.
    """
    host, port = address
    family = numeric_family(host)
    if family is None:
        return None
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        err = sock.connect_ex((host, port))
        if err == errno.EINPROGRESS:
            try:
                # On loopback the handshake is usually complete by now: no wait.
                sock.getpeername()
            except OSError:
                return sock, False
            err = 0
        if err:
            raise OSError(err, f"connect to {host}:{port} failed: {os.strerror(err)}")
        return sock, True
    except BaseException:
        sock.close()
        raise


async def finish_tcp(sock: socket.socket, address: tuple[str, int]) -> trio.SocketStream:
    """Wait for the connect :func:`start_tcp` began; closes ``sock`` on failure or cancel."""
    try:
        await trio.lowlevel.wait_writable(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            host, port = address
            raise OSError(err, f"connect to {host}:{port} failed: {os.strerror(err)}")
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    except BaseException:
        sock.close()
        raise


async def open_tcp(address: tuple[str, int]) -> trio.SocketStream:
    """A plain TCP stream to ``address``: one connect for an IP literal, trio's for a name.

    Raises ``OSError`` like ``trio.open_tcp_stream`` (refused, unreachable, ...);
    the caller bounds the time.
    """
    started = start_tcp(address)
    if started is None:
        host, port = address
        return await trio.open_tcp_stream(host, port)
    if isinstance(started, socket.socket):
        return await finish_tcp(started, address)
    return started
