"""What the one-process ambassador and the ``--workers`` supervisor share.

Both bind the listeners, decide environment switches (``PUT /env``, the env
file, a reloaded config), watch files and reload the config; then the single
process serves itself (:class:`ambassador.app.Ambassador`) while the supervisor
hands the outcome to its workers (:class:`ambassador.workers.Supervisor`).
These steps live here once, so a switch is decided, counted and logged the
same way whichever of the two runs, and a fix lands in both.

The module stays light (no listener, health-check or HTTP code at import): the
supervisor imports it and never serves a connection itself.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import trio

from sidecar_common.errors import ConfigError
from sidecar_common.filewatch import Change, watch_paths
from sidecar_common.jsonlog import log_event
from sidecar_common.metrics import Counter, Registry

from .config import AmbassadorConfig, load_config, read_env_file
from .switch import EnvSwitch, SwitchResult

__all__ = [
    "WATCH_DEBOUNCE",
    "WATCH_INTERVAL",
    "apply_switch",
    "bind_listeners",
    "read_env_choice",
    "register_switch_metrics",
    "reload_config",
    "watch_file",
]

#: How often watched files are polled, and how long a change must be stable.
#: Together well under the one second a switch may take.
WATCH_INTERVAL = 0.2
WATCH_DEBOUNCE = 0.3


def bind_listeners(
    cfg: AmbassadorConfig, *, copies: int = 1
) -> list[dict[str, list[socket.socket]]]:
    """Bind every listener's socket now, ``copies`` times; one dict per copy.

    More than one copy binds with ``SO_REUSEPORT`` (one per worker): port 0
    binds the first socket anywhere and the others to the same port. A busy or
    foreign address is a ``ConfigError`` naming the setting, and closes what
    was bound already.
    """
    from .listener import bind_socket

    reuse_port = copies > 1
    bound: list[dict[str, list[socket.socket]]] = [{} for _ in range(copies)]
    try:
        for i, lst in enumerate(cfg.listeners):
            setting = "--listen" if cfg.config_file is None else f"listeners[{i}].listen"
            port = lst.listen.port
            for copy in bound:
                try:
                    sock = bind_socket(lst.listen.host, port, reuse_port=reuse_port)
                except OSError as exc:
                    reason = exc.strerror or str(exc)
                    raise ConfigError(
                        setting, str(lst.listen), f"an address to listen on; {reason}"
                    ) from None
                port = sock.getsockname()[1]
                copy[lst.name] = [sock]
    except BaseException:
        for socks in bound:
            for group in socks.values():
                for s in group:
                    s.close()
        raise
    return bound


def register_switch_metrics(
    registry: Registry, current_switch: Callable[[], EnvSwitch | None]
) -> Counter:
    """The switch's families: returns ``ambassador_env_switches_total`` for :func:`apply_switch`.

    ``ambassador_current_env`` reads ``current_switch()`` on every scrape
    (None: no samples yet).
    """
    counter = registry.counter(
        "ambassador_env_switches_total",
        "Environment switch requests by result and source.",
        ("result", "source"),
    )

    def current_env() -> Iterable[tuple[dict[str, str], float]]:
        switch = current_switch()
        if switch is None:
            return
        for env in switch.environments:
            yield {"env": env}, 1.0 if env == switch.current else 0.0

    registry.gauge_callback(
        "ambassador_current_env",
        "1 for the current environment, 0 for the other choices.",
        current_env,
    )
    return counter


def apply_switch(
    switch: EnvSwitch, counter: Counter, log: logging.Logger, name: str, source: str
) -> SwitchResult:
    """Decide a switch request, count it by result and source, log a refusal or a change."""
    result = switch.set(name, source)
    counter.labels(result=result.result, source=source).inc()
    if result.refused:
        log_event(
            log,
            "environment switch refused",
            level=logging.WARNING,
            event="env_switch",
            result=result.result,
            requested=result.requested,
            source=source,
            env=result.current,
            reason=result.reason,
        )
    elif result.changed:
        log_event(
            log,
            "environment switched",
            event="env_switch",
            result=result.result,
            previous=result.previous,
            env=result.current,
            source=source,
        )
    return result


async def watch_file(
    path: Path,
    changed: Callable[[], Awaitable[object]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``await changed()`` after each (debounced) change of ``path``; never returns.

    Started (``nursery.start``) once the watch has its first look at the file,
    so a change made right after start-up is seen.
    """
    send, receive = trio.open_memory_channel[list[Change]](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: watch_paths(
                [path],
                send_channel=send,
                interval=WATCH_INTERVAL,
                debounce=WATCH_DEBOUNCE,
                task_status=task_status,
            )
        )
        task_status.started()
        async for _changes in receive:
            await changed()


async def read_env_choice(path: Path, current: str | None, log: logging.Logger) -> str | None:
    """The environment the changed env file names; None (logged) when missing or empty."""
    name = await trio.to_thread.run_sync(read_env_file, path)
    if name is None:
        log_event(
            log,
            "env file missing or empty; keeping the current environment",
            level=logging.WARNING,
            path=str(path),
            env=current,
        )
    return name


async def reload_config(
    path: Path, overrides: dict[str, object], log: logging.Logger
) -> AmbassadorConfig | None:
    """The changed config file, parsed with the command line's overrides; None (logged) if bad."""
    try:
        return await trio.to_thread.run_sync(lambda: load_config(path, overrides=overrides))
    except ConfigError as exc:
        log_event(
            log,
            "config reload refused; keeping the running config",
            level=logging.ERROR,
            path=str(path),
            reason=str(exc),
        )
        return None
