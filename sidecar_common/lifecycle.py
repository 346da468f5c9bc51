"""Running a sidecar: one nursery, graceful drain on SIGTERM, exit status.

Kubernetes stops a pod by sending SIGTERM, waiting ``terminationGracePeriodSeconds``
and then sending SIGKILL. A sidecar uses that window to drain: readiness fails
(so the endpoints controller stops sending traffic), listeners close, in-flight
work finishes. This module owns that protocol so the three sidecars agree:

- the first SIGTERM or SIGINT starts the drain: ``Lifecycle.draining`` becomes
  True, ``on_drain`` callbacks run, ``wait_drain()`` returns, and ``main`` gets
  ``drain_deadline`` seconds to return on its own before it is cancelled (the
  deadline is a cancel scope's, not a wall-clock check); either way exit 0;
- a second signal gives up on the drain: everything is cancelled at once and
  the exit status is 128 + the signal number (143 for SIGTERM, 130 for SIGINT),
  the status a shell would report for a process killed by it.

The decision logic lives in ``Lifecycle.signal_received`` (no I/O, testable as a
table); ``supervise`` is the trio shell, fed by any async iterable of signal
numbers so tests can drive it under a virtual clock; ``run_sidecar`` plugs in
the real signal receiver.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import AsyncIterable, Awaitable, Callable

import trio

from .errors import ConfigError
from .jsonlog import log_event

__all__ = ["Lifecycle", "run_sidecar", "supervise"]


def _logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{name}.lifecycle")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class Lifecycle:
    """The drain state of one sidecar run, shared with its tasks.

    Tasks read ``draining`` (e.g. the readiness probe), wait on ``wait_drain()``
    (e.g. an accept loop that must stop), or register ``on_drain`` callbacks
    (synchronous, run once when the drain starts, in registration order).
    """

    def __init__(self, *, drain_deadline: float = 30.0, name: str = "sidecar") -> None:
        if not drain_deadline >= 0:
            raise ValueError("drain_deadline must be >= 0")
        self.name = name
        self.drain_deadline = drain_deadline
        self.draining = False
        self.drain_reason: str | None = None
        self.exit_status: int | None = None
        self._drain_event = trio.Event()
        self._callbacks: list[Callable[[], object]] = []

    def on_drain(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` when the drain starts (at once if it already has)."""
        if self.draining:
            callback()
        else:
            self._callbacks.append(callback)

    async def wait_drain(self) -> None:
        """Return once the drain has started."""
        await self._drain_event.wait()

    def start_drain(self, reason: str) -> bool:
        """Start the drain (idempotent); returns False if it had already started.

        Signals call this through ``signal_received``; code may call it too
        (e.g. an admin endpoint asking the sidecar to quit).
        """
        if self.draining:
            return False
        self.draining = True
        self.drain_reason = reason
        self._drain_event.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
        return True

    def signal_received(self, signum: int) -> int | None:
        """Decide what a signal means: None = drain started, else exit at once with that status."""
        if self.start_drain(_signal_name(signum)):
            return None
        self.exit_status = 128 + signum
        return self.exit_status


async def supervise(
    main: Callable[[Lifecycle], Awaitable[None]],
    lifecycle: Lifecycle,
    signals: AsyncIterable[int],
) -> int:
    """Run ``main(lifecycle)`` until it returns, enforcing the drain protocol.

    Returns the exit status: 0 when main returned (by itself or cut off by
    the drain deadline), 128+signum after a second signal.
    """
    name = lifecycle.name
    log = _logger(name)
    main_scope = trio.CancelScope()

    async def run_main() -> None:
        with main_scope:
            await main(lifecycle)
        if main_scope.cancelled_caught and lifecycle.exit_status is None:
            log_event(
                log,
                "drain deadline exceeded; remaining work cancelled",
                level=logging.WARNING,
                sidecar=name,
                drain_deadline_seconds=lifecycle.drain_deadline,
            )
        nursery.cancel_scope.cancel()

    async def enforce_deadline() -> None:
        await lifecycle.wait_drain()
        log_event(
            log,
            "drain started",
            sidecar=name,
            reason=lifecycle.drain_reason,
            drain_deadline_seconds=lifecycle.drain_deadline,
        )
        main_scope.deadline = min(
            main_scope.deadline, trio.current_time() + lifecycle.drain_deadline
        )

    async def watch_signals() -> None:
        async for signum in signals:
            if lifecycle.signal_received(signum) is not None:
                log_event(
                    log,
                    "second signal; exiting at once",
                    level=logging.WARNING,
                    sidecar=name,
                    signal=_signal_name(signum),
                )
                nursery.cancel_scope.cancel()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_main)
        nursery.start_soon(enforce_deadline)
        nursery.start_soon(watch_signals)
    return lifecycle.exit_status if lifecycle.exit_status is not None else 0


def _bare(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first leaf of (nested) exception groups if every leaf is one of ``kinds``."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_bare(e, kinds) for e in exc.exceptions]
        if leaves and all(leaf is not None for leaf in leaves):
            return leaves[0]
    return None


def _only_leaf(exc: BaseException) -> BaseException:
    """Unwrap a chain of one-member exception groups, so a crash log names the real error."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# Exceptions that are not crashes: re-raised bare, out of trio's exception groups.
_PASS_THROUGH = (ConfigError, SystemExit, KeyboardInterrupt)


def run_sidecar(
    main: Callable[[Lifecycle], Awaitable[None]],
    *,
    drain_deadline: float = 30.0,
    name: str,
) -> int:
    """``trio.run`` a sidecar's ``main`` with SIGTERM/SIGINT handling; return the exit status.

    Must be called from the main thread (signal handlers). A ``ConfigError``
    raised by ``main`` (e.g. validation that needs the event loop) is re-raised
    bare, out of any exception group, so ``cli.run_app`` reports it in one line
    with status 2. Any other exception is a bug: it is logged as a JSON event
    with its stack trace and the status is 1.
    """
    if not (drain_deadline >= 0 and math.isfinite(drain_deadline)):
        raise ConfigError("drain deadline", drain_deadline, "a finite number of seconds >= 0")

    async def _run() -> int:
        lifecycle = Lifecycle(drain_deadline=drain_deadline, name=name)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            return await supervise(main, lifecycle, signals)

    try:
        status = trio.run(_run)
    except BaseExceptionGroup as group:
        bare = _bare(group, _PASS_THROUGH)
        if bare is None:
            _log_crash(name, _only_leaf(group))
            return 1
        raise bare from None
    except ConfigError:
        raise
    except Exception as exc:
        _log_crash(name, exc)
        return 1
    log_event(_logger(name), "exiting", sidecar=name, exit_status=status)
    return status


def _log_crash(name: str, exc: BaseException) -> None:
    _logger(name).error(
        "sidecar crashed",
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"sidecar": name, "exit_status": 1},
    )
