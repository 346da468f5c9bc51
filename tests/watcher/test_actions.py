"""Reload actions against real processes, a real HTTP server and a real shell."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
import trio

from sidecar_common.filewatch import Change
from sidecar_common.metrics import Registry, parse_text
from sidecar_common.retry import Backoff
from tests.support.procs import free_port
from tests.support.wait import eventually
from watcher.actions import (
    Action,
    ActionError,
    ExecAction,
    ProcInfo,
    SignalAction,
    WebhookAction,
    changed_paths_env,
    read_proc,
    run_action,
    select_targets,
)
from watcher.app import ActionPolicy, ReloadMetrics, handle_changes

from .conftest import APP_NAME, HupApp, ReloadServer

CHANGES = [
    Change("/etc/app/app.conf", "a" * 64, "b" * 64),
    Change("/etc/app/new key", None, "c" * 64),
]
FAST = Backoff(initial=0.01, maximum=0.05)


def P(pid: int, ppid: int, comm: str, argv0: str = "") -> ProcInfo:
    return ProcInfo(pid, ppid, comm, argv0 or comm)


@pytest.mark.parametrize(
    ("procs", "name", "expected"),
    [
        ([P(10, 1, "nginx"), P(11, 10, "nginx"), P(12, 10, "nginx")], "nginx", [10]),
        ([P(10, 1, "python3", "/usr/bin/app"), P(20, 1, "app")], "app", [10, 20]),
        ([P(10, 1, "python3", "hupcounter-app")], "hupcounter-app", [10]),
        ([P(10, 1, "bash")], "nginx", []),
        ([P(99, 1, "nginx")], "nginx", []),  # our own pid is never a target
        ([P(10, 5, "nginx"), P(5, 1, "sh")], "nginx", [10]),
    ],
)
def test_select_targets(procs: list[ProcInfo], name: str, expected: list[int]) -> None:
    assert select_targets(procs, name, own_pid=99) == expected


def test_changed_paths_env() -> None:
    env = changed_paths_env(CHANGES, {"PATH": "/bin"})
    assert env["WATCHER_CHANGED_PATHS"] == "/etc/app/app.conf\n/etc/app/new key"
    assert env["WATCHER_CHANGED_COUNT"] == "2"
    assert env["PATH"] == "/bin"


def test_read_proc_sees_the_app(hup_app: HupApp) -> None:
    procs = {p.pid: p for p in read_proc()}
    assert os.path.basename(procs[hup_app.pid].argv0) == APP_NAME
    assert procs[hup_app.pid].ppid == os.getpid()


async def test_signal_by_pid_file(hup_app: HupApp) -> None:
    action = SignalAction(signal.SIGHUP, pid_file=hup_app.pid_file)
    detail = await action.attempt(CHANGES)
    assert detail == f"sent SIGHUP to pid {hup_app.pid}"
    await eventually(lambda: hup_app.hups() == 1)


async def test_signal_by_process_name(hup_app: HupApp) -> None:
    action = SignalAction(signal.SIGHUP, process_name=APP_NAME)
    await action.attempt(CHANGES)
    await action.attempt(CHANGES)
    await eventually(lambda: hup_app.hups() == 2)


async def test_signal_dead_or_missing_process_fails(tmp_path: Path, hup_app: HupApp) -> None:
    missing = SignalAction(signal.SIGHUP, pid_file=tmp_path / "nope.pid")
    with pytest.raises(ActionError, match=r"nope\.pid"):
        await missing.attempt(CHANGES)
    garbage = tmp_path / "garbage.pid"
    garbage.write_text("not a pid")
    with pytest.raises(ActionError, match="does not hold a pid"):
        await SignalAction(signal.SIGHUP, pid_file=garbage).attempt(CHANGES)
    with pytest.raises(ActionError, match="no process named"):
        await SignalAction(signal.SIGHUP, process_name="no-such-app-xyz").attempt(CHANGES)
    hup_app.proc.terminate()
    hup_app.proc.wait()
    with pytest.raises(ActionError, match="not running"):
        await SignalAction(signal.SIGHUP, pid_file=hup_app.pid_file).attempt(CHANGES)


async def test_webhook_counts_one_request_with_headers_and_no_content(
    reload_server: ReloadServer,
) -> None:
    action = WebhookAction(
        reload_server.url + "/-/reload",
        method="PUT",
        expected_status=200,
        headers=[("Authorization", "Bearer t0ken")],
    )
    assert await action.attempt(CHANGES) == f"PUT {reload_server.url}/-/reload -> 200"
    [req] = reload_server.reloads()
    assert req["method"] == "PUT"
    assert req["headers"]["Authorization"] == "Bearer t0ken"
    assert b"/etc/app/app.conf" in req["body"] and b"b" * 64 in req["body"]


async def test_webhook_fails_twice_then_succeeds(reload_server: ReloadServer) -> None:
    reload_server.fail_first = 2
    action = WebhookAction(reload_server.url + "/-/reload")
    outcome = await run_action(
        action, CHANGES, attempts=5, backoff=FAST, deadline_seconds=30, rng=random.Random(1)
    )
    assert outcome.ok and outcome.attempts == 3
    assert len(reload_server.reloads()) == 3


async def test_webhook_wrong_status_runs_out_of_attempts(reload_server: ReloadServer) -> None:
    reload_server.fail_first = 100
    reload_server.fail_status = 404
    outcome = await run_action(
        WebhookAction(reload_server.url + "/-/reload"),
        CHANGES,
        attempts=3,
        backoff=FAST,
        deadline_seconds=30,
    )
    assert not outcome.ok and outcome.attempts == 3
    assert "answered 404, expected 200" in outcome.detail


async def test_unreachable_webhook_stops_at_the_deadline(autojump_clock: trio.abc.Clock) -> None:
    # Nothing listens on this port: every attempt fails at once; the deadline
    # (virtual time) ends the retries, and the outcome is reported, not raised.
    url = f"http://127.0.0.1:{free_port()}/-/reload"
    start = trio.current_time()
    outcome = await run_action(
        WebhookAction(url),
        CHANGES,
        attempts=1000,
        backoff=Backoff(initial=1.0, maximum=2.0),
        deadline_seconds=10,
    )
    assert not outcome.ok and outcome.attempts > 1
    assert outcome.detail.startswith("deadline of 10")
    assert trio.current_time() - start == pytest.approx(10)


async def test_exec_sees_changed_paths(tmp_path: Path) -> None:
    out = tmp_path / "out"
    action = ExecAction(f'printf "%s|%s" "$WATCHER_CHANGED_COUNT" "$WATCHER_CHANGED_PATHS" > {out}')
    assert await action.attempt(CHANGES) == "exit status 0"
    assert out.read_text() == "2|/etc/app/app.conf\n/etc/app/new key"


async def test_exec_failure_and_time_limit() -> None:
    with pytest.raises(ActionError, match="exited with 3: oops"):
        await ExecAction("echo oops; exit 3").attempt(CHANGES)
    with pytest.raises(ActionError, match="ran over"):
        await ExecAction("sleep 30", attempt_time_limit=0.2).attempt(CHANGES)


async def test_handle_changes_runs_all_actions_and_counts_outcomes(
    reload_server: ReloadServer, hup_app: HupApp
) -> None:
    registry = Registry()
    metrics = ReloadMetrics(registry)
    actions: list[Action] = [
        SignalAction(signal.SIGHUP, pid_file=hup_app.pid_file),
        WebhookAction(reload_server.url + "/-/reload"),
        ExecAction("exit 1"),
    ]
    policy = ActionPolicy(attempts=2, deadline_seconds=10, backoff=FAST)
    outcomes = await handle_changes(CHANGES, actions, policy, metrics)
    assert [(o.action, o.ok) for o in outcomes] == [
        ("signal", True),
        ("webhook", True),
        ("exec", False),
    ]
    samples = parse_text(registry.render())

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert value("watcher_reloads_total", action="signal", outcome="success") == 1
    assert value("watcher_reloads_total", action="webhook", outcome="success") == 1
    assert value("watcher_reloads_total", action="exec", outcome="failure") == 1
    assert value("watcher_changes_total") == 2
    assert value("watcher_last_change_timestamp_seconds") > 1.7e9
