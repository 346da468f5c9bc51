"""The naive trio proxy (bench/naive_proxy.py), the issue's anchor, really forwards bytes.

The proxy runs as the benchmark runs it (a subprocess on 127.0.0.1 and a free port) in
front of a real trio server on loopback that answers each connection, once the client
half-closed, with the SHA-256 of everything it received: so the test checks the bytes
both ways, that EOF is forwarded (the server only answers after it), and that the
answer still comes back over the half-closed connection.
"""

from __future__ import annotations

import hashlib
import signal
import sys
from pathlib import Path

import trio

from tests.support.procs import free_port

PROXY = Path(__file__).resolve().parents[2] / "bench" / "naive_proxy.py"


async def start_proxy(listen: int, target: int) -> trio.Process:
    argv = [sys.executable, str(PROXY), str(listen), "127.0.0.1", str(target)]
    return await trio.lowlevel.open_process(argv)


async def digest_server(stream: trio.SocketStream) -> None:
    """Read to EOF, then answer the digest of what came and close."""
    h = hashlib.sha256()
    async with stream:
        while data := await stream.receive_some(65536):
            h.update(data)
        await stream.send_all(h.hexdigest().encode())


async def connect(port: int, proc: trio.Process) -> trio.SocketStream:
    with trio.fail_after(10):
        while True:
            assert proc.returncode is None, "the naive proxy exited"
            try:
                return await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)


async def exchange(port: int, proc: trio.Process, payload: bytes) -> bytes:
    stream = await connect(port, proc)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        answer = b""
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                answer += data
    return answer


async def test_bytes_and_half_close_go_through_the_naive_proxy() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    target = listeners[0].socket.getsockname()[1]
    listen = free_port()
    proc = await start_proxy(listen, target)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, digest_server, listeners)
            payloads = [b"", b"hello", bytes(range(256)) * 4096]  # 1 MiB: many chunks
            answers: dict[int, bytes] = {}

            async def one(i: int) -> None:
                answers[i] = await exchange(listen, proc, payloads[i])

            async with trio.open_nursery() as clients:  # concurrent connections
                for i in range(len(payloads)):
                    clients.start_soon(one, i)
            for i, payload in enumerate(payloads):
                assert answers[i] == hashlib.sha256(payload).hexdigest().encode()
            nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            returncode = await proc.wait()
    assert returncode == -signal.SIGTERM  # runs until SIGTERM, which ends it


async def test_upstream_down_closes_the_client() -> None:
    listen, target = free_port(), free_port()  # nothing listens on target
    proc = await start_proxy(listen, target)
    try:
        stream = await connect(listen, proc)
        async with stream:
            with trio.fail_after(10):
                assert await stream.receive_some(100) == b""
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await proc.wait()
