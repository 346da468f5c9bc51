"""Per-request deadlines without a cancel scope per request: one watchdog task per proxy.

A trio cancel scope with a deadline costs ~5-10 us to enter and leave (a
heap entry, a cancel status, context managers); the HTTP listener needs two
per request (the keep-alive idle timeout, the wait for the response head) and
they nearly never fire. Here a waiter records its deadline in a set (O(1))
and one system task sleeps until the earliest recorded deadline, then expires
what is due: ``expire()`` cancels the idle client's connection scope, or wakes
the task waiting on the upstream socket (``notify_closing``: the connection is
closed afterwards anyway). Deadlines fire exactly on trio's clock (autojump
tests see exact times). Under load the task wakes only when the earliest
deadline of its last scan comes due: requests end long before, so it rarely runs.

``Deadlines.scan`` is the pure part (what is due, when to wake next).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Protocol

import trio

from sidecar_common.jsonlog import get_logger, log_event

__all__ = ["Deadlines", "Expirable", "scan"]

log = get_logger("ambassador.http")


class Expirable(Protocol):
    """Something with a deadline (trio clock) and what to do when it passes."""

    deadline: float

    def expire(self) -> None: ...


def scan(items: Iterable[Expirable], now: float) -> tuple[list[Expirable], float]:
    """(the items due at ``now``, the earliest deadline of the others; inf when none). Pure."""
    due: list[Expirable] = []
    earliest = math.inf
    for item in items:
        deadline = item.deadline
        if deadline <= now:
            due.append(item)
        elif deadline < earliest:
            earliest = deadline
    return due, earliest


class Deadlines:
    """The watched items of one proxy, and the system task that expires them."""

    def __init__(self) -> None:
        self.items: set[Expirable] = set()
        self._target = math.inf  # when the task wakes next
        self._sleep: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    def add(self, item: Expirable, deadline: float) -> None:
        item.deadline = deadline
        self.items.add(item)
        if deadline < self._target:
            self._rearm()

    def discard(self, item: Expirable) -> None:
        self.items.discard(item)

    def _rearm(self) -> None:
        token = trio.lowlevel.current_trio_token()
        if token is not self._token:
            # First use in this trio run (a proxy may outlive a test's run).
            self._token = token
            self._sleep = None
            trio.lowlevel.spawn_system_task(self._run, name="http deadlines")
        elif self._sleep is not None:
            self._sleep.cancel()  # sleeping past the new deadline: rescan now
        self._target = -math.inf  # until the task has scanned

    def close(self) -> None:
        """Stop the task (the proxy is closed); nothing expires after this."""
        self._token = None
        self.items.clear()
        if self._sleep is not None:
            self._sleep.cancel()
        self._target = math.inf

    async def _run(self) -> None:
        token = self._token
        while token is self._token:
            due, self._target = scan(self.items, trio.current_time())
            for item in due:
                self.items.discard(item)
                try:
                    item.expire()
                except Exception as exc:  # a system task must not raise: log, go on
                    log_event(
                        log,
                        "deadline expiry failed",
                        level=logging.WARNING,
                        error=f"{type(exc).__name__}: {exc}",
                    )
            with trio.CancelScope(deadline=self._target) as sleep:
                self._sleep = sleep
                await trio.sleep_forever()
            self._sleep = None
