"""Waiting for state that lives outside the test: a file, another process, a server task.

Polling is right here: there is no event to wait on, only time. The timeouts are
bounds for "it happened", never expectations of speed; a miss fails the test with
``what`` (and ``report()``, e.g. the processes' logs) in the message.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio


def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float = 10.0,
    step: float = 0.02,
    what: str = "condition",
    report: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` (blocking) until it is truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            detail = f"\n{report()}" if report is not None else ""
            raise AssertionError(f"{what}: not met within {timeout} s{detail}")
        time.sleep(step)


async def eventually(
    predicate: Callable[[], object],
    *,
    limit: float = 15.0,
    step: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` from a trio task until it is truthy; AssertionError after ``limit`` s."""
    with trio.move_on_after(limit):
        while not predicate():  # noqa: ASYNC110 - external state, nothing to wait on
            await trio.sleep(step)
        return
    raise AssertionError(f"{what}: not met within {limit} s")
