"""When to retry an HTTP request: a per-request decision and a budget across requests. Pure.

A retry is safe when the request never reached the upstream (the connect
failed: any method), or when repeating it cannot change the outcome
(idempotent methods, RFC 9110 9.2.2) and its body can be sent again. The
budget bounds the extra load retries add when an upstream is failing, so a
struggling backend is not finished off by a retry storm (linkerd's budget:
``ratio`` of recent requests plus ``min_per_second``).
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from .settings import RetrySettings

__all__ = ["IDEMPOTENT_METHODS", "Failure", "RetryBudget", "retry_refusal"]

IDEMPOTENT_METHODS: frozenset[bytes] = frozenset(
    {b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"}
)

#: What went wrong with an attempt.
#: connect: no connection (the request was not sent);
#: reset: the connection broke before a response head arrived;
#: status: a response head with a retryable status arrived;
#: timeout: no response head within the request timeout (never retried: the
#: deadline is for the whole request).
Failure = Literal["connect", "reset", "status", "timeout"]


class RetryBudget:
    """Retries allowed over a sliding window: ``min_per_second * window + ratio * requests``.

    Counts are kept in one-second buckets, so memory is bounded by the window.
    """

    def __init__(self, *, ratio: float, min_per_second: float, window: float) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._buckets: deque[list[float]] = deque()  # [second, requests, retries]

    def _bucket(self, now: float) -> list[float]:
        second = float(int(now))
        while self._buckets and self._buckets[0][0] <= now - self.window:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0.0, 0.0])
        return self._buckets[-1]

    def record_request(self, now: float) -> None:
        """An original request (not a retry) was made."""
        buckets = self._buckets
        if buckets and buckets[-1][0] == int(now):
            # The second's bucket exists: expiring waits for the next second
            # (or a read: ``_totals`` expires first), a deque walk less per request.
            buckets[-1][1] += 1
            return
        self._bucket(now)[1] += 1

    def _totals(self, now: float) -> tuple[float, float]:
        self._bucket(now)
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def available(self, now: float) -> float:
        requests, retries = self._totals(now)
        return self.min_per_second * self.window + self.ratio * requests - retries

    def try_withdraw(self, now: float) -> bool:
        """Take one retry from the budget; False when it is spent."""
        if self.available(now) < 1.0:
            return False
        self._bucket(now)[2] += 1
        return True


def retry_refusal(
    *,
    settings: RetrySettings,
    method: bytes,
    failure: Failure,
    retries_done: int,
    status: int = 0,
    body_replayable: bool = True,
) -> str | None:
    """Why the request must not be retried, or None when it may be (the budget aside).

    The caller asks the budget last, so a refused retry never spends it.
    """
    if retries_done >= settings.max_retries:
        return "attempts exhausted"
    if failure == "timeout":
        return "request timeout"
    if failure == "connect":
        return None
    if method not in IDEMPOTENT_METHODS:
        return "method not idempotent"
    if not body_replayable:
        return "request body not replayable"
    if failure == "status" and status not in settings.on_status:
        return "status not retried"
    return None
