"""The naive trio TCP proxy: the anchor of issue 4's "naive trio proxy" column.

Why it exists: the ambassador's targets (RSS idle, throughput) are stated against what the
plainest correct trio proxy does on the same machine, so the benchmark runs that proxy side
by side. It is deliberately naive: one ``open_tcp_stream`` per client, two copy tasks with
``receive_some``/``send_all``, half-close forwarded, nothing else (no pool, no metrics, no
health checks, no project imports).

Usage: ``python bench/naive_proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT``; listens on
127.0.0.1:LISTEN_PORT, prints nothing, runs until SIGTERM (the default action ends it).
"""

from __future__ import annotations

import sys

import trio

CHUNK = 65536


async def copy(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Bytes from ``src`` to ``dst`` until EOF, then EOF on ``dst`` (half-close forwarded).

    A reset on either side ends the whole connection (the other direction is cancelled).
    """
    try:
        while data := await src.receive_some(CHUNK):
            await dst.send_all(data)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        scope.cancel()


async def handle(client: trio.SocketStream, host: str, port: int) -> None:
    """One client: connect upstream, relay both ways until both directions are done."""
    async with client:
        try:
            upstream = await trio.open_tcp_stream(host, port)
        except OSError:
            return  # upstream down: close the client
        async with upstream, trio.open_nursery() as nursery:
            nursery.start_soon(copy, client, upstream, nursery.cancel_scope)
            nursery.start_soon(copy, upstream, client, nursery.cancel_scope)


async def main(listen_port: int, host: str, port: int) -> None:
    async def serve(client: trio.SocketStream) -> None:
        await handle(client, host, port)

    await trio.serve_tcp(serve, listen_port, host="127.0.0.1")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
