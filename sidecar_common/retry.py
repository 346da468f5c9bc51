"""Retry with bounded exponential backoff and full jitter.

Full jitter (a uniform delay between 0 and the exponential cap, as in the AWS
architecture blog's "Exponential Backoff And Jitter") spreads the retries of
many sidecars that failed together, e.g. after their upstream restarted, so
they do not come back as a synchronized herd.

``Backoff`` is pure (the random source is an argument), so its bounds are
tested with a seeded ``random.Random``. ``retry`` owns no deadline: bound the
total time with the caller's cancel scope (``trio.fail_after``/``move_on_after``).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

__all__ = ["Backoff", "retry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays of ``uniform(0, min(maximum, initial * multiplier**attempt))`` seconds."""

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.maximum:
            raise ValueError(f"Backoff needs 0 <= initial <= maximum, got {self}")
        if not self.multiplier >= 1:
            raise ValueError(f"Backoff needs multiplier >= 1, got {self}")

    def cap(self, attempt: int) -> float:
        """The upper bound of the delay after failed attempt number ``attempt`` (0-based)."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        try:
            return min(self.maximum, self.initial * self.multiplier**attempt)
        except OverflowError:  # multiplier**attempt beyond float range: long past maximum
            return self.maximum

    def delay(self, attempt: int, rng: random.Random) -> float:
        """A jittered delay for ``attempt`` (0-based), drawn from ``rng``."""
        return rng.uniform(0.0, self.cap(attempt))


OnRetry = Callable[[int, BaseException, float], object]


async def retry(
    fn: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    attempts: int | None,
    retry_on: tuple[type[BaseException], ...],
    on_retry: OnRetry | None = None,
    rng: random.Random | None = None,
) -> T:
    """Call ``fn()`` until it returns, sleeping a backoff delay after each failure.

    ``attempts`` is the total number of calls (None: no limit). Only exceptions
    in ``retry_on`` are retried; anything else propagates at once, and so does
    the last failure when attempts run out. ``on_retry(attempt, exc, delay)``
    is called before each sleep, with the 1-based number of the failed attempt
    (a place to log). Cancellation is never retried, whatever ``retry_on`` says.
    """
    if attempts is not None and attempts < 1:
        raise ValueError("attempts must be >= 1 or None")
    rng = random.Random() if rng is None else rng
    attempt = 0
    while True:
        try:
            return await fn()
        except retry_on as exc:
            if isinstance(exc, trio.Cancelled | KeyboardInterrupt | SystemExit):
                raise
            if attempts is not None and attempt + 1 >= attempts:
                raise
            delay = backoff.delay(attempt, rng)
            if on_retry is not None:
                on_retry(attempt + 1, exc, delay)
        await trio.sleep(delay)
        attempt += 1
