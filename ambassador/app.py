"""Running the ambassador: listeners, admin, health checks, discovery, watches, drain.

One ``Ambassador`` object owns the state that outlives a connection: the
environment switch, the clusters of every (listener, environment), the
metrics. ``run`` lays the tasks out under nurseries so that the drain order
falls out of the structure:

    background (admin, health checks, discovery, file watches)
      connections (one task per client)
        accepting (one accept loop per listener)

A drain cancels ``accepting`` (the listening sockets close at once), gives the
open connections ``drain_timeout`` seconds, waits for ``connections`` to empty,
and only then stops the background tasks, so /metrics and /readyz answer until
the very end.

A reloaded config file changes listeners the same way, one at a time (what
Envoy users get from LDS): a new listener is bound and starts accepting in
``accepting``; a removed one stops accepting at once (its socket closes) and
its open connections get ``drain_timeout`` before they are closed; a listener
whose address changed moves to the new socket with its connections, clusters
and metrics (the old socket closes once the new one is bound); a listener whose
``protocol`` or ``http`` table changed gets a new runtime on the same socket
while the old runtime drains its connections (metrics summed by name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import logging
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import trio

from sidecar_common.admin import AdminApp, AdminError, serve_admin
from sidecar_common.errors import ConfigError
from sidecar_common.jsonlog import get_logger, log_event
from sidecar_common.lifecycle import Lifecycle
from sidecar_common.metrics import Registry

from . import control
from .admin_routes import clusters_report, install_cluster_route, install_env_routes
from .cluster import Cluster
from .config import AmbassadorConfig, ListenerConfig, read_env_file, resolve_initial_env
from .endpoint import EndpointState
from .health import HealthConfig, Transition
from .healthcheck import run_health_checks
from .listener import ListenerRuntime, Metrics
from .outlier import OutlierConfig
from .switch import EnvSwitch, SwitchResult

if TYPE_CHECKING:
    from .pgbridge import AsyncioBridge

__all__ = ["Ambassador", "ListenerChanges", "bind_listeners", "build_cluster"]

log = get_logger("ambassador")


def bind_listeners(cfg: AmbassadorConfig) -> dict[str, list[socket.socket]]:
    """Bind every listener's socket now; a busy or foreign address is a ``ConfigError``."""
    return control.bind_listeners(cfg)[0]


def build_cluster(lst: ListenerConfig, env: str, rng: random.Random, now: float) -> Cluster:
    """The routing core's cluster for one (listener, environment) of the config."""
    o = lst.outlier
    hc = lst.health_check
    cluster = Cluster(
        f"{lst.name}/{env}",
        policy=lst.policy,
        outlier=OutlierConfig(
            consecutive_failures=o.consecutive_failures,
            base_ejection=o.base_ejection,
            max_ejection=o.max_ejection,
            max_ejection_percent=float(o.max_ejection_percent),
        ),
        health=HealthConfig(
            healthy_threshold=hc.healthy_threshold, unhealthy_threshold=hc.unhealthy_threshold
        ),
        max_connections_per_endpoint=lst.limits.max_connections_per_endpoint,
        rng=rng,
    )
    cluster.set_addresses(((e.host, e.port) for e in lst.environments[env].endpoints), now)
    return cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Removed(NamedTuple):
    """A listener a reload removed: its name, connections left to drain, sockets closed."""

    name: str
    open_connections: int
    closed: trio.Event


@dataclass
class ListenerChanges:
    """What a reload does to the set of listeners (:meth:`Ambassador.reload`).

    ``removed`` are already stopped (their accept loops cancelled; each one's
    event is set once its sockets are closed, and only then is the removal
    logged); ``added`` and ``moved`` (the new config of a listener whose
    address changed) wait for :meth:`Ambassador.apply_listener_changes`.
    """

    added: list[ListenerConfig] = field(default_factory=list)
    moved: list[ListenerConfig] = field(default_factory=list)
    removed: list[_Removed] = field(default_factory=list)


@dataclass
class _ClusterTasks:
    """The cancel scope of one cluster's health-check and discovery tasks (restarted on reload)."""

    scope: trio.CancelScope


class Ambassador:
    """The ambassador's long-lived state and its ``run`` method."""

    def __init__(
        self,
        cfg: AmbassadorConfig,
        sockets: Mapping[str, list[socket.socket]],
        *,
        overrides: Mapping[str, object] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.sockets = dict(sockets)
        self.overrides = dict(overrides or {})
        self.rng = rng or random.Random()
        self.registry = Registry()
        self.metrics = Metrics(self.registry)
        env, self.initial_source = resolve_initial_env(cfg)
        self.switch = EnvSwitch(cfg.environments, env)
        self.metrics.switch = self.switch
        self.lifecycle: Lifecycle | None = None
        self.runtimes: dict[str, ListenerRuntime] = {}
        now = trio.current_time() if _in_trio() else 0.0
        for lst in cfg.listeners:
            clusters = {env: build_cluster(lst, env, self.rng, now) for env in lst.environments}
            self.runtimes[lst.name] = ListenerRuntime(lst, clusters, self.switch, self.metrics)
        self._background: trio.Nursery | None = None
        #: Where reloads start and stop listeners while serving (None before and after).
        self._accepting: trio.Nursery | None = None
        self._connections: trio.Nursery | None = None
        #: Each listener's accept loop: cancelled to stop accepting, set once its sockets closed.
        self._accept_loops: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        #: Listeners removed by a reload whose connections are still draining.
        self._retiring: set[ListenerRuntime] = set()
        self._cluster_tasks: dict[tuple[str, str], _ClusterTasks] = {}
        self._bridge: AsyncioBridge | None = None

    # ---------------------------------------------------------------- switching

    def apply_switch(self, name: str, source: str) -> SwitchResult:
        """Switch the environment from any source: decide, log, count, drain."""
        result = control.apply_switch(self.switch, self.metrics.env_switches, log, name, source)
        if result.changed:
            missing = [rt.name for rt in self.runtimes.values() if name not in rt.clusters]
            if missing:
                log_event(
                    log,
                    "listeners without this environment refuse connections",
                    level=logging.WARNING,
                    env=name,
                    listeners=missing,
                )
            if self.cfg.switch_drain_timeout is not None:
                for rt in self.runtimes.values():
                    rt.drain_env(result.current, self.cfg.switch_drain_timeout)
        return result

    def clusters_report(self) -> dict[str, Any]:
        """GET /clusters (see :func:`ambassador.admin_routes.clusters_report`)."""
        return clusters_report(self.runtimes.values(), self.switch.current, trio.current_time())

    def ready(self) -> tuple[bool, str]:
        """Readiness: not draining, an environment chosen, and every listener that has it usable."""
        if self.lifecycle is not None and self.lifecycle.draining:
            return False, "draining"
        env = self.switch.current
        if env is None:
            return False, "no environment selected"
        serving = [rt for rt in self.runtimes.values() if env in rt.clusters]
        if not serving:
            return False, f"no listener has environment {env!r}"
        for rt in serving:
            if not rt.has_usable(env):
                return False, f"listener {rt.name}: no healthy endpoint in {env}"
        return True, f"env {env}"

    # ---------------------------------------------------------------- running

    async def run(self, lifecycle: Lifecycle) -> None:
        """Serve until the drain; return once connections are done (or cut at the deadline)."""
        self.lifecycle = lifecycle
        cfg = self.cfg
        log_event(
            log,
            "starting",
            env=self.switch.current,
            source=self.initial_source,
            environments=list(self.switch.environments),
            listeners=[lst.name for lst in cfg.listeners],
        )
        if cfg.env_file is not None:
            # resolve_initial_env took the file's name if it was a valid choice;
            # a name that is not gets the same refusal as at runtime.
            named = read_env_file(cfg.env_file)
            if named is not None and named != self.switch.current:
                self.apply_switch(named, "env_file")
        if self.switch.current is None:
            log_event(
                log,
                "no environment selected; connections are refused until one is set",
                level=logging.WARNING,
                environments=list(self.switch.environments),
            )
        async with contextlib.AsyncExitStack() as stack:
            if any(lst.health_check.type == "postgres" for lst in cfg.listeners):
                # One asyncio thread for every asyncpg health check of the process;
                # imported only here (asyncio + asyncpg: ~4.5 MB resident).
                from .pgbridge import open_asyncio_bridge

                self._bridge = await stack.enter_async_context(open_asyncio_bridge())
            await self._serve(lifecycle, cfg)

    async def _serve(self, lifecycle: Lifecycle, cfg: AmbassadorConfig) -> None:
        async with trio.open_nursery() as background:
            self._background = background
            if cfg.admin is not None:
                await self._start_admin(background)
            for rt in self.runtimes.values():
                for env, cluster in rt.clusters.items():
                    self._start_cluster_tasks(rt.config, env, cluster)
            if cfg.env_file is not None:
                await background.start(
                    control.watch_file,
                    cfg.env_file,
                    functools.partial(self._env_file_changed, cfg.env_file),
                )
            if cfg.config_file is not None:
                await background.start(
                    control.watch_file,
                    cfg.config_file,
                    functools.partial(self._config_changed, cfg.config_file),
                )
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    self._connections = connections
                    for rt in self.runtimes.values():
                        await accepting.start(
                            self._accept_main, rt, self.sockets[rt.name], self._loop_handle(rt)
                        )
                    self._accepting = accepting
                    await lifecycle.wait_drain()
                    self._accepting = None
                    accepting.cancel_scope.cancel()
                every = [*self.runtimes.values(), *self._retiring]
                log_event(
                    log,
                    "stopped accepting; draining connections",
                    open_connections=sum(len(rt.connections) for rt in every),
                    drain_timeout=cfg.drain_timeout,
                )
                for rt in every:
                    rt.shutdown_after(cfg.drain_timeout)
            self._connections = None
            log_event(log, "connections drained")
            for rt in every:
                await rt.aclose()
            background.cancel_scope.cancel()

    def _loop_handle(self, rt: ListenerRuntime) -> tuple[trio.CancelScope, trio.Event]:
        """The cancel scope and closed event of ``rt``'s next accept loop, registered now."""
        handle = self._accept_loops[rt.name] = (trio.CancelScope(), trio.Event())
        return handle

    async def _accept_main(
        self,
        rt: ListenerRuntime,
        sockets: list[socket.socket],
        handle: tuple[trio.CancelScope, trio.Event],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on ``sockets`` for ``rt`` until the drain or a reload stops it (closing them)."""
        assert self._connections is not None
        scope, closed = handle
        log_event(
            log,
            "listening",
            listener=rt.name,
            address=_sockname(sockets[0]),
            protocol=rt.config.protocol,
        )
        try:
            with scope:
                await rt.serve(sockets, handler_nursery=self._connections, task_status=task_status)
        finally:
            closed.set()

    async def _start_admin(self, nursery: trio.Nursery) -> None:
        assert self.cfg.admin is not None
        app = AdminApp(self.registry, ready=self.ready)
        install_env_routes(app, self.switch, self.apply_switch)
        install_cluster_route(app, self.clusters_report)
        host, port = self.cfg.admin.host, self.cfg.admin.port
        try:
            bound = await nursery.start(serve_admin, app, host, port)
        except AdminError as exc:
            setting = "--admin" if self.overrides.get("admin") else "admin"
            raise ConfigError(setting, str(self.cfg.admin), f"a free address; {exc}") from None
        log_event(log, "admin listening", address=f"{host}:{bound}")

    def _start_cluster_tasks(self, lst: ListenerConfig, env: str, cluster: Cluster) -> None:
        """(Re)start the health checks and DNS discovery of one cluster."""
        key = (lst.name, env)
        old = self._cluster_tasks.pop(key, None)
        if old is not None:
            old.scope.cancel()
        assert self._background is not None
        tasks = _ClusterTasks(trio.CancelScope())
        self._cluster_tasks[key] = tasks
        self._background.start_soon(self._cluster_main, lst, env, cluster, tasks.scope)

    async def _cluster_main(
        self, lst: ListenerConfig, env: str, cluster: Cluster, scope: trio.CancelScope
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                if lst.health_check.type != "none":
                    nursery.start_soon(self._health_main, lst, env, cluster)
                env_cfg = lst.environments[env]
                if env_cfg.discover is not None:
                    from .discovery_etcd import run_etcd_discovery

                    d = env_cfg.discover
                    await nursery.start(
                        functools.partial(
                            run_etcd_discovery,
                            cluster,
                            d.etcd,
                            d.prefix,
                            environment=d.environment,
                            rng=self.rng,
                        )
                    )
                names = [(e.host, e.port) for e in env_cfg.endpoints]
                if any(not _is_ip(host) for host, _ in names):
                    from .discovery import run_dns_discovery

                    nursery.start_soon(run_dns_discovery, cluster, names, self.cfg.dns_refresh)

    async def _health_main(self, lst: ListenerConfig, env: str, cluster: Cluster) -> None:
        def on_transition(ep: EndpointState, transition: Transition) -> None:
            log_event(
                log,
                "endpoint healthy" if transition.healthy else "endpoint unhealthy",
                level=logging.INFO if transition.healthy else logging.WARNING,
                listener=lst.name,
                env=env,
                endpoint=ep.name,
                reason=transition.reason,
            )

        await run_health_checks(
            cluster,
            lst.health_check,
            on_transition=on_transition,
            bridge=self._bridge,
            rng=self.rng,
        )

    async def _env_file_changed(self, path: Path) -> None:
        name = await control.read_env_choice(path, self.switch.current, log)
        if name is not None:
            self.apply_switch(name, "env_file")

    async def _config_changed(self, path: Path) -> None:
        new = await control.reload_config(path, self.overrides, log)
        if new is not None:
            await self.apply_listener_changes(self.reload(new))

    def reload(self, new: AmbassadorConfig) -> ListenerChanges:
        """Apply a changed config file; what it does to the set of listeners is returned.

        Endpoints, environments, policies, limits and health checks change now,
        in place (clusters keep their endpoint state where the core settings
        did not change). While serving:

        - a removed listener stops accepting now and drains;
        - a listener whose ``protocol`` or ``http`` table changed is replaced:
          a new runtime accepts on the same socket at once, the old one drains
          the connections it has (the metrics stay continuous, see
          :meth:`_retire`);
        - added and moved listeners are bound and started by
          :meth:`apply_listener_changes` (after the removed ones have closed
          their sockets, so an address can pass from one listener to another).

        Not serving (before ``run``, during the drain), listener changes are
        not applied and a restart is asked for.
        """
        old = self.cfg
        now = trio.current_time()
        serving = self._accepting is not None
        changes = ListenerChanges()
        restart: list[str] = []
        names = {lst.name for lst in new.listeners}
        for name in [name for name in self.runtimes if name not in names]:
            if serving:
                changes.removed.append(self._remove_listener(name))
            else:
                restart.append(name)
        for lst in new.listeners:
            rt = self.runtimes.get(lst.name)
            if rt is None:
                if serving:
                    changes.added.append(lst)
                else:
                    restart.append(lst.name)
                continue
            rebuilt = rt.config.protocol != lst.protocol or rt.config.http != lst.http
            if not serving and (rebuilt or rt.config.listen != lst.listen):
                restart.append(lst.name)
                continue
            if rebuilt and rt.config.listen != lst.listen:
                # A new runtime on a new address: a removal and an addition.
                changes.removed.append(self._remove_listener(lst.name))
                changes.added.append(lst)
            elif rebuilt:
                self._replace_listener(rt, lst, now)
            elif rt.config.listen != lst.listen:
                changes.moved.append(lst)
                # Served where it is until the new address is bound.
                self._reconfigure(rt, dataclasses.replace(lst, listen=rt.config.listen), now)
            else:
                self._reconfigure(rt, lst, now)
        if restart:
            log_event(
                log,
                "listener changes need a restart; kept the running listeners",
                level=logging.WARNING,
                listeners=restart,
            )
        self._set_config(new, old, pending=changes.added)
        log_event(
            log,
            "config reloaded",
            path=str(new.config_file),
            environments=list(self.switch.environments),
        )
        if new.env is not None and new.env != old.env:
            self.apply_switch(new.env, "config")
        return changes

    def _clusters(self, rt: ListenerRuntime, lst: ListenerConfig, now: float) -> dict[str, Cluster]:
        """``lst``'s clusters: ``rt``'s own (new addresses) where the core settings are the same."""
        same_core = (
            rt.config.policy == lst.policy
            and rt.config.outlier == lst.outlier
            and rt.config.health_check == lst.health_check
            and rt.config.limits.max_connections_per_endpoint
            == lst.limits.max_connections_per_endpoint
        )
        clusters: dict[str, Cluster] = {}
        for env, env_cfg in lst.environments.items():
            cluster = rt.clusters.get(env)
            old_env = rt.config.environments.get(env)
            addresses = [(e.host, e.port) for e in env_cfg.endpoints]
            if cluster is not None and same_core:
                if env_cfg.discover is None or old_env is None or old_env.discover is None:
                    cluster.set_addresses(addresses, now)
                # else: discovered addresses stay; the restarted discovery re-lists.
            else:
                cluster = build_cluster(lst, env, self.rng, now)
            clusters[env] = cluster
        for env in rt.clusters:
            if env not in clusters:
                self._stop_cluster_tasks(lst.name, env)
        return clusters

    def _reconfigure(self, rt: ListenerRuntime, lst: ListenerConfig, now: float) -> None:
        """Same listener, new settings, applied in place."""
        if lst.http != rt.config.http:
            # Not serving (see reload): the HTTP proxy is built once per runtime.
            log_event(
                log,
                "http settings change needs a restart; kept the running ones",
                level=logging.WARNING,
                listener=lst.name,
            )
            lst = dataclasses.replace(lst, http=rt.config.http)
        clusters = self._clusters(rt, lst, now)
        rt.reconfigure(lst, clusters)
        for env, cluster in clusters.items():
            self._start_cluster_tasks(lst, env, cluster)

    def _replace_listener(self, rt: ListenerRuntime, lst: ListenerConfig, now: float) -> None:
        """A new runtime for ``lst`` on ``rt``'s sockets; ``rt`` drains what it has.

        The new accept loop gets duplicates of the listening sockets and starts
        before the old loop closes its own, so the socket never closes: no
        client is refused, none waits longer than the hand-over.
        """
        sockets = [sock.dup() for sock in self.sockets[rt.name]]
        clusters = self._clusters(rt, lst, now)
        successor = ListenerRuntime(lst, clusters, self.switch, self.metrics)
        self.runtimes[lst.name] = successor
        self._stop_accepting(rt.name)
        self._start_accepting(successor, sockets)
        for env, cluster in clusters.items():
            self._start_cluster_tasks(lst, env, cluster)
        log_event(
            log,
            "listener replaced; the old one drains its connections",
            listener=lst.name,
            protocol=lst.protocol,
            open_connections=len(rt.connections),
            drain_timeout=self.cfg.drain_timeout,
        )
        self._retire_later(rt)

    def _set_config(
        self, new: AmbassadorConfig, old: AmbassadorConfig, pending: list[ListenerConfig]
    ) -> None:
        """``self.cfg``: the new file's settings with the listeners as they run (and will)."""
        self.cfg = AmbassadorConfig(
            listeners=tuple(rt.config for rt in self.runtimes.values()) + tuple(pending),
            env=new.env,
            env_file=old.env_file,
            admin=old.admin,
            drain_timeout=new.drain_timeout,
            switch_drain_timeout=new.switch_drain_timeout,
            log_level=old.log_level,
            dns_refresh=new.dns_refresh,
            config_file=old.config_file,
        )
        self.switch.set_environments(self.cfg.environments)

    def _stop_cluster_tasks(self, name: str, env: str) -> None:
        task = self._cluster_tasks.pop((name, env), None)
        if task is not None:
            task.scope.cancel()

    def _stop_accepting(self, name: str) -> trio.Event:
        """Cancel ``name``'s accept loop; the event is set once its sockets are closed."""
        scope, closed = self._accept_loops.pop(name)
        scope.cancel()
        return closed

    def _remove_listener(self, name: str) -> _Removed:
        """Stop accepting on ``name`` now; its connections get ``drain_timeout`` seconds."""
        rt = self.runtimes.pop(name)
        closed = self._stop_accepting(name)
        self.sockets.pop(name, None)
        for env in rt.clusters:
            self._stop_cluster_tasks(name, env)
        self._retire_later(rt)
        return _Removed(name, len(rt.connections), closed)

    def _retire_later(self, rt: ListenerRuntime) -> None:
        rt.shutdown_after(self.cfg.drain_timeout)
        self._retiring.add(rt)
        assert self._background is not None
        self._background.start_soon(self._retire, rt)

    async def _retire(self, rt: ListenerRuntime) -> None:
        """Once a replaced or removed runtime's last connection is gone: release it.

        Its byte totals pass to the runtime that now has its name, if any (the
        metrics sum runtimes of one name), so ``ambassador_*_bytes_total`` never
        goes back; a removed listener's series leave ``/metrics``.
        """
        try:
            await rt.wait_idle()
            await rt.aclose()
        finally:
            self._retiring.discard(rt)
            successor = self.runtimes.get(rt.name)
            if successor is not None:
                for mine, theirs in (
                    (rt.closed_bytes_in, successor.closed_bytes_in),
                    (rt.closed_bytes_out, successor.closed_bytes_out),
                ):
                    for env, n in mine.items():
                        theirs[env] = theirs.get(env, 0) + n
            self.metrics.runtimes.remove(rt)
        log_event(log, "listener drained", listener=rt.name)

    async def apply_listener_changes(self, changes: ListenerChanges) -> None:
        """Bind and start the listeners a reload added or moved (see :meth:`reload`).

        A bind that fails (address busy, not ours) is logged and leaves things
        as they were: an added listener is not started, a moved one keeps its
        old address. A name added again while its old runtime still drains is
        fine: both count under the name until the old one is done.
        """
        for gone in changes.removed:
            # Logged once the address refuses connections (the accept loop closes its
            # sockets when its cancellation is delivered, after reload returned).
            await gone.closed.wait()
            log_event(
                log,
                "listener removed; draining its connections",
                listener=gone.name,
                open_connections=gone.open_connections,
                drain_timeout=self.cfg.drain_timeout,
            )
        for lst in changes.moved:
            rt = self.runtimes.get(lst.name)
            sockets = self._bind(lst) if rt is not None else None
            if rt is None or sockets is None:
                continue
            old_address = str(rt.config.listen)
            await self._stop_accepting(lst.name).wait()
            if not self._start_accepting(rt, sockets):
                return
            rt.reconfigure(dataclasses.replace(rt.config, listen=lst.listen), rt.clusters)
            log_event(
                log, "listener moved", listener=lst.name, old=old_address, new=str(lst.listen)
            )
        now = trio.current_time()
        for lst in changes.added:
            if lst.health_check.type == "postgres" and self._bridge is None:
                log_event(
                    log,
                    "a new listener with a postgres health check needs a restart; not started",
                    level=logging.WARNING,
                    listener=lst.name,
                )
                continue
            sockets = self._bind(lst)
            if sockets is None:
                continue
            clusters = {env: build_cluster(lst, env, self.rng, now) for env in lst.environments}
            rt = ListenerRuntime(lst, clusters, self.switch, self.metrics)
            if not self._start_accepting(rt, sockets):
                self.metrics.runtimes.remove(rt)
                return
            self.runtimes[lst.name] = rt
            for env, cluster in clusters.items():
                self._start_cluster_tasks(lst, env, cluster)
        self._set_config(self.cfg, self.cfg, pending=[])

    def _bind(self, lst: ListenerConfig) -> list[socket.socket] | None:
        from .listener import bind_socket

        try:
            return [bind_socket(lst.listen.host, lst.listen.port)]
        except OSError as exc:
            log_event(
                log,
                "cannot listen; listener change not applied",
                level=logging.ERROR,
                listener=lst.name,
                address=str(lst.listen),
                error=exc.strerror or str(exc),
            )
            return None

    def _start_accepting(self, rt: ListenerRuntime, sockets: list[socket.socket]) -> bool:
        """Serve ``rt`` on ``sockets``; False (sockets closed) when the drain has begun."""
        if self._accepting is None:
            for sock in sockets:
                sock.close()
            return False
        self.sockets[rt.name] = sockets
        self._accepting.start_soon(self._accept_main, rt, sockets, self._loop_handle(rt))
        return True


def _sockname(sock: socket.socket) -> str:
    try:
        addr = sock.getsockname()
    except OSError:
        return "?"
    host, port = str(addr[0]), int(addr[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
