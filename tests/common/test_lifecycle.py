"""lifecycle: the drain protocol, in-process under a virtual clock and in a real child process."""

from __future__ import annotations

import io
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from sidecar_common.errors import ConfigError
from sidecar_common.jsonlog import setup_logging
from sidecar_common.lifecycle import Lifecycle, run_sidecar, supervise

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("lifecycle_app.py")
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable

# ---- the pure decision: what does a signal mean? -----------------------------


@pytest.mark.parametrize(
    ("signals", "decisions"),
    [
        ([signal.SIGTERM], [None]),
        ([signal.SIGINT], [None]),
        ([signal.SIGTERM, signal.SIGTERM], [None, 143]),
        ([signal.SIGTERM, signal.SIGINT], [None, 130]),
        ([signal.SIGINT, signal.SIGTERM], [None, 143]),
    ],
)
def test_signal_decisions(signals: list[int], decisions: list[int | None]) -> None:
    lifecycle = Lifecycle(drain_deadline=5)
    assert [lifecycle.signal_received(s) for s in signals] == decisions
    assert lifecycle.draining
    assert lifecycle.drain_reason == signal.Signals(signals[0]).name


def test_on_drain_callbacks_run_once_in_order_and_late_ones_at_once() -> None:
    lifecycle = Lifecycle()
    calls: list[str] = []
    lifecycle.on_drain(lambda: calls.append("a"))
    lifecycle.on_drain(lambda: calls.append("b"))
    assert calls == []
    assert lifecycle.start_drain("test") is True
    assert lifecycle.start_drain("again") is False
    assert calls == ["a", "b"]
    lifecycle.on_drain(lambda: calls.append("late"))
    assert calls == ["a", "b", "late"]
    assert lifecycle.drain_reason == "test"


# ---- the trio shell, driven by a channel of fake signals, virtual time ------


async def test_first_signal_drains_and_main_finishes(autojump_clock: trio.abc.Clock) -> None:
    lifecycle = Lifecycle(drain_deadline=10)
    send, recv = trio.open_memory_channel[int](1)
    events: list[tuple[str, float]] = []
    ready = lifecycle.draining

    async def main(lc: Lifecycle) -> None:
        lc.on_drain(lambda: events.append(("callback", trio.current_time())))
        await lc.wait_drain()
        events.append(("drain seen", trio.current_time()))
        await trio.sleep(3)  # drain work, within the deadline
        events.append(("drain done", trio.current_time()))

    async def signal_later() -> None:
        await trio.sleep(5)
        await send.send(signal.SIGTERM)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(signal_later)
        status = await supervise(main, lifecycle, recv)
    assert status == 0
    assert ready is False and lifecycle.draining
    assert [(what, t - start) for what, t in events] == [
        ("callback", 5),
        ("drain seen", 5),
        ("drain done", 8),
    ]
    assert trio.current_time() - start == 8


async def test_drain_overrunning_deadline_is_cancelled(autojump_clock: trio.abc.Clock) -> None:
    lifecycle = Lifecycle(drain_deadline=2.5)
    send, recv = trio.open_memory_channel[int](1)
    cut_off_at: list[float] = []

    async def main(lc: Lifecycle) -> None:
        await lc.wait_drain()
        try:
            await trio.sleep_forever()
        finally:
            cut_off_at.append(trio.current_time())

    start = trio.current_time()
    send.send_nowait(signal.SIGINT)
    assert await supervise(main, lifecycle, recv) == 0
    assert [t - start for t in cut_off_at] == [2.5]


async def test_second_signal_exits_at_once(autojump_clock: trio.abc.Clock) -> None:
    lifecycle = Lifecycle(drain_deadline=60)
    send, recv = trio.open_memory_channel[int](2)

    async def main(lc: Lifecycle) -> None:
        await lc.wait_drain()
        await trio.sleep(30)  # slow drain
        raise AssertionError("not reached: cancelled by the second signal")

    async def signals() -> None:
        await trio.sleep(1)
        await send.send(signal.SIGTERM)
        await trio.sleep(4)
        await send.send(signal.SIGINT)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(signals)
        status = await supervise(main, lifecycle, recv)
    assert status == 130
    assert trio.current_time() - start == 5


async def test_main_returning_by_itself_exits_0_without_signal(
    autojump_clock: trio.abc.Clock,
) -> None:
    lifecycle = Lifecycle()
    _send, recv = trio.open_memory_channel[int](1)

    async def main(lc: Lifecycle) -> None:
        await trio.sleep(7)

    start = trio.current_time()
    assert await supervise(main, lifecycle, recv) == 0
    assert trio.current_time() - start == 7
    assert not lifecycle.draining


async def test_programmatic_drain_gets_the_same_deadline(autojump_clock: trio.abc.Clock) -> None:
    lifecycle = Lifecycle(drain_deadline=4)
    _send, recv = trio.open_memory_channel[int](1)

    async def main(lc: Lifecycle) -> None:
        await trio.sleep(1)
        lc.start_drain("admin request")
        await trio.sleep_forever()

    start = trio.current_time()
    assert await supervise(main, lifecycle, recv) == 0
    assert trio.current_time() - start == 5
    assert lifecycle.drain_reason == "admin request"


async def test_main_error_propagates_from_supervise(autojump_clock: trio.abc.Clock) -> None:
    _send, recv = trio.open_memory_channel[int](1)

    async def main(lc: Lifecycle) -> None:
        raise KeyError("boom")

    with pytest.RaisesGroup(KeyError):
        await supervise(main, Lifecycle(), recv)


# ---- run_sidecar in-process (real trio.run and signal receiver) -------------


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buf = io.StringIO()
    setup_logging("info", stream=buf)
    yield buf
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)


def parse(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_run_sidecar_real_sigterm_to_self(json_logs: io.StringIO) -> None:
    drained: list[bool] = []

    async def main(lc: Lifecycle) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # caught by run_sidecar's receiver
        await lc.wait_drain()
        drained.append(lc.draining)

    assert run_sidecar(main, drain_deadline=5, name="selftest") == 0
    assert drained == [True]
    events = parse(json_logs)
    assert [(e["logger"], e["message"]) for e in events] == [
        ("selftest.lifecycle", "drain started"),
        ("selftest.lifecycle", "exiting"),
    ]
    assert events[0]["reason"] == "SIGTERM"
    assert events[0]["drain_deadline_seconds"] == 5
    assert events[1]["exit_status"] == 0


def test_run_sidecar_reraises_config_error_bare() -> None:
    async def main(lc: Lifecycle) -> None:
        raise ConfigError("--upstream", "db", "host:port")

    with pytest.raises(ConfigError) as info:
        run_sidecar(main, name="t")
    assert info.value.setting == "--upstream"


def test_run_sidecar_reraises_system_exit_bare() -> None:
    async def main(lc: Lifecycle) -> None:
        raise SystemExit(4)

    with pytest.raises(SystemExit) as info:
        run_sidecar(main, name="t")
    assert info.value.code == 4


def test_run_sidecar_logs_a_crash_and_returns_1(json_logs: io.StringIO) -> None:
    async def main(lc: Lifecycle) -> None:
        raise RuntimeError("bug")

    assert run_sidecar(main, name="t") == 1
    [event] = parse(json_logs)
    assert event["message"] == "sidecar crashed"
    assert event["level"] == "error"
    assert (event["error.type"], event["error.message"]) == ("RuntimeError", "bug")
    assert "RuntimeError: bug" in event["error.stack_trace"]


def test_run_sidecar_rejects_bad_deadline() -> None:
    async def main(lc: Lifecycle) -> None:
        raise AssertionError("not run")

    with pytest.raises(ConfigError):
        run_sidecar(main, drain_deadline=float("nan"), name="t")


# ---- a real child process, stopped by PID ------------------------------------


class Child:
    """lifecycle_app.py as a child process whose JSON stderr we read event by event."""

    def __init__(self, tmp_path: Path, drain_work: float, deadline: float) -> None:
        self.dir = tmp_path
        self.proc = subprocess.Popen(
            [PYTHON, str(APP), str(tmp_path), str(drain_work), str(deadline)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._buf = b""
        self.events: list[dict[str, Any]] = []

    def wait_event(self, message: str, timeout: float = 30.0) -> dict[str, Any]:
        """Read stderr until the JSON event ``message`` arrives (a hang guard, not a speed test)."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        end = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["message"] == message:
                    return event
            remaining = end - time.monotonic()
            assert remaining > 0, f"no {message!r} event; got {self.events}"
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 65536)
                assert chunk, f"child exited before {message!r}; got {self.events}"
                self._buf += chunk
                *complete, self._buf = self._buf.split(b"\n")
                self.events.extend(json.loads(line) for line in complete)

    def finish(self, timeout: float = 30.0) -> int:
        assert self.proc.stderr is not None
        rest = self.proc.stderr.read()  # until EOF: the child has exited or closed stderr
        self.proc.wait(timeout=timeout)
        lines = (self._buf + rest).decode().splitlines()
        self.events.extend(json.loads(line) for line in lines)  # every line is JSON
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def child_factory(tmp_path: Path) -> Iterator[Any]:
    children: list[Child] = []

    def make(drain_work: float, deadline: float) -> Child:
        child = Child(tmp_path, drain_work, deadline)
        children.append(child)
        return child

    yield make
    for child in children:
        child.kill()


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.recv(100)


def test_child_sigterm_drains_then_exits_0(child_factory: Any, tmp_path: Path) -> None:
    child = child_factory(drain_work=0.2, deadline=20)
    port = child.wait_event("serving")["port"]
    assert greeting(port) == b"ready\n"
    os.kill(child.proc.pid, signal.SIGTERM)
    assert child.wait_event("drain started")["reason"] == "SIGTERM"
    assert child.finish() == 0
    assert (tmp_path / "drained").read_text() == "drained\n"
    assert not (tmp_path / "cut-off").exists()
    messages = [e["message"] for e in child.events]
    assert messages[-2:] == ["drain work done", "exiting"]
    assert child.events[-1]["exit_status"] == 0


def test_child_sigint_drains_too(child_factory: Any, tmp_path: Path) -> None:
    child = child_factory(drain_work=0, deadline=20)
    child.wait_event("serving")
    os.kill(child.proc.pid, signal.SIGINT)
    assert child.finish() == 0
    assert (tmp_path / "drained").exists()
    assert "Traceback" not in json.dumps(child.events)


def test_child_drain_overrunning_deadline_is_cut_off_and_exits_0(
    child_factory: Any, tmp_path: Path
) -> None:
    child = child_factory(drain_work=3600, deadline=2)
    child.wait_event("serving")
    os.kill(child.proc.pid, signal.SIGTERM)
    assert child.finish() == 0
    assert (tmp_path / "cut-off").exists()
    assert not (tmp_path / "drained").exists()
    messages = [e["message"] for e in child.events]
    assert "drain deadline exceeded; remaining work cancelled" in messages
    assert messages[-1] == "exiting"


@pytest.mark.parametrize(
    ("second", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_child_second_signal_exits_at_once(
    child_factory: Any, tmp_path: Path, second: int, status: int
) -> None:
    child = child_factory(drain_work=3600, deadline=3600)
    port = child.wait_event("serving")["port"]
    os.kill(child.proc.pid, signal.SIGTERM)
    child.wait_event("drain started")
    child.wait_event("drain work started")
    with pytest.raises(ConnectionRefusedError):  # draining: it stopped accepting
        greeting(port)
    os.kill(child.proc.pid, second)
    assert child.finish() == status
    assert (tmp_path / "cut-off").exists()
    assert child.events[-1]["exit_status"] == status
    assert child.events[-2]["message"] == "second signal; exiting at once"
