"""The byte relay between a client and its upstream: the one hot loop of the ambassador.

Everything else (admission, balancing, logging) happens once per connection;
this runs once per chunk, so it does as little as possible: receive, send,
add to two plain ints. Metrics read those ints at scrape time.

Semantics, as a TCP proxy owes them to both sides:
- bytes pass unchanged, in order, both ways at once;
- half-close is forwarded: EOF from one side becomes ``send_eof`` on the other
  and the other direction keeps going (a client that shuts down its write side
  after a request still gets the whole answer);
- a reset from either side (``BrokenResourceError``: ECONNRESET, EPIPE) is
  propagated by resetting the other side (SO_LINGER 0, so it sees RST and not
  a clean EOF it might take for a complete answer), and reported in the outcome;
- an idle timeout (no byte either way for ``idle_timeout`` seconds) closes both.

The listener only calls :func:`relay`; the performance work (os.splice, threads)
replaces its body without touching the listener.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Literal

import trio

__all__ = ["RelayCounters", "RelayOutcome", "RelayResult", "abort_stream", "relay"]

RelayOutcome = Literal["closed", "client_reset", "upstream_reset", "idle_timeout"]

# Large enough that bulk transfers take few trips around the loop, small enough
# that a thousand idle connections do not pin much memory (buffers are per call).
CHUNK = 65536


@dataclass
class RelayCounters:
    """Bytes forwarded so far; mutated in place by the relay, read by metrics on scrape."""

    bytes_in: int = 0  # client -> upstream
    bytes_out: int = 0  # upstream -> client


@dataclass(frozen=True)
class RelayResult:
    outcome: RelayOutcome
    bytes_in: int
    bytes_out: int


def abort_stream(stream: trio.abc.Stream | socket.socket) -> None:
    """Arrange for ``stream``'s close to send RST rather than FIN (when it is a socket).

    A bare socket (the listener's task-less connections) is armed the same way.
    """
    sock = stream if isinstance(stream, socket.socket) else getattr(stream, "socket", None)
    if sock is None:
        return
    # OSError: already closed, nothing left to reset.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Reset(Exception):
    """Internal: one side reset; carries which."""

    def __init__(self, side: Literal["client", "upstream"]) -> None:
        self.side = side


async def relay(
    client: trio.abc.HalfCloseableStream,
    upstream: trio.abc.HalfCloseableStream,
    counters: RelayCounters,
    *,
    idle_timeout: float | None = None,
) -> RelayResult:
    """Forward bytes both ways until both directions ended; return how it ended.

    Does not close either stream on a clean end (the caller owns them), but on a
    reset it arms the other side to send RST when the caller closes it.
    """
    idle = trio.CancelScope()
    if idle_timeout is not None:
        idle.deadline = trio.current_time() + idle_timeout

    def touch() -> None:
        if idle_timeout is not None:
            idle.deadline = trio.current_time() + idle_timeout

    async def pump(
        src: trio.abc.HalfCloseableStream,
        dst: trio.abc.HalfCloseableStream,
        src_side: Literal["client", "upstream"],
        dst_side: Literal["client", "upstream"],
    ) -> None:
        to_upstream = src_side == "client"
        while True:
            try:
                data = await src.receive_some(CHUNK)
            except trio.BrokenResourceError:
                raise _Reset(src_side) from None
            if not data:
                try:
                    await dst.send_eof()
                except trio.BrokenResourceError:
                    raise _Reset(dst_side) from None
                except trio.ClosedResourceError:
                    pass
                return
            try:
                await dst.send_all(data)
            except trio.BrokenResourceError:
                raise _Reset(dst_side) from None
            if to_upstream:
                counters.bytes_in += len(data)
            else:
                counters.bytes_out += len(data)
            touch()

    outcome: RelayOutcome = "closed"
    try:
        with idle:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, upstream, "client", "upstream")
                nursery.start_soon(pump, upstream, client, "upstream", "client")
    except* _Reset as group:
        # Both pumps may see the reset (one receives it, the other's send
        # breaks); the first one is the cause. Anything else in the group (a
        # cancellation from outside) is re-raised by ``except*`` itself.
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        assert isinstance(first, _Reset)
        outcome = "client_reset" if first.side == "client" else "upstream_reset"
        abort_stream(upstream if first.side == "client" else client)
    if idle.cancelled_caught:
        outcome = "idle_timeout"
    return RelayResult(outcome, counters.bytes_in, counters.bytes_out)
