"""``--workers N``: N ambassador processes sharing each listen port, one supervisor.

One Python process relays on about one core (the GIL); N worker processes use
N. Each listener is bound N times with ``SO_REUSEPORT`` before any worker
starts, so the kernel spreads new connections over N accept queues, and a busy
or foreign address is still a one-line start-up error.

What lives once, in the supervisor (the parent):
- the configuration (parsed once, handed to every worker whole);
- the environment switch: the parent's ``/env`` and env-file watch decide, then
  push the environment to every worker (``PUT /env`` on its private admin port);
  a worker (re)started later gets the current one;
- the admin server: ``/metrics`` merges the workers' metrics (counters and
  histograms summed, gauges summed except the per-endpoint health, which is
  the minimum over workers) with the parent's own; ``/readyz`` is ready when
  every worker is.

The parent keeps its copy of every worker's listening socket, so a worker that
dies loses no queued connection: it is restarted (with backoff) on the very
same socket. SIGTERM drains: the parent closes its copies and sends SIGTERM to
each worker, which drains its own connections; the parent exits 0 once all are
gone. Workers run in their own session (a terminal's Ctrl-C reaches only the
parent) and drain by themselves if the parent disappears (their stdin closes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import trio

from sidecar_common.admin import AdminApp, Request, Response, json_response, serve_admin
from sidecar_common.errors import ConfigError
from sidecar_common.jsonlog import get_logger, log_event
from sidecar_common.leanexec import (
    LeanExecError,
    exec_lean,
    lean_command,
    run_lean,
    trim_after_start,
)
from sidecar_common.metrics import (
    CONTENT_TYPE,
    MetricsParseError,
    Registry,
    escape_label_value,
    parse_exposition,
)
from sidecar_common.retry import Backoff

from . import control
from .config import AmbassadorConfig, LimitsConfig, resolve_initial_env
from .switch import EnvSwitch, SwitchResult

__all__ = [
    "MIN_GAUGES",
    "RunSpec",
    "WorkerSpec",
    "bind_reuseport",
    "exec_run",
    "merge_expositions",
    "run_workers",
    "share_limits",
    "worker_config",
    "worker_main",
]

log = get_logger("ambassador.workers")

#: Gauges merged by minimum over workers (an endpoint is healthy only if every
#: worker sees it so); every other gauge, counter and histogram is summed.
MIN_GAUGES: frozenset[str] = frozenset({"ambassador_endpoint_healthy"})
#: Families the parent owns (its own admin server and the switch): not merged.
PARENT_FAMILIES: frozenset[str] = frozenset(
    {
        "admin_http_requests_total",
        "admin_http_connections",
        "ambassador_env_switches_total",
        "ambassador_current_env",
    }
)
#: How long a worker has to report its admin port after starting.
START_TIMEOUT = 30.0
#: A worker scrape slower than this is skipped in the merged metrics.
SCRAPE_TIMEOUT = 2.0
#: How often the parent checks each worker's readiness and environment.
POLL_INTERVAL = 1.0
#: Restart backoff; a worker that ran this long resets it.
RESTART_BACKOFF = Backoff(initial=0.1, maximum=5.0)
STABLE_AFTER = 10.0
#: Grace after ``drain_timeout`` before the parent kills what is left.
KILL_GRACE = 3.0


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs, sent pickled on its stdin: the parsed config and its sockets."""

    index: int
    config: AmbassadorConfig
    overrides: Mapping[str, object]
    #: listener name -> listening socket fds (same numbers in the worker: pass_fds).
    fds: Mapping[str, Sequence[int]]


# --------------------------------------------------------------------------- binding


def bind_reuseport(cfg: AmbassadorConfig, workers: int) -> list[dict[str, list[socket.socket]]]:
    """Bind every listener ``workers`` times with SO_REUSEPORT; one dict per worker.

    Port 0 binds the first socket anywhere and the others to the same port.
    """
    return control.bind_listeners(cfg, copies=workers)


# --------------------------------------------------------------------------- limits


def share_limits(limits: LimitsConfig, workers: int, index: int) -> LimitsConfig:
    """Worker ``index``'s part of a listener's limits, so that ``workers`` together keep them.

    Why: each worker has its own circuit breaker (no shared counter between
    processes), and a limit exists to protect the backend, so the configured
    number must hold for the whole ambassador, not per worker. The counts are
    split as evenly as they go (the first ``total % workers`` workers get one
    more), so they add up to the configured value; a connection limit never
    goes below 1 per worker (a worker must be able to serve), so a limit
    smaller than ``workers`` is exceeded by that much. Timeouts and attempts
    are per connection and stay as they are. The price: SO_REUSEPORT spreads
    clients by hash, so one worker may refuse while another still has room.
    """

    def part(total: int | None, floor: int) -> int | None:
        if total is None:
            return None
        return max(floor, total // workers + (1 if index < total % workers else 0))

    return dataclasses.replace(
        limits,
        max_connections=part(limits.max_connections, 1),
        max_connections_per_endpoint=part(limits.max_connections_per_endpoint, 1),
        max_pending=part(limits.max_pending, 0) or 0,
    )


def worker_config(cfg: AmbassadorConfig, workers: int, index: int) -> AmbassadorConfig:
    """What worker ``index`` serves: ``cfg`` with each listener's limits shared out."""
    return dataclasses.replace(
        cfg,
        listeners=tuple(
            dataclasses.replace(lst, limits=share_limits(lst.limits, workers, index))
            for lst in cfg.listeners
        ),
    )


# --------------------------------------------------------------------------- metrics


def _sample_family(name: str, types: Mapping[str, str]) -> str:
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return base
    return name


def _format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 2**63:
        return str(int(v))
    return repr(v)


def _format_labels(labels: Iterable[tuple[str, str]]) -> str:
    items = sorted(labels, key=lambda kv: (kv[0] == "le", kv[0]))
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in items) + "}"


def merge_expositions(texts: Iterable[str], *, skip: Iterable[str] = ()) -> str:
    """Merge the expositions of several workers into one (text format 0.0.4).

    Series with the same name and labels are summed, except the gauges of
    :data:`MIN_GAUGES` (minimum). Families in ``skip`` are dropped. A worker's
    unparseable text is skipped (and logged) rather than failing the scrape.
    """
    skipped = set(skip)
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples_of: dict[str, dict[str, dict[frozenset[tuple[str, str]], float]]] = {}
    for text in texts:
        try:
            exp = parse_exposition(text)
        except MetricsParseError as exc:
            log_event(log, "worker metrics unparseable", level=logging.WARNING, reason=str(exc))
            continue
        for fam, t in exp.types.items():
            types.setdefault(fam, t)
        for fam, h in exp.helps.items():
            helps.setdefault(fam, h)
        for (name, labels), value in exp.samples.items():
            fam = _sample_family(name, exp.types)
            if fam in skipped:
                continue
            series = samples_of.setdefault(fam, {}).setdefault(name, {})
            if labels not in series:
                series[labels] = value
            elif types.get(fam) == "gauge" and fam in MIN_GAUGES:
                series[labels] = min(series[labels], value)
            else:
                series[labels] += value
    out: list[str] = []
    for fam, by_name in samples_of.items():
        if fam in helps:
            help_text = helps[fam].replace("\\", "\\\\").replace("\n", "\\n")
            out.append(f"# HELP {fam} {help_text}")
        if fam in types:
            out.append(f"# TYPE {fam} {types[fam]}")
        for name, series in by_name.items():
            for labels, value in series.items():
                out.append(f"{name}{_format_labels(labels)} {_format_value(value)}")
    return "\n".join(out) + "\n" if out else ""


# --------------------------------------------------------------------------- parent


@dataclasses.dataclass(eq=False)
class _Slot:
    """One worker position: its sockets (kept across restarts) and the live process."""

    index: int
    sockets: dict[str, list[socket.socket]]
    process: trio.Process | None = None
    admin_port: int | None = None
    ready: tuple[bool, str] = (False, "starting")
    env: str | None = None
    restarts: int = 0
    #: Cancelled to ask for a replacement (config reload): see ``Supervisor._supervise``.
    waiter: trio.CancelScope | None = None
    #: Bumped each time a worker for this slot has started.
    generation: int = 0


class Supervisor:
    """The parent: starts and restarts workers, owns the switch and the admin server."""

    def __init__(
        self,
        cfg: AmbassadorConfig,
        overrides: Mapping[str, object],
        sockets: list[dict[str, list[socket.socket]]],
        *,
        command: Sequence[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.overrides = dict(overrides)
        self.command = list(command or [*lean_command("ambassador.serve"), "--worker"])
        self.rng = rng or random.Random()
        self.slots = [_Slot(i, s) for i, s in enumerate(sockets)]
        env, self.initial_source = resolve_initial_env(cfg)
        self.switch = EnvSwitch(cfg.environments, env)
        self.registry = Registry()
        self.draining = False
        self._drain = trio.Event()
        self._workers_nursery: trio.Nursery
        #: The final counters of workers that are gone (replaced or drained).
        self.retired = ""
        self.env_switches = control.register_switch_metrics(self.registry, lambda: self.switch)
        self.restarts = self.registry.counter(
            "ambassador_worker_restarts_total",
            "Worker processes restarted after they exited unexpectedly.",
        )
        self.registry.gauge_callback(
            "ambassador_workers",
            "Worker processes running now.",
            lambda: [({}, float(sum(s.process is not None for s in self.slots)))],
        )

    # ------------------------------------------------------------ switching

    def apply_switch(self, name: str, source: str) -> SwitchResult:
        """Decide, log and count a switch once; the workers follow (see :meth:`push_env`)."""
        return control.apply_switch(self.switch, self.env_switches, log, name, source)

    async def push_env(self) -> None:
        """Bring every running worker to the current environment (concurrently)."""
        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                nursery.start_soon(self._push_env_one, slot)

    async def _push_env_one(self, slot: _Slot) -> None:
        env = self.switch.current
        port = slot.admin_port
        if env is None or port is None or slot.env == env:
            return
        from sidecar_common.httpclient import HttpClientError, request

        with trio.move_on_after(SCRAPE_TIMEOUT):
            try:
                resp = await request(
                    "PUT",
                    f"http://127.0.0.1:{port}/env",
                    headers=[("content-type", "application/json")],
                    body=json.dumps({"env": env}).encode(),
                )
            except HttpClientError as exc:
                log_event(
                    log,
                    "env push failed",
                    level=logging.WARNING,
                    worker=slot.index,
                    reason=str(exc),
                )
                return
            if resp.status == 200:
                slot.env = env
            else:
                log_event(
                    log,
                    "env push refused",
                    level=logging.WARNING,
                    worker=slot.index,
                    status=resp.status,
                )

    # ------------------------------------------------------------ admin

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        for slot in self.slots:
            if slot.process is None or slot.admin_port is None:
                return False, f"worker {slot.index} not running"
            if not slot.ready[0]:
                return False, f"worker {slot.index}: {slot.ready[1]}"
        env = self.switch.current
        return True, f"env {env} ({len(self.slots)} workers)"

    async def _get(self, slot: _Slot, path: str) -> tuple[int, str] | None:
        from sidecar_common.httpclient import HttpClientError, request

        port = slot.admin_port
        if port is None:
            return None
        with trio.move_on_after(SCRAPE_TIMEOUT):
            try:
                resp = await request("GET", f"http://127.0.0.1:{port}{path}")
            except HttpClientError:
                return None
            return resp.status, resp.body.decode("utf-8", "replace")
        return None

    async def metrics(self, request: Request) -> Response:
        """GET /metrics: the parent's own families, then every worker's, merged."""
        texts: list[str] = []

        async def scrape(slot: _Slot) -> None:
            got = await self._get(slot, "/metrics")
            if got is not None and got[0] == 200:
                texts.append(got[1])

        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                nursery.start_soon(scrape, slot)
        own = self.registry.render()
        merged = merge_expositions(
            [*texts, self.retired], skip=PARENT_FAMILIES | self._own_families()
        )
        return Response(200, (own + merged).encode(), CONTENT_TYPE)

    async def clusters(self, request: Request) -> Response:
        """GET /clusters: every worker's own report (balancing state is per worker)."""
        reports: dict[int, object] = {}

        async def ask(slot: _Slot) -> None:
            got = await self._get(slot, "/clusters")
            if got is not None and got[0] == 200:
                with contextlib.suppress(ValueError):
                    reports[slot.index] = json.loads(got[1])

        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                nursery.start_soon(ask, slot)
        workers = [
            {"worker": slot.index, "pid": slot.process.pid if slot.process else None,
             "report": reports.get(slot.index)}
            for slot in self.slots
        ]  # fmt: skip
        return json_response(200, {"env": self.switch.current, "workers": workers})

    def _own_families(self) -> set[str]:
        return {
            line.split()[2]
            for line in self.registry.render().splitlines()
            if line.startswith("# TYPE ")
        }

    async def put_env(self, request: Request) -> Response:
        """PUT /env: switch here (validated, logged, counted once), then in every worker."""
        from .admin_routes import EnvRequestError, parse_env_body

        try:
            name = parse_env_body(request.body, request.header("content-type"))
        except EnvRequestError as exc:
            return json_response(
                400, {"error": str(exc), "environments": list(self.switch.environments)}
            )
        result = self.apply_switch(name, "admin")
        if result.refused:
            return json_response(
                422,
                {
                    "error": result.reason,
                    "env": self.switch.current,
                    "environments": list(self.switch.environments),
                },
            )
        await self.push_env()
        body = self.switch.snapshot()
        body["previous"] = result.previous
        body["result"] = result.result
        return json_response(200, body)

    async def get_env(self, request: Request) -> Response:
        return json_response(200, self.switch.snapshot())

    # ------------------------------------------------------------ running

    async def run(self, lifecycle: Any) -> None:
        """Serve until the drain, then drain every worker and return."""
        log_event(
            log,
            "starting workers",
            workers=len(self.slots),
            env=self.switch.current,
            listeners=[lst.name for lst in self.cfg.listeners],
        )
        async with trio.open_nursery() as background:
            if self.cfg.admin is not None:
                app = AdminApp(self.registry, ready=self.ready)
                app.route("GET", "/metrics", self.metrics)
                app.route("GET", "/readyz", self.readyz)
                app.route("GET", "/env", self.get_env, loopback_only=True)
                app.route("PUT", "/env", self.put_env, loopback_only=True)
                app.route("GET", "/clusters", self.clusters, loopback_only=True)
                bound = await background.start(
                    serve_admin, app, self.cfg.admin.host, self.cfg.admin.port
                )
                log_event(log, "admin listening", address=f"{self.cfg.admin.host}:{bound}")
            if self.cfg.env_file is not None:
                path = self.cfg.env_file
                await background.start(
                    control.watch_file, path, functools.partial(self._env_file_changed, path)
                )
            if self.cfg.config_file is not None:
                path = self.cfg.config_file
                await background.start(
                    control.watch_file, path, functools.partial(self._config_changed, path)
                )
            background.start_soon(self._poll_workers)
            async with trio.open_nursery() as workers:
                self._workers_nursery = workers
                for slot in self.slots:
                    workers.start_soon(self._supervise, slot)
                await lifecycle.wait_drain()
                self.draining = True
                self._drain.set()
                for slot in self.slots:
                    for group in slot.sockets.values():
                        for s in group:
                            s.close()
                    if slot.process is not None:
                        with contextlib.suppress(OSError):
                            slot.process.send_signal(signal.SIGTERM)
                log_event(
                    log, "draining workers", workers=sum(s.process is not None for s in self.slots)
                )
            log_event(log, "workers drained")
            background.cancel_scope.cancel()

    async def readyz(self, request: Request) -> Response:
        """GET /readyz, asked of every worker now (not a cached poll)."""
        if self.draining:
            return Response(503, b"draining")

        async def ask(slot: _Slot) -> None:
            got = await self._get(slot, "/readyz")
            if got is not None:
                slot.ready = (got[0] == 200, got[1].strip())

        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                nursery.start_soon(ask, slot)
        ok, reason = self.ready()
        return Response(200 if ok else 503, (reason or ("ready" if ok else "not ready")).encode())

    def _fds(self, slot: _Slot) -> dict[str, list[int]]:
        return {name: [s.fileno() for s in group] for name, group in slot.sockets.items()}

    async def _supervise(self, slot: _Slot) -> None:
        """Run worker ``slot`` until the drain: restart it when it exits, replace it on request."""
        attempt = 0
        while not self.draining:
            started = trio.current_time()
            proc = await self._start_worker(slot)
            status: int | None = None
            replaced = False
            if proc is not None:
                slot.waiter = trio.CancelScope()
                try:
                    with slot.waiter:
                        status = await proc.wait()
                    replaced = slot.waiter.cancelled_caught
                finally:
                    slot.waiter = None
                    slot.process = None
                    slot.admin_port = None
                    slot.ready = (False, "exited")
                    if replaced:
                        # The old worker drains its connections while the new one
                        # already accepts on the same socket.
                        with contextlib.suppress(OSError):
                            proc.send_signal(signal.SIGTERM)
                    if proc.returncode is None:
                        self._workers_nursery.start_soon(self._reap, proc)
                    else:
                        await self._close_pipes(proc)
            if self.draining:
                return
            if replaced:
                attempt = 0
                continue
            ran = trio.current_time() - started
            attempt = 0 if ran >= STABLE_AFTER else attempt + 1
            delay = RESTART_BACKOFF.delay(attempt, self.rng)
            self.restarts.inc()
            slot.restarts += 1
            log_event(
                log,
                "worker exited; restarting",
                level=logging.ERROR,
                worker=slot.index,
                exit_status=status,
                restart_in=round(delay, 3),
            )
            with trio.move_on_after(delay):
                await self._drain.wait()

    async def _reap(self, proc: trio.Process) -> None:
        """Wait for a retired worker; nothing may outlive the parent (killed if cancelled)."""
        try:
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
            await self._close_pipes(proc)

    async def _close_pipes(self, proc: trio.Process) -> None:
        """Close the worker's stdin (its stdout belongs to :meth:`_collect`)."""
        with trio.CancelScope(shield=True):
            if proc.stdin is not None:
                with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                    await proc.stdin.aclose()

    async def _collect(self, proc: trio.Process) -> None:
        """Read a worker's stdout to EOF; keep the final counts it writes when it drained."""
        assert proc.stdout is not None
        chunks: list[bytes | bytearray] = []
        try:
            while chunk := await proc.stdout.receive_some(65536):
                chunks.append(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            with trio.CancelScope(shield=True):
                await proc.stdout.aclose()
        data = b"".join(chunks)
        if data.startswith(b"metrics\n"):
            self.retire_metrics(data[len(b"metrics\n") :].decode("utf-8", "replace"))

    def retire_metrics(self, text: str) -> None:
        """Fold a gone worker's final counters and histograms into the merged /metrics."""
        try:
            gauges = {f for f, t in parse_exposition(text).types.items() if t == "gauge"}
        except MetricsParseError:
            return
        self.retired = merge_expositions([self.retired, text], skip=gauges | PARENT_FAMILIES)

    async def _start_worker(self, slot: _Slot) -> trio.Process | None:
        """Start the worker of ``slot`` and wait for its admin port; None if it failed."""
        env = self.switch.current
        cfg = dataclasses.replace(
            worker_config(self.cfg, len(self.slots), slot.index),
            env=env,
            env_file=None,
            admin=None,
            config_file=None,
        )
        fds = self._fds(slot)
        spec = WorkerSpec(slot.index, cfg, self.overrides, fds)
        proc = await trio.lowlevel.open_process(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=[fd for group in fds.values() for fd in group],
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        slot.process = proc
        slot.env = env
        slot.ready = (False, "starting")
        port = None
        try:
            with contextlib.suppress(trio.BrokenResourceError):
                await proc.stdin.send_all(pickle.dumps(spec))
            with trio.move_on_after(START_TIMEOUT):
                port = await _read_port(proc.stdout)
        finally:
            if port is None:
                slot.process = None
                with contextlib.suppress(OSError):
                    proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
                    await proc.stdout.aclose()
                await self._close_pipes(proc)
        if port is None:
            log_event(
                log,
                "worker did not start",
                level=logging.ERROR,
                worker=slot.index,
                exit_status=proc.returncode,
            )
            return None
        slot.admin_port = port
        slot.generation += 1
        self._workers_nursery.start_soon(self._collect, proc)
        log_event(log, "worker started", worker=slot.index, pid=proc.pid, admin_port=port)
        if self.switch.current != env:
            await self._push_env_one(slot)
        return proc

    async def replace_workers(self) -> None:
        """Replace every worker (a reloaded config) and wait until the successors are ready.

        All at once: each old worker stops accepting at once and drains its
        connections while its successor accepts on the same socket (connections
        arriving in between wait in the accept queue), so no client sees the old
        and the new config side by side for longer than a worker's start.
        """
        generations = [slot.generation for slot in self.slots]
        for slot in self.slots:
            if slot.waiter is not None:
                slot.waiter.cancel()
        with trio.move_on_after(START_TIMEOUT):
            for slot, generation in zip(self.slots, generations, strict=True):
                while not self.draining and (slot.generation == generation or not slot.ready[0]):
                    await trio.sleep(0.05)
                    got = await self._get(slot, "/readyz")
                    if got is not None:
                        slot.ready = (got[0] == 200, got[1].strip())

    async def _poll_workers(self) -> None:
        """Keep each worker's readiness fresh, and its environment equal to ours."""
        while True:
            async with trio.open_nursery() as nursery:
                for slot in self.slots:
                    nursery.start_soon(self._poll_one, slot)
            await trio.sleep(POLL_INTERVAL)

    async def _poll_one(self, slot: _Slot) -> None:
        got = await self._get(slot, "/readyz")
        if got is not None:
            slot.ready = (got[0] == 200, got[1].strip())
        env_got = await self._get(slot, "/env")
        if env_got is not None and env_got[0] == 200:
            with contextlib.suppress(ValueError, AttributeError):
                slot.env = json.loads(env_got[1]).get("env")
            if slot.env != self.switch.current:
                await self._push_env_one(slot)

    async def _env_file_changed(self, path: Path) -> None:
        name = await control.read_env_choice(path, self.switch.current, log)
        if name is None:
            return
        self.apply_switch(name, "env_file")
        await self.push_env()

    async def _config_changed(self, path: Path) -> None:
        """A reloaded config: switch here if its ``env`` changed, then replace the workers.

        Workers get the whole new config on their next start, so endpoints,
        limits, health checks... change by a rolling replacement (each old
        worker drains while its successor already accepts on the same socket).
        Listeners added or moved are bound here first (one SO_REUSEPORT socket
        per worker); the sockets of removed and moved listeners are closed once
        the successors are ready (the old workers drain their connections). A
        bind that fails keeps the running config, and says so.
        """
        new = await control.reload_config(path, self.overrides, log)
        if new is None:
            return
        old = self.cfg
        retired = self._rebind(new, old)
        if retired is None:
            return
        self.cfg = dataclasses.replace(
            new, env_file=old.env_file, admin=old.admin, log_level=old.log_level
        )
        self.switch.set_environments(self.cfg.environments)
        log_event(
            log, "config reloaded", path=str(path), environments=list(self.switch.environments)
        )
        if new.env is not None and new.env != old.env:
            self.apply_switch(new.env, "config")
        # Running workers follow the switch at once (those whose config lacks the
        # new environment refuse it, and are replaced next).
        await self.push_env()
        if dataclasses.replace(self.cfg, env=None) != dataclasses.replace(old, env=None):
            await self.replace_workers()
        for sock in retired:
            sock.close()
        # Said once the sockets are closed (the old workers closed their copies when
        # they began to drain): a client connecting after this line is refused, not
        # queued on a socket nobody accepts from any more and then reset.
        kept = {lst.name for lst in new.listeners}
        for lst in old.listeners:
            if lst.name not in kept:
                log_event(log, "listener removed; draining its connections", listener=lst.name)

    def _rebind(self, new: AmbassadorConfig, old: AmbassadorConfig) -> list[socket.socket] | None:
        """Give every slot the sockets of ``new``'s listeners; the sockets no longer used.

        Unchanged listeners (same name, same address) keep their sockets; the
        others are bound now, once per worker. None (nothing changed, error
        logged) when one cannot be bound.
        """
        running = {lst.name: lst.listen for lst in old.listeners}
        fresh = [lst for lst in new.listeners if running.get(lst.name) != lst.listen]
        bound: list[dict[str, list[socket.socket]]] = [{} for _ in self.slots]
        if fresh:
            try:
                bound = control.bind_listeners(
                    dataclasses.replace(new, listeners=tuple(fresh)), copies=len(self.slots)
                )
            except ConfigError as exc:
                log_event(
                    log,
                    "cannot listen; listener change not applied",
                    level=logging.ERROR,
                    error=str(exc),
                )
                return None
        names = {lst.name for lst in new.listeners}
        retired: list[socket.socket] = []
        for slot, extra in zip(self.slots, bound, strict=True):
            kept: dict[str, list[socket.socket]] = {}
            for name, group in slot.sockets.items():
                if name in names and name not in extra:
                    kept[name] = group
                else:
                    retired += group
            slot.sockets = {
                lst.name: kept.get(lst.name) or extra[lst.name] for lst in new.listeners
            }
        for lst in fresh:
            log_event(
                log,
                "listener moved" if lst.name in running else "listener added",
                listener=lst.name,
                address=str(lst.listen),
            )
        return retired


async def _read_port(stream: trio.abc.ReceiveStream) -> int | None:
    """The worker's first stdout line: ``port N``."""
    buf = b""
    while b"\n" not in buf:
        chunk = await stream.receive_some(64)
        if not chunk:
            return None
        buf += chunk
    line = buf.split(b"\n", 1)[0].decode("ascii", "replace").split()
    if len(line) == 2 and line[0] == "port" and line[1].isdigit():
        return int(line[1])
    return None


def run_workers(
    cfg: AmbassadorConfig,
    overrides: Mapping[str, object],
    workers: int,
    *,
    command: Sequence[str] | None = None,
) -> int:
    """The ``ambassador run --workers N`` path (N >= 2); returns the exit status."""
    from sidecar_common.lifecycle import run_sidecar

    sockets = bind_reuseport(cfg, workers)
    supervisor = Supervisor(cfg, overrides, sockets, command=command)
    return run_sidecar(
        supervisor.run, drain_deadline=cfg.drain_timeout + 1.0 + KILL_GRACE, name="ambassador"
    )


# --------------------------------------------------------------------------- worker


def worker_main() -> None:
    """A worker process: read its spec on stdin, serve, report the admin port on stdout."""
    from sidecar_common.jsonlog import setup_logging
    from sidecar_common.lifecycle import Lifecycle, run_sidecar

    spec: WorkerSpec = pickle.load(sys.stdin.buffer)
    setup_logging(spec.config.log_level)
    sockets = {name: [socket.socket(fileno=fd) for fd in fds] for name, fds in spec.fds.items()}

    async def main(lifecycle: Lifecycle) -> None:
        from .admin_routes import install_cluster_route, install_env_routes
        from .app import Ambassador

        ambassador = Ambassador(spec.config, sockets, overrides=spec.overrides)
        app = AdminApp(ambassador.registry, ready=ambassador.ready)
        install_env_routes(app, ambassador.switch, ambassador.apply_switch)
        install_cluster_route(app, ambassador.clusters_report)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_admin, app, "127.0.0.1", 0)
            os.write(1, f"port {port}\n".encode())
            nursery.start_soon(_drain_when_parent_exits, lifecycle)
            nursery.start_soon(trim_after_start, 2.0)
            await ambassador.run(lifecycle)
            nursery.cancel_scope.cancel()
        # Drained and the admin server closed: the final counts, for the parent
        # to keep once this worker is gone (its /metrics stays exact across
        # replacements).
        _write_all(1, b"metrics\n" + ambassador.registry.render().encode())

    raise SystemExit(
        run_sidecar(main, drain_deadline=spec.config.drain_timeout + 1.0, name="ambassador")
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
        while view:
            view = view[os.write(fd, view) :]


async def _drain_when_parent_exits(lifecycle: Any) -> None:
    """stdin stays open while the parent lives: EOF means it is gone, so drain."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    try:
        while await stdin.receive_some(1024):
            pass
    finally:
        await stdin.aclose()
    lifecycle.start_drain("parent exited")


# --------------------------------------------------------------------------- lean exec


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What ``ambassador run`` hands to the lean process it becomes (see :func:`exec_run`)."""

    config: AmbassadorConfig
    overrides: Mapping[str, object]
    workers: int = 1
    #: Seconds connections get after SIGTERM plus the grace the CLI adds.
    drain_grace: float = 1.0
    #: How to start this module (``leanexec.lean_command("ambassador.serve")``), for workers.
    command: tuple[str, ...] | None = None


def exec_run(
    cfg: AmbassadorConfig,
    overrides: Mapping[str, object],
    *,
    workers: int = 1,
    drain_grace: float = 1.0,
    command: Sequence[str] | None = None,
) -> NoReturn:
    """Become a lean ``ambassador`` process: same PID, without the CLI's imports.

    Parsing the command line needs typer, and typer pulls pydantic and click
    (about 12 MB of the idle RSS, for code that never runs again). So once the
    config is valid, ``ambassador run`` execs ``python -OO -P -m sidecar_common.leanstart
    ambassador.serve --run FD`` with the parsed config in a memfd: the process keeps its PID
    (PID 1 in a container, signals) and its environment, and starts with only
    what serving needs. Listening sockets are bound after the exec, so a busy
    address is still one ``ambassador: error:`` line and exit status 2.
    """
    base = tuple(command or lean_command("ambassador.serve"))
    exec_lean("ambassador.serve", RunSpec(cfg, dict(overrides), workers, drain_grace, base))


def serve_spec(payload: object) -> int:
    """The lean process: take the spec, bind, serve (one process or the supervisor).

    Run by :func:`sidecar_common.leanexec.run_lean`, which turns a bad payload or
    a ``ConfigError`` found here (a busy port) into one line and exit status 2.
    """
    from sidecar_common.jsonlog import setup_logging
    from sidecar_common.lifecycle import Lifecycle, run_sidecar

    if not isinstance(payload, RunSpec):
        raise LeanExecError(f"start-up payload is a {type(payload).__name__}, not a RunSpec")
    spec = payload
    cfg = spec.config
    setup_logging(cfg.log_level)
    from .fastrelay import check_settings
    from .http.settings import lane_enabled

    check_settings()
    lane_enabled()  # a bad AMBASSADOR_HTTP_LANE is one line and exit 2, before anything starts
    if spec.workers > 1:
        worker_command = [*spec.command, "--worker"] if spec.command else None
        return run_workers(cfg, spec.overrides, spec.workers, command=worker_command)
    from .app import Ambassador, bind_listeners

    sockets = bind_listeners(cfg)

    async def main(lifecycle: Lifecycle) -> None:
        ambassador = Ambassador(cfg, sockets, overrides=spec.overrides)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trim_after_start, 2.0)
            await ambassador.run(lifecycle)
            nursery.cancel_scope.cancel()

    return run_sidecar(main, drain_deadline=cfg.drain_timeout + spec.drain_grace, name="ambassador")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ambassador.workers --workers N run --config FILE [--env E] [--admin A]``.

    The stand-alone entry the benchmark's launcher uses (``ambassador run
    --workers N`` is the user's; both end in :func:`serve_spec` / :func:`run_workers`);
    ``--worker`` is a worker process (spec on stdin), ``--run FD`` the lean
    process :func:`exec_run` becomes.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--worker"]:
        worker_main()
        return
    if args[:1] == ["--run"]:
        run_lean("ambassador", serve_spec, args)
    import argparse  # here, not at the top: the lean process never parses flags

    parser = argparse.ArgumentParser(prog="ambassador")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--env", default=None)
    parser.add_argument("--env-file", type=Path, default=None)
    parser.add_argument("--admin", default=None)
    parser.add_argument("--log-level", default=None)
    parser.add_argument("--worker-command", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--exec", action="store_true", help="become the lean process (exec_run)")
    ns = parser.parse_args(args)
    from sidecar_common.cli import fail
    from sidecar_common.jsonlog import setup_logging

    from .cli import build_config

    if ns.workers < 1:
        fail("ambassador", f"invalid value for --workers: {ns.workers!r} (expected at least 1)")
    try:
        cfg, overrides = build_config(
            config=ns.config,
            listen=None,
            backend=None,
            env=ns.env,
            env_file=ns.env_file,
            admin=ns.admin,
            log_level=ns.log_level,
        )
        command = json.loads(ns.worker_command) if ns.worker_command else None
        if ns.exec:
            exec_run(cfg, overrides, workers=ns.workers, command=command and command[:-1])
        setup_logging(cfg.log_level)
        raise SystemExit(run_workers(cfg, overrides, ns.workers, command=command))
    except ConfigError as exc:
        fail("ambassador", str(exc))


if __name__ == "__main__":
    main()
