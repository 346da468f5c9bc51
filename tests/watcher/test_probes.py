"""Probe semantics as tables, probes against real listeners and commands, the loop on
virtual time."""

from __future__ import annotations

import sys

import pytest
import trio

from sidecar_common.metrics import Registry, parse_text
from tests.support.procs import free_port
from watcher.config import parse_probe
from watcher.probes import (
    HealthChanged,
    HealthState,
    ProbeMetrics,
    ProbeTracker,
    check,
    run_probes,
)

from .conftest import ReloadServer

# (success_threshold, failure_threshold, results, health after each result)
TABLE = [
    (1, 3, "+", [True]),
    (1, 3, "---", [None, None, False]),
    (1, 3, "+--+", [True, True, True, True]),
    (1, 3, "+---", [True, True, True, False]),
    (1, 3, "+---+", [True, True, True, False, True]),
    (2, 1, "+-++", [None, False, False, True]),
    (3, 2, "++-+++", [None, None, None, None, None, True]),
    (1, 1, "-+-+", [False, True, False, True]),
]


@pytest.mark.parametrize(("st", "ft", "results", "expected"), TABLE)
def test_tracker_thresholds(st: int, ft: int, results: str, expected: list[bool | None]) -> None:
    tracker = ProbeTracker(st, ft)
    seen = []
    for r in results:
        tracker.record(r == "+")
        seen.append(tracker.healthy)
    assert seen == expected


def test_tracker_reports_transitions_only() -> None:
    tracker = ProbeTracker(1, 2)
    assert tracker.record(True, "HTTP 200") == HealthChanged(True, None, "HTTP 200")
    assert tracker.record(True) is None
    assert tracker.record(False, "HTTP 500") is None
    assert tracker.record(False, "HTTP 500") == HealthChanged(False, True, "HTTP 500")
    assert tracker.record(False) is None


async def test_http_probe(reload_server: ReloadServer) -> None:
    spec = parse_probe(reload_server.url + "/healthz")
    ok = await check(spec, time_limit=5)
    assert ok.ok and ok.detail == "HTTP 200"
    reload_server.healthy = False
    bad = await check(spec, time_limit=5)
    assert not bad.ok and bad.detail == "HTTP 503"
    assert (await check(spec, time_limit=5, expected_status=503)).ok


async def test_tcp_probe(reload_server: ReloadServer) -> None:
    assert (await check(parse_probe(f"tcp://127.0.0.1:{reload_server.port}"), time_limit=5)).ok
    closed = await check(parse_probe(f"tcp://127.0.0.1:{free_port()}"), time_limit=5)
    assert not closed.ok and "connect" in closed.detail


async def test_exec_probe() -> None:
    assert (await check(parse_probe("exec:true"), time_limit=5)).ok
    failed = await check(
        parse_probe(f"exec:{sys.executable} -c 'print(\"nope\"); exit(4)'"), time_limit=5
    )
    assert not failed.ok and failed.detail == "exit status 4: nope"
    missing = await check(parse_probe("exec:/no/such/binary"), time_limit=5)
    assert not missing.ok and "cannot run" in missing.detail


async def test_exec_probe_timeout_is_a_failure() -> None:
    result = await check(parse_probe("exec:sleep 30"), time_limit=0.2)
    assert not result.ok and result.detail == "timed out after 0.2s"


async def test_loop_follows_the_app_on_virtual_time(
    autojump_clock: trio.abc.Clock, reload_server: ReloadServer
) -> None:
    # A TCP probe to a port that is closed, then open: the loop runs every
    # period on virtual time; connect attempts are real and fast.
    port = free_port()
    spec = parse_probe(f"tcp://127.0.0.1:{port}")
    registry = Registry()
    health = HealthState()
    changes: list[HealthChanged] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_probes(
                spec,
                tracker=ProbeTracker(1, 3),
                health=health,
                metrics=ProbeMetrics(registry),
                period=10,
                time_limit=1,
                initial_delay=5,
                on_change=changes.append,
            )
        )
        start = trio.current_time()
        await health.wait_changed(0)
        # Failures at t=5, 15, 25: unhealthy after the third.
        assert trio.current_time() - start == pytest.approx(25, abs=0.5)
        assert health.healthy is False
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        await health.wait_changed(1)
        assert trio.current_time() - start == pytest.approx(35, abs=0.5)
        assert health.healthy is True
        nursery.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()
    assert [c.healthy for c in changes] == [False, True]
    samples = parse_text(registry.render())
    assert samples[("watcher_probe_failures_total", frozenset())] == 3
    assert samples[("watcher_probe_duration_seconds_count", frozenset())] == 4
    assert samples[("watcher_app_healthy", frozenset())] == 1
