"""The watcher's trio shell: wires the file watcher, reload actions, probes,
registration and the admin server under one nursery.

Everything that decides lives elsewhere (``ChangeTracker``, ``ProbeTracker``,
``Registrar``, ``select_targets``); this module moves events between them and
owns the tasks. The drain on SIGTERM: readiness fails at once, the
registration loop stops and its lease is revoked (the key disappears), then
every task is cancelled.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import trio

from sidecar_common.admin import AdminApp, AdminError, serve_admin
from sidecar_common.errors import ConfigError
from sidecar_common.etcd import EtcdClient, ServiceInstance, rfc3339
from sidecar_common.filewatch import Change, watch_paths
from sidecar_common.jsonlog import log_event, setup_logging
from sidecar_common.leanexec import trim_after_start
from sidecar_common.lifecycle import Lifecycle, run_sidecar
from sidecar_common.metrics import Registry
from sidecar_common.retry import Backoff

from . import __version__
from .actions import (
    Action,
    ActionOutcome,
    ExecAction,
    SignalAction,
    WebhookAction,
    run_action,
)
from .config import Validated
from .probes import HealthState, ProbeMetrics, ProbeTracker, run_probes
from .registration import Registrar, RegistrationMetrics, revoke, run_registration

__all__ = ["ReloadMetrics", "build_actions", "handle_changes", "main", "run"]

log = logging.getLogger("watcher")
audit_log = logging.getLogger("watcher.audit")

# Backoff between attempts of a reload action: quick first retry, capped so a
# down app is asked again every few seconds within the action's deadline.
ACTION_BACKOFF = Backoff(initial=0.2, maximum=5.0, multiplier=2.0)
# Time given to revoking the lease on exit; after it the key expires by TTL.
REVOKE_TIME_LIMIT = 3.0
# Seconds after start-up before freed start-up memory is handed back to the OS
# (the first probes and etcd calls have left their garbage by then).
TRIM_AFTER_START = 2.0


class ReloadMetrics:
    def __init__(self, registry: Registry) -> None:
        self.reloads = registry.counter(
            "watcher_reloads_total",
            "Reload actions run after a change, by action and outcome (success, failure).",
            labelnames=("action", "outcome"),
        )
        self.changes = registry.counter(
            "watcher_changes_total", "Watched files whose content changed (after debounce)."
        )
        self.last_change = registry.gauge(
            "watcher_last_change_timestamp_seconds",
            "Unix time of the last observed content change.",
        )


def build_actions(v: Validated) -> list[Action]:
    s = v.settings
    actions: list[Action] = []
    if v.signal is not None:
        actions.append(SignalAction(v.signal, pid_file=s.pid_file, process_name=s.process_name))
    if s.webhook is not None:
        actions.append(
            WebhookAction(
                s.webhook,
                method=s.webhook_method,
                expected_status=s.webhook_status,
                headers=v.webhook_headers,
                attempt_time_limit=s.webhook_timeout,
            )
        )
    if s.exec is not None:
        actions.append(ExecAction(s.exec, attempt_time_limit=s.exec_timeout))
    return actions


def _kind(change: Change) -> str:
    if change.old_digest is None:
        return "created"
    if change.new_digest is None:
        return "deleted"
    return "modified"


@dataclass(frozen=True)
class ActionPolicy:
    attempts: int
    deadline_seconds: float
    backoff: Backoff = ACTION_BACKOFF


async def handle_changes(
    batch: Sequence[Change],
    actions: Sequence[Action],
    policy: ActionPolicy,
    metrics: ReloadMetrics,
    rng: random.Random | None = None,
) -> list[ActionOutcome]:
    """Run every action once (with retries) for ``batch``, concurrently; audit-log each change."""
    metrics.changes.inc(len(batch))
    metrics.last_change.set(time.time())
    outcomes: list[ActionOutcome] = []

    async def one(action: Action) -> None:
        outcome = await run_action(
            action,
            batch,
            attempts=policy.attempts,
            backoff=policy.backoff,
            deadline_seconds=policy.deadline_seconds,
            rng=rng,
        )
        outcomes.append(outcome)
        metrics.reloads.labels(
            action=outcome.action, outcome="success" if outcome.ok else "failure"
        ).inc()

    async with trio.open_nursery() as nursery:
        for action in actions:
            nursery.start_soon(one, action)
    outcomes.sort(key=lambda o: [a.name for a in actions].index(o.action))
    if not actions:
        overall = "no_action"
    elif all(o.ok for o in outcomes):
        overall = "success"
    else:
        overall = "failure"
    for change in batch:
        # The audit trail: which file, which content (by hash), what we did.
        # Never the content itself: watched files are often Secrets.
        log_event(
            audit_log,
            "config change",
            level=logging.INFO if overall != "failure" else logging.ERROR,
            event="config_change",
            path=change.path,
            change=_kind(change),
            old_sha256=change.old_digest,
            sha256=change.new_digest,
            outcome=overall,
            actions=[
                {"action": o.action, "ok": o.ok, "attempts": o.attempts, "detail": o.detail}
                for o in outcomes
            ],
        )
    return outcomes


async def _reload_loop(
    receive: trio.MemoryReceiveChannel[list[Change]],
    actions: Sequence[Action],
    policy: ActionPolicy,
    metrics: ReloadMetrics,
) -> None:
    async for batch in receive:
        await handle_changes(batch, actions, policy, metrics)


async def main(v: Validated, lifecycle: Lifecycle) -> None:
    s = v.settings
    registry = Registry()
    health = HealthState(healthy=True if v.probe is None else None)

    def ready() -> tuple[bool, str]:
        if lifecycle.draining:
            return False, "draining"
        if health.healthy is True:
            return True, "ok"
        return False, f"app not healthy: {health.detail}"

    admin = AdminApp(registry, ready=ready)
    async with trio.open_nursery() as nursery:
        try:
            port = await nursery.start(serve_admin, admin, s.admin.host, s.admin.port)
        except AdminError as exc:
            # A port in use is the operator's to fix: one line, exit 2.
            raise ConfigError(
                "--admin", str(s.admin), f"an address we can listen on; {exc}"
            ) from None
        if s.watch:
            actions = build_actions(v)
            policy = ActionPolicy(attempts=s.retries, deadline_seconds=s.retry_deadline)
            send, receive = trio.open_memory_channel[list[Change]](16)
            await nursery.start(
                lambda task_status: watch_paths(
                    s.watch,
                    send_channel=send,
                    interval=s.poll_interval,
                    debounce=s.debounce,
                    task_status=task_status,
                )
            )
            nursery.start_soon(_reload_loop, receive, actions, policy, ReloadMetrics(registry))
        else:
            ReloadMetrics(registry)  # the families exist (at zero) whatever is configured
        if v.probe is not None:
            probe_metrics = ProbeMetrics(registry)
            nursery.start_soon(
                partial(
                    run_probes,
                    v.probe,
                    tracker=ProbeTracker(s.probe_success_threshold, s.probe_failure_threshold),
                    health=health,
                    metrics=probe_metrics,
                    period=s.probe_period,
                    time_limit=s.probe_timeout,
                    initial_delay=s.probe_initial_delay,
                    expected_status=s.probe_status,
                )
            )
        registration_scope = trio.CancelScope()
        client: EtcdClient | None = None
        registrar: Registrar | None = None
        if s.etcd is not None:
            assert s.service is not None and v.address is not None
            client = EtcdClient(s.etcd)
            record = ServiceInstance(
                service=s.service,
                instance=v.instance,
                address=v.address.host,
                port=v.address.port,
                environment=s.environment,
                version=s.app_version,
                started=rfc3339(),
            )
            registrar = Registrar(
                key=ServiceInstance.key(s.prefix, s.service, v.instance),
                record=record,
                ttl=s.ttl,
                on_unhealthy=s.on_unhealthy,
            )
            reg_metrics = RegistrationMetrics(registry)

            async def registration() -> None:
                assert client is not None and registrar is not None
                with registration_scope:
                    await run_registration(client, registrar, health, reg_metrics)

            nursery.start_soon(registration)
        log_event(
            log,
            "watcher started",
            event="started",
            version=__version__,
            admin=f"{s.admin.host}:{port}",
            watch=s.watch,
            actions=[a.name for a in build_actions(v)] if s.watch else [],
            probe=s.probe,
            etcd=s.etcd,
        )
        await lifecycle.wait_drain()
        registration_scope.cancel()
        if client is not None and registrar is not None:
            with trio.move_on_after(min(REVOKE_TIME_LIMIT, lifecycle.drain_deadline)):
                await revoke(client, registrar)
        nursery.cancel_scope.cancel()


def run(v: Validated) -> int:
    """Run the watcher until SIGTERM; returns the exit status.

    The serving process's entry (``watcher.serve``, which ``watcher run``
    execs into): besides ``main`` it trims the heap once start-up is over,
    since what the watcher holds idle is what its pod's memory request pays.
    """
    setup_logging(v.settings.log_level)

    async def serve(lifecycle: Lifecycle) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trim_after_start, TRIM_AFTER_START)
            await main(v, lifecycle)
            nursery.cancel_scope.cancel()

    return run_sidecar(serve, drain_deadline=v.settings.drain_deadline, name="watcher")
