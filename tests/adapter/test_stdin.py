"""stdin mode: the dispatcher and stdout output in virtual time, then the real command."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.inputs import Dispatcher
from adapter.outputs.stdout import StdoutOutput
from adapter.pipeline import Pipeline, PipelineConfig, encode_json

ADAPTER = str(Path(sys.executable).with_name("adapter"))


class Capture:
    """A stdout sink that remembers each write and the (trio) time it happened."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, bytes]] = []

    async def __call__(self, data: bytes) -> None:
        self.writes.append((trio.current_time(), data))

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for _, data in self.writes for line in data.splitlines()]


def wait_started(proc: subprocess.Popen[bytes]) -> None:
    """Read the adapter's log until it says it started (its signal handlers are in place)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if json.loads(line)["message"] == "adapter started":
            return
    raise AssertionError("the adapter did not start")


def dispatcher(capture: Capture, **config: Any) -> tuple[Dispatcher, StdoutOutput]:
    cfg = PipelineConfig(environ={}, **config)
    output = StdoutOutput(encode_json, capture)
    return Dispatcher(lambda: Pipeline(cfg), output, max_line_bytes=1024), output


async def test_records_leave_as_soon_as_complete(autojump_clock: trio.testing.MockClock) -> None:
    capture = Capture()
    disp, output = dispatcher(capture, flush_timeout=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(output.run)
        await nursery.start(disp.run_timer)
        source = disp.open("stdout")
        t0 = trio.current_time()
        # A JSON line is complete by itself: written at once, no batching delay.
        await disp.feed(source, b'{"level":"info","msg":"ready"}\n')
        await trio.sleep(0.01)
        assert [(t - t0, json.loads(d)["message"]) for t, d in capture.writes] == [(0, "ready")]
        # A plain line may be followed by a continuation: it waits the flush timeout, no more.
        t1 = trio.current_time()
        await disp.feed(source, b"starting worker 3\n")
        await trio.sleep(1)
        assert capture.writes[1][0] - t1 == 0.1
        assert capture.lines()[1]["message"] == "starting worker 3"
        # A half line is not a record until its newline arrives.
        await disp.feed(source, b'{"msg":"ha')
        await trio.sleep(1)
        assert len(capture.writes) == 2
        await disp.feed(source, b'lf"}\n')
        await trio.sleep(0.01)
        assert capture.lines()[2]["message"] == "half"
        nursery.cancel_scope.cancel()


async def test_backpressure_waits_for_the_writer(autojump_clock: trio.testing.MockClock) -> None:
    written: list[bytes] = []

    async def slow_sink(data: bytes) -> None:
        await trio.sleep(1)
        written.append(data)

    cfg = PipelineConfig(environ={}, multiline=False)
    output = StdoutOutput(encode_json, slow_sink, max_pending_bytes=200)
    disp = Dispatcher(lambda: Pipeline(cfg), output, max_line_bytes=1024)
    async with trio.open_nursery() as nursery:
        await nursery.start(output.run)
        source = disp.open("stdout")
        t0 = trio.current_time()
        for i in range(20):
            await disp.feed(source, b'{"msg":"%d"}\n' % i)
        # 20 records of ~150 bytes cannot all be pending at once: feeding had to wait.
        assert trio.current_time() - t0 >= 1
        await disp.close_all()
        await output.drain(trio.current_time() + 100)
        nursery.cancel_scope.cancel()
    messages = [json.loads(line)["message"] for data in written for line in data.splitlines()]
    assert messages == [str(i) for i in range(20)]
    assert output.stats.delivered == 20 and output.stats.queued == 0


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunks=st.lists(st.binary(max_size=200), max_size=8))
def test_random_bytes_never_crash_and_never_lose_a_line(chunks: list[bytes]) -> None:
    data = b"".join(chunks)

    async def main() -> Capture:
        capture = Capture()
        disp, output = dispatcher(capture, multiline=False, format="plain", keep_original=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(output.run)
            source = disp.open("stdout")
            for chunk in chunks:
                await disp.feed(source, chunk)
            await disp.close_all()
            await output.drain(trio.current_time() + 10)
            nursery.cancel_scope.cancel()
        return capture

    capture = trio.run(main)
    out = capture.lines()  # every output line is valid JSON
    # One record per line: the lines of the input (a final unterminated one counts).
    expected = data.replace(b"\r\n", b"\n").split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert len(out) == len(expected)


def test_pipe_to_the_command_gives_json_lines_and_exit_0() -> None:
    lines = [
        '{"level":"error","msg":"disk full","user":"ann"}',
        "level=info msg=started port=8080",
        '127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326',
        "plain text without a newline at the end",
    ]
    proc = subprocess.run(
        [ADAPTER, "run", "--log-level", "warning"],
        input="\n".join(lines).encode(),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 4
    assert records[0]["message"] == "disk full"
    assert records[1]["message"] == "started"
    assert records[2]["http"]["response"]["status_code"] == 200
    assert records[3]["message"] == "plain text without a newline at the end"
    assert records[0]["log"]["level"] == "error"
    assert all(r["stream"] == "stdout" for r in records)


def test_a_line_shows_up_while_stdin_stays_open() -> None:
    proc = subprocess.Popen(
        [ADAPTER, "run", "--log-level", "warning"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "ADAPTER_FLUSH_TIMEOUT": "50ms"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        seen = []
        for i in range(3):
            proc.stdin.write(b"request %d served\n" % i)
            proc.stdin.flush()
            sent = time.monotonic()
            # Not a speed assertion: the record must come while stdin is still open
            # (no batch to fill, no EOF to wait for); the wait is only a safety net.
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "no record while stdin stays open"
            seen.append((json.loads(proc.stdout.readline())["message"], time.monotonic() - sent))
        assert [m for m, _ in seen] == [f"request {i} served" for i in range(3)]
        print("latencies (s):", [round(d, 4) for _, d in seen])
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def test_sigterm_flushes_and_exits_0() -> None:
    proc = subprocess.Popen(
        [ADAPTER, "run", "--flush-timeout", "10s"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    wait_started(proc)
    proc.stdin.write(b"held back by the long flush timeout\n")
    proc.stdin.flush()
    time.sleep(0.3)
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"signal received" in err
    assert [json.loads(line)["message"] for line in out.splitlines()] == [
        "held back by the long flush timeout"
    ]
