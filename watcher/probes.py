"""Probing the app the way kubelet does: HTTP GET, TCP connect or a command.

Semantics follow Kubernetes probes: a probe runs every ``period`` seconds
(start to start), each attempt is cut off after ``timeout`` and then counts as
a failure; the app becomes healthy after ``success_threshold`` successes in a
row and unhealthy after ``failure_threshold`` failures in a row. Until one of
the thresholds is first reached the health is unknown, which readiness treats
as "not ready" (as kubelet does for a readiness probe).

``ProbeTracker`` is that decision, pure: feed it results, get transitions.
``check`` performs one probe; ``run_probes`` is the trio loop that ties them
together, publishes metrics and logs every state change.
"""

from __future__ import annotations

import logging
import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import trio

from sidecar_common import httpclient
from sidecar_common.jsonlog import log_event
from sidecar_common.metrics import Registry

from .config import ProbeSpec

__all__ = [
    "HealthChanged",
    "HealthState",
    "ProbeMetrics",
    "ProbeResult",
    "ProbeTracker",
    "check",
    "run_probes",
]

log = logging.getLogger("watcher.probe")

# Probe latencies are those of a local app: mostly well under a second.
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# An exec probe's output is for the log line only; keep a little.
_OUTPUT_KEEP = 200


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    duration: float


@dataclass(frozen=True)
class HealthChanged:
    """The app's health changed (``previous`` None: first determination)."""

    healthy: bool
    previous: bool | None
    detail: str


class ProbeTracker:
    """Consecutive success/failure counting with thresholds (no I/O, no clock)."""

    def __init__(self, success_threshold: int = 1, failure_threshold: int = 3) -> None:
        if success_threshold < 1 or failure_threshold < 1:
            raise ValueError("thresholds must be >= 1")
        self.success_threshold = success_threshold
        self.failure_threshold = failure_threshold
        self.healthy: bool | None = None
        self.successes = 0
        self.failures = 0

    def record(self, ok: bool, detail: str = "") -> HealthChanged | None:
        """Count one probe result; return the transition it causes, if any."""
        previous = self.healthy
        if ok:
            self.successes += 1
            self.failures = 0
            if previous is not True and self.successes >= self.success_threshold:
                self.healthy = True
        else:
            self.failures += 1
            self.successes = 0
            if previous is not False and self.failures >= self.failure_threshold:
                self.healthy = False
        if self.healthy is not previous:
            assert self.healthy is not None
            return HealthChanged(self.healthy, previous, detail)
        return None


class HealthState:
    """The app's current health, shared by readiness and registration.

    ``wait_changed(version)`` lets a task sleep until the health moves past
    the version it last saw, without polling.
    """

    def __init__(self, healthy: bool | None = None) -> None:
        self.healthy = healthy
        self.detail = "no probe result yet" if healthy is None else ""
        self.version = 0
        self._event = trio.Event()

    def set(self, healthy: bool, detail: str) -> None:
        self.healthy = healthy
        self.detail = detail
        self.version += 1
        self._event.set()
        self._event = trio.Event()

    async def wait_changed(self, version: int) -> None:
        while self.version == version:
            await self._event.wait()


class ProbeMetrics:
    def __init__(self, registry: Registry) -> None:
        self.duration = registry.histogram(
            "watcher_probe_duration_seconds",
            "Time taken by each probe of the app.",
            buckets=PROBE_BUCKETS,
        )
        self.failures = registry.counter(
            "watcher_probe_failures_total", "Probes of the app that failed or timed out."
        )
        self.healthy = registry.gauge(
            "watcher_app_healthy", "1 if the app is healthy by its probe, else 0."
        )


def _status_ok(status: int, expected: int | None) -> bool:
    if expected is not None:
        return status == expected
    return 200 <= status < 400  # kubelet's rule for HTTP probes


async def _check_http(spec: ProbeSpec, expected: int | None) -> tuple[bool, str]:
    try:
        resp = await httpclient.request("GET", spec.target, max_body=64 * 1024)
    except httpclient.HttpClientError as exc:
        return False, str(exc)
    return _status_ok(resp.status, expected), f"HTTP {resp.status}"


async def _check_tcp(spec: ProbeSpec) -> tuple[bool, str]:
    assert spec.host_port is not None
    try:
        stream = await trio.open_tcp_stream(spec.host_port.host, spec.host_port.port)
    except OSError as exc:
        return False, f"connect {spec.target}: {exc.strerror or exc}"
    await trio.aclose_forcefully(stream)
    return True, f"connected to {spec.target}"


async def _kill(proc: trio.Process) -> None:
    # A probe that overran its timeout is killed outright, as kubelet does;
    # trio's default (SIGTERM, then SIGKILL 5 s later) would stretch the timeout.
    proc.kill()


async def _check_exec(spec: ProbeSpec) -> tuple[bool, str]:
    try:
        proc = await trio.run_process(
            list(spec.argv),
            check=False,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            deliver_cancel=_kill,
        )
    except OSError as exc:
        return False, f"cannot run {spec.argv[0]}: {exc.strerror or exc}"
    output = proc.stdout.decode("utf-8", "replace").strip()[:_OUTPUT_KEEP]
    detail = f"exit status {proc.returncode}" + (f": {output}" if output else "")
    return proc.returncode == 0, detail


async def check(
    spec: ProbeSpec, *, time_limit: float, expected_status: int | None = None
) -> ProbeResult:
    """Run one probe, cut off after ``time_limit`` seconds; never raises for a failing app.

    The limit is part of the probe's definition (a timed-out probe is a
    failed one, as in Kubernetes), hence an argument and not the caller's scope.
    """
    start = trio.current_time()
    ok, detail = False, f"timed out after {time_limit}s"
    with trio.move_on_after(time_limit):
        if spec.kind == "http":
            ok, detail = await _check_http(spec, expected_status)
        elif spec.kind == "tcp":
            ok, detail = await _check_tcp(spec)
        else:
            ok, detail = await _check_exec(spec)
    return ProbeResult(ok, detail, trio.current_time() - start)


async def run_probes(
    spec: ProbeSpec,
    *,
    tracker: ProbeTracker,
    health: HealthState,
    metrics: ProbeMetrics,
    period: float,
    time_limit: float,
    initial_delay: float = 0.0,
    expected_status: int | None = None,
    on_change: Callable[[HealthChanged], object] | None = None,
) -> None:
    """Probe forever: every ``period`` (start to start), update ``health`` on transitions."""
    if not (math.isfinite(period) and period > 0):
        raise ValueError("period must be > 0")
    await trio.sleep(initial_delay)
    while True:
        started = trio.current_time()
        result = await check(spec, time_limit=time_limit, expected_status=expected_status)
        metrics.duration.observe(result.duration)
        if not result.ok:
            metrics.failures.inc()
        log_event(
            log,
            "probe",
            level=logging.DEBUG,
            probe=spec.kind,
            ok=result.ok,
            detail=result.detail,
            duration_seconds=round(result.duration, 6),
        )
        change = tracker.record(result.ok, result.detail)
        if change is not None:
            health.set(change.healthy, change.detail)
            metrics.healthy.set(1 if change.healthy else 0)
            log_event(
                log,
                "app healthy" if change.healthy else "app unhealthy",
                level=logging.INFO if change.healthy else logging.WARNING,
                event="health_changed",
                healthy=change.healthy,
                previous=change.previous,
                probe=spec.kind,
                detail=change.detail,
                successes=tracker.successes,
                failures=tracker.failures,
            )
            if on_change is not None:
                on_change(change)
        await trio.sleep_until(started + period)
