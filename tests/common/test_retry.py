"""retry: Backoff bounds and jitter (pure, seeded rng), retry() under a virtual clock."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sidecar_common.retry import Backoff, retry


@pytest.mark.parametrize(
    ("backoff", "caps"),
    [
        (Backoff(), [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]),
        (Backoff(initial=1, maximum=5, multiplier=3), [1, 3, 5, 5]),
        (Backoff(initial=2, maximum=2, multiplier=1), [2, 2, 2]),
        (Backoff(initial=0, maximum=1), [0, 0]),
    ],
)
def test_cap_is_bounded_exponential(backoff: Backoff, caps: list[float]) -> None:
    assert [backoff.cap(n) for n in range(len(caps))] == pytest.approx(caps)


def test_cap_survives_huge_attempt_numbers() -> None:
    assert Backoff().cap(10_000) == 30.0


@given(
    initial=st.floats(0.0, 10.0),
    extra=st.floats(0.0, 100.0),
    multiplier=st.floats(1.0, 10.0),
    attempt=st.integers(0, 5000),
    seed=st.integers(0, 2**32),
)
def test_delay_is_within_zero_and_cap(
    initial: float, extra: float, multiplier: float, attempt: int, seed: int
) -> None:
    backoff = Backoff(initial=initial, maximum=initial + extra, multiplier=multiplier)
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= backoff.cap(attempt) <= backoff.maximum


def test_delay_is_full_jitter_and_reproducible_with_a_seed() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    draws = [backoff.delay(3, random.Random(seed)) for seed in range(2000)]
    assert draws == [backoff.delay(3, random.Random(seed)) for seed in range(2000)]
    # Full jitter: spread over the whole [0, cap], not bunched near the cap.
    assert min(draws) < 0.1 * 8 and max(draws) > 0.9 * 8
    assert 0.4 * 8 < sum(draws) / len(draws) < 0.6 * 8
    assert len(set(draws)) == len(draws)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -1},
        {"initial": 5, "maximum": 1},
        {"multiplier": 0.5},
        {"multiplier": float("nan")},
    ],
)
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def failing(
    times: int, exc: type[Exception] = Flaky
) -> tuple[list[float], Callable[[], Awaitable[str]]]:
    """An async fn failing ``times`` times, then returning "ok"; records call times."""
    calls: list[float] = []

    async def fn() -> str:
        calls.append(trio.current_time())
        if len(calls) <= times:
            raise exc(f"failure {len(calls)}")
        return "ok"

    return calls, fn


def expected_delays(backoff: Backoff, seed: int, n: int) -> list[float]:
    rng = random.Random(seed)
    return [backoff.delay(attempt, rng) for attempt in range(n)]


async def test_retry_sleeps_exactly_the_jittered_delays(autojump_clock: trio.abc.Clock) -> None:
    backoff = Backoff(initial=1, maximum=10)
    calls, fn = failing(4)
    seen: list[tuple[int, str, float]] = []
    start = trio.current_time()
    result = await retry(
        fn,
        backoff=backoff,
        attempts=5,
        retry_on=(Flaky,),
        on_retry=lambda n, exc, delay: seen.append((n, str(exc), delay)),
        rng=random.Random(42),
    )
    assert result == "ok"
    delays = expected_delays(backoff, 42, 4)
    assert seen == [(n + 1, f"failure {n + 1}", delays[n]) for n in range(4)]
    gaps = [b - a for a, b in zip([start, *calls], calls, strict=False)]
    assert gaps == pytest.approx([0.0, *delays])
    assert trio.current_time() - start == pytest.approx(sum(delays))


async def test_retry_gives_up_after_attempts(autojump_clock: trio.abc.Clock) -> None:
    backoff = Backoff(initial=0.5, maximum=4)
    calls, fn = failing(100)
    start = trio.current_time()
    with pytest.raises(Flaky, match="failure 3"):
        await retry(fn, backoff=backoff, attempts=3, retry_on=(Flaky,), rng=random.Random(7))
    assert len(calls) == 3
    # Two sleeps, none after the last failure.
    assert trio.current_time() - start == pytest.approx(sum(expected_delays(backoff, 7, 2)))


async def test_retry_does_not_retry_other_exceptions(autojump_clock: trio.abc.Clock) -> None:
    calls, fn = failing(1, exc=Fatal)
    start = trio.current_time()
    with pytest.raises(Fatal):
        await retry(fn, backoff=Backoff(), attempts=None, retry_on=(Flaky,))
    assert len(calls) == 1
    assert trio.current_time() == start


async def test_attempts_one_means_no_retry(autojump_clock: trio.abc.Clock) -> None:
    calls, fn = failing(1)
    with pytest.raises(Flaky):
        await retry(fn, backoff=Backoff(), attempts=1, retry_on=(Flaky,))
    assert len(calls) == 1


async def test_unlimited_attempts_bounded_by_callers_cancel_scope(
    autojump_clock: trio.abc.Clock,
) -> None:
    calls, fn = failing(10**9)
    start = trio.current_time()
    with trio.move_on_after(60) as scope:
        await retry(fn, backoff=Backoff(initial=1, maximum=5), attempts=None, retry_on=(Flaky,))
    assert scope.cancelled_caught
    assert trio.current_time() - start == 60
    assert len(calls) > 12  # average delay <= 2.5 s once capped


async def test_cancellation_is_never_retried(autojump_clock: trio.abc.Clock) -> None:
    calls: list[float] = []

    async def fn() -> None:
        calls.append(trio.current_time())
        await trio.sleep_forever()

    with trio.move_on_after(3) as scope:
        await retry(fn, backoff=Backoff(), attempts=None, retry_on=(BaseException,))
    assert scope.cancelled_caught
    assert len(calls) == 1


@pytest.mark.parametrize("attempts", [0, -1])
async def test_attempts_must_be_positive(attempts: int) -> None:
    async def fn() -> None:
        raise AssertionError("not called")

    with pytest.raises(ValueError):
        await retry(fn, backoff=Backoff(), attempts=attempts, retry_on=(Flaky,))
