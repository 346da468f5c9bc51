"""fd_sink on real descriptors: a pipe (non-blocking writes, no thread), a file, a closed pipe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from adapter import OutputError
from adapter.outputs.stdout import fd_sink

DATA = b"".join(b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 200) for i in range(6000))  # ~1.3 MB


async def test_a_full_pipe_waits_in_the_event_loop_and_loses_nothing() -> None:
    read_fd, write_fd = os.pipe()
    ticks = 0
    received = bytearray()
    try:
        sink = fd_sink(write_fd)

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            async with trio.lowlevel.FdStream(os.dup(read_fd)) as reader:
                done = trio.Event()

                async def read_all() -> None:
                    await trio.sleep(0.05)  # the pipe (64 KiB) fills before anyone reads
                    while len(received) < len(DATA):
                        received.extend(await reader.receive_some(65536))
                    done.set()

                nursery.start_soon(read_all)
                await sink(DATA)  # far more than the pipe holds: must wait for the reader
                with trio.fail_after(10):
                    await done.wait()
            nursery.cancel_scope.cancel()
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert bytes(received) == DATA
    assert ticks > 1  # other tasks ran while the write waited for the reader


async def test_a_regular_file_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        sink = fd_sink(fd)
        await sink(DATA)
        await sink(b"last\n")
    finally:
        os.close(fd)
    assert path.read_bytes() == DATA + b"last\n"


async def test_a_pipe_without_reader_is_an_output_error() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        with pytest.raises(OutputError):
            await fd_sink(write_fd)(b"x\n")
    finally:
        os.close(write_fd)
