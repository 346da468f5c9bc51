"""Wrap mode: ``adapter run -- CMD``: streams kept apart, signals forwarded, status passed on."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import trio

from adapter.inputs import Dispatcher
from adapter.inputs.wrap import exit_status, run_wrapped
from adapter.outputs.stdout import StdoutOutput
from adapter.pipeline import Pipeline, PipelineConfig, encode_json

ADAPTER = str(Path(sys.executable).with_name("adapter"))

# A child that says it is ready, reports each signal it gets, and exits 42 on SIGTERM.
TRAPPING_CHILD = textwrap.dedent(
    """
    import signal, sys, time
    def on_hup(signum, frame):
        print("reloading on SIGHUP", flush=True)
    def on_term(signum, frame):
        print("caught SIGTERM, shutting down", flush=True)
        print("bye from stderr", file=sys.stderr, flush=True)
        sys.exit(42)
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
    """
)


def adapter(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [ADAPTER, "run", "--log-level", "warning", *args],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def records(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_exit_status_and_streams_are_kept() -> None:
    proc = adapter("--", "sh", "-c", "echo to stdout; echo to stderr >&2; exit 3")
    assert proc.returncode == 3
    got = {(r["stream"], r["message"]) for r in records(proc.stdout)}
    assert got == {("stdout", "to stdout"), ("stderr", "to stderr")}


def test_death_by_signal_is_128_plus_n() -> None:
    proc = adapter("--", "sh", "-c", "echo last words; kill -KILL $$")
    assert proc.returncode == 128 + signal.SIGKILL
    assert [r["message"] for r in records(proc.stdout)] == ["last words"]


def test_missing_command_is_127() -> None:
    proc = adapter("--", "/nonexistent/app")
    assert proc.returncode == 127
    assert proc.stdout == b""
    assert b"cannot start the app" in proc.stderr


def test_a_real_python_crash_is_one_record_on_stderr(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(
        "def f():\n    raise KeyError('missing')\nprint('starting', flush=True)\nf()\n"
    )
    proc = adapter("--", sys.executable, str(script))
    assert proc.returncode == 1
    out = records(proc.stdout)
    assert [r["message"] for r in out if r["stream"] == "stdout"] == ["starting"]
    crash_records = [r for r in out if r["stream"] == "stderr"]
    assert len(crash_records) == 1
    assert crash_records[0]["error"]["type"] == "KeyError"
    assert "raise KeyError('missing')" in crash_records[0]["error"]["stack_trace"]


def read_record(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, "no record from the adapter"
    record: dict[str, Any] = json.loads(proc.stdout.readline())
    return record


def test_signals_are_forwarded_to_the_app() -> None:
    proc = subprocess.Popen(
        [ADAPTER, "run", "--log-level", "warning", "--", sys.executable, "-c", TRAPPING_CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert read_record(proc)["message"] == "ready"
        proc.send_signal(signal.SIGHUP)
        assert read_record(proc)["message"] == "reloading on SIGHUP"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42  # the app's own status, after its SIGTERM handler ran
    got = {(r["stream"], r["message"]) for r in records(out)}
    assert got == {("stdout", "caught SIGTERM, shutting down"), ("stderr", "bye from stderr")}


async def test_run_wrapped_forwards_signals_from_its_receiver() -> None:
    written: list[bytes] = []
    ready = trio.Event()

    async def sink(data: bytes) -> None:
        written.append(data)
        if b'"ready"' in data:
            ready.set()

    cfg = PipelineConfig(environ={}, multiline=False)
    output = StdoutOutput(encode_json, sink)
    disp = Dispatcher(lambda: Pipeline(cfg), output, max_line_bytes=4096)
    send, receive = trio.open_memory_channel[int](4)

    async def signals() -> Any:
        async for signum in receive:
            yield signum

    async with trio.open_nursery() as nursery:
        await nursery.start(output.run)

        async def send_term_when_ready() -> None:
            with trio.fail_after(30):
                await ready.wait()
            await send.send(signal.SIGTERM)

        nursery.start_soon(send_term_when_ready)
        status = await run_wrapped([sys.executable, "-c", TRAPPING_CHILD], disp, signals())
        await disp.close_all()
        await output.drain(trio.current_time() + 10)
        nursery.cancel_scope.cancel()
    assert status == 42
    messages = sorted(json.loads(line)["message"] for w in written for line in w.splitlines())
    assert messages == ["bye from stderr", "caught SIGTERM, shutting down", "ready"]


def test_exit_status_table() -> None:
    assert [exit_status(rc) for rc in (0, 1, 255, -9, -15)] == [0, 1, 255, 137, 143]
