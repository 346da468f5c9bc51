"""Retry decisions and the retry budget, as tables on plain numbers."""

from __future__ import annotations

import pytest

from ambassador.http.retry import RetryBudget, retry_refusal
from ambassador.http.settings import RetrySettings

S = RetrySettings(max_retries=2)


@pytest.mark.parametrize(
    ("method", "failure", "done", "status", "replayable", "refusal"),
    [
        (b"GET", "connect", 0, 0, True, None),
        (b"POST", "connect", 0, 0, False, None),  # never sent: any method
        (b"GET", "reset", 1, 0, True, None),
        (b"POST", "reset", 0, 0, True, "method not idempotent"),
        (b"PATCH", "status", 0, 503, True, "method not idempotent"),
        (b"PUT", "status", 0, 503, True, None),
        (b"DELETE", "status", 0, 502, True, None),
        (b"GET", "status", 0, 500, True, "status not retried"),
        (b"GET", "status", 0, 503, False, "request body not replayable"),
        (b"GET", "timeout", 0, 0, True, "request timeout"),
        (b"GET", "connect", 2, 0, True, "attempts exhausted"),
        (b"GET", "status", 2, 503, True, "attempts exhausted"),
    ],
)
def test_retry_refusal(
    method: bytes, failure: str, done: int, status: int, replayable: bool, refusal: str | None
) -> None:
    got = retry_refusal(
        settings=S,
        method=method,
        failure=failure,  # type: ignore[arg-type]
        retries_done=done,
        status=status,
        body_replayable=replayable,
    )
    assert got == refusal


def test_budget_minimum_then_ratio() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1.0, window=10.0)
    # With no traffic the floor allows min_per_second * window retries.
    assert [budget.try_withdraw(0.0) for _ in range(11)] == [True] * 10 + [False]
    # 100 requests earn 20 more retries.
    for _ in range(100):
        budget.record_request(1.0)
    granted = sum(budget.try_withdraw(1.0) for _ in range(30))
    assert granted == 20
    assert budget.available(1.0) < 1.0


def test_budget_window_slides() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.5, window=4.0)
    assert [budget.try_withdraw(0.0) for _ in range(3)] == [True, True, False]
    assert not budget.try_withdraw(3.5)  # still inside the window
    assert budget.try_withdraw(4.0)  # the second-0 bucket has left the window
    assert budget.try_withdraw(4.5)
    assert not budget.try_withdraw(4.9)


def test_budget_with_ratio_only_stops_a_retry_storm() -> None:
    """Every request failing: retries never exceed ratio * requests."""
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, window=10.0)
    retries = 0
    for i in range(1000):
        now = i * 0.005
        budget.record_request(now)
        if budget.try_withdraw(now):
            retries += 1
    assert retries == 100
