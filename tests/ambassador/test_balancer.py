"""Balancing policies, pure: explicit ``now`` values, seeded randomness, no sockets."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambassador.balancer import (
    POLICIES,
    UNKNOWN_LATENCY_PENALTY,
    LeastConnections,
    PeakEwma,
    RoundRobin,
    make_balancer,
)
from ambassador.endpoint import EndpointState
from ambassador.health import HealthConfig


def eps(n: int, now: float = 0.0) -> list[EndpointState]:
    return [EndpointState((f"10.0.0.{i}", 5432), HealthConfig(), now) for i in range(n)]


def test_make_balancer_knows_every_policy() -> None:
    rng = random.Random(1)
    assert POLICIES == ("peak_ewma", "round_robin", "least_connections")
    kinds = {name: type(make_balancer(name, rng)) for name in POLICIES}
    assert kinds == {
        "peak_ewma": PeakEwma,
        "round_robin": RoundRobin,
        "least_connections": LeastConnections,
    }
    for name in POLICIES:
        assert make_balancer(name, rng).name == name


def test_unknown_policy_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="random"):
        make_balancer("random", random.Random(1))


@pytest.mark.parametrize("name", POLICIES)
def test_no_candidates_no_pick(name: str) -> None:
    assert make_balancer(name, random.Random(1)).pick([], 0.0) is None


@pytest.mark.parametrize("name", POLICIES)
def test_single_candidate_is_always_picked(name: str) -> None:
    (only,) = eps(1)
    balancer = make_balancer(name, random.Random(1))
    assert all(balancer.pick([only], float(t)) is only for t in range(20))


@given(n=st.integers(1, 12), rounds=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_round_robin_is_fair(n: int, rounds: int, seed: int) -> None:
    candidates = eps(n)
    rr = RoundRobin(random.Random(seed))
    picks = Counter(rr.pick(candidates, 0.0).address for _ in range(n * rounds))  # type: ignore[union-attr]
    assert set(picks.values()) == {rounds}
    assert len(picks) == n


def test_round_robin_visits_in_order() -> None:
    candidates = eps(3)
    rr = RoundRobin(random.Random(7))
    first = rr.pick(candidates, 0.0)
    assert first is not None
    start = candidates.index(first)
    order = [candidates.index(rr.pick(candidates, 0.0)) for _ in range(5)]  # type: ignore[arg-type]
    assert order == [(start + k) % 3 for k in range(1, 6)]


@given(actives=st.lists(st.integers(0, 50), min_size=1, max_size=12), seed=st.integers(0, 2**32))
def test_least_connections_picks_a_minimum(actives: list[int], seed: int) -> None:
    candidates = eps(len(actives))
    for ep, active in zip(candidates, actives, strict=True):
        ep.active = active
    lc = LeastConnections(random.Random(seed))
    for _ in range(3):
        chosen = lc.pick(candidates, 0.0)
        assert chosen is not None
        assert chosen.active == min(actives)


def test_least_connections_spreads_ties() -> None:
    candidates = eps(4)
    lc = LeastConnections(random.Random(3))
    picks = Counter(lc.pick(candidates, 0.0).address for _ in range(8))  # type: ignore[union-attr]
    assert set(picks.values()) == {2}


def test_least_connections_follows_load() -> None:
    """Each pick opens a connection on the chosen endpoint: the load stays level."""
    candidates = eps(3)
    lc = LeastConnections(random.Random(5))
    for _ in range(30):
        chosen = lc.pick(candidates, 0.0)
        assert chosen is not None
        chosen.active += 1
    assert [ep.active for ep in candidates] == [10, 10, 10]


# -- peak-EWMA ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "active", "now", "expected"),
    [
        # unknown latency: free while idle (new endpoints get tried), a penalty while busy
        ([], 0, 0.0, 0.0),
        ([], 1, 0.0, UNKNOWN_LATENCY_PENALTY + 1),
        ([], 3, 0.0, UNKNOWN_LATENCY_PENALTY + 3),
        # known latency: estimate * (active + 1)
        ([(0.010, 0.0)], 0, 0.0, 0.010),
        ([(0.010, 0.0)], 2, 0.0, 0.030),
        # idle decay towards zero with time constant 10 s
        ([(0.010, 0.0)], 0, 10.0, 0.010 * math.exp(-1)),
        ([(0.010, 0.0)], 1, 20.0, 2 * 0.010 * math.exp(-2)),
    ],
)
def test_peak_ewma_cost(
    samples: list[tuple[float, float]], active: int, now: float, expected: float
) -> None:
    (ep,) = eps(1)
    balancer = PeakEwma(random.Random(1), decay=10.0)
    for latency, at in samples:
        ep.observe_latency(latency, at, balancer.decay)
    ep.active = active
    assert balancer.cost(ep, now) == pytest.approx(expected)


def test_peak_ewma_estimate_is_peak_sensitive_and_recovers() -> None:
    (ep,) = eps(1)
    decay = 10.0
    ep.observe_latency(0.010, 0.0, decay)
    assert ep.ewma_latency == pytest.approx(0.010)
    # A slower sample replaces the estimate at once (the peak).
    ep.observe_latency(0.100, 1.0, decay)
    assert ep.ewma_latency == pytest.approx(0.100)
    # A faster sample 10 s later blends with weight 1 - e^-1.
    ep.observe_latency(0.010, 11.0, decay)
    w = math.exp(-1.0)
    assert ep.ewma_latency == pytest.approx(0.100 * w + 0.010 * (1 - w))
    # A faster sample at the same instant changes nothing (no time has passed).
    before = ep.ewma_latency
    ep.observe_latency(0.001, 11.0, decay)
    assert ep.ewma_latency == pytest.approx(before)
    assert ep.latency_samples == 4


@given(
    costs=st.lists(st.floats(0.0001, 1.0), min_size=2, max_size=10, unique=True),
    seed=st.integers(0, 2**32),
)
def test_p2c_never_picks_the_unique_worst(costs: list[float], seed: int) -> None:
    candidates = eps(len(costs))
    for ep, latency in zip(candidates, costs, strict=True):
        ep.observe_latency(latency, 0.0, 10.0)
    worst = candidates[costs.index(max(costs))]
    balancer = PeakEwma(random.Random(seed))
    for _ in range(20):
        assert balancer.pick(candidates, 0.0) is not worst


@given(n=st.integers(2, 10), seed=st.integers(0, 2**32))
def test_p2c_with_two_candidates_picks_the_cheaper(n: int, seed: int) -> None:
    a, b = eps(2)
    a.observe_latency(0.005, 0.0, 10.0)
    b.observe_latency(0.001, 0.0, 10.0)
    balancer = PeakEwma(random.Random(seed))
    assert all(balancer.pick([a, b], 0.0) is b for _ in range(n))
    b.active = 9  # 0.001 * 10 > 0.005 * 1
    assert balancer.pick([a, b], 0.0) is a


def simulate(policy: str, latencies: list[float], steps: int, seed: int) -> Counter[int]:
    """Open one connection every 10 ms, each held for 50 ms; connect latency is per endpoint."""
    candidates = eps(len(latencies))
    balancer = make_balancer(policy, random.Random(seed))
    picks: Counter[int] = Counter()
    open_until: list[tuple[float, EndpointState]] = []
    for step in range(steps):
        now = step * 0.010
        still = []
        for until, ep in open_until:
            if until <= now:
                ep.active -= 1
            else:
                still.append((until, ep))
        open_until = still
        chosen = balancer.pick(candidates, now)
        assert chosen is not None
        index = candidates.index(chosen)
        picks[index] += 1
        chosen.active += 1
        chosen.observe_latency(latencies[index], now, 10.0)
        open_until.append((now + 0.050, chosen))
    return picks


def test_peak_ewma_prefers_the_faster_endpoint() -> None:
    picks = simulate("peak_ewma", [0.001, 0.010, 0.050], steps=2000, seed=42)
    assert picks[0] > picks[1] > picks[2]
    assert picks[0] > 2000 // 2
    # ...while round robin, blind to latency, spreads evenly.
    rr = simulate("round_robin", [0.001, 0.010, 0.050], steps=300, seed=42)
    assert set(rr.values()) == {100}


def test_peak_ewma_tries_a_new_endpoint_at_once() -> None:
    candidates = eps(4)
    for ep in candidates:
        ep.observe_latency(0.002, 0.0, 10.0)
    new = EndpointState(("10.0.0.99", 5432), HealthConfig(), 0.0)
    balancer = PeakEwma(random.Random(9))
    pool = [*candidates, new]
    picks = [balancer.pick(pool, 0.0) for _ in range(30)]
    assert new in picks
    # ...but not flooded before its first measurement: while one attempt is in
    # flight its cost is the penalty, so it loses every comparison.
    new.active = 1
    assert all(balancer.pick(pool, 0.0) is not new for _ in range(100))


def test_peak_ewma_retries_a_slow_endpoint_after_it_idled() -> None:
    fast, slow = eps(2)
    fast.observe_latency(0.010, 0.0, 10.0)
    slow.observe_latency(1.0, 0.0, 10.0)
    balancer = PeakEwma(random.Random(1))
    assert balancer.pick([fast, slow], 0.0) is fast
    # fast is kept busy; slow's estimate decays while idle: 1.0 * e^-6 < 0.010 * 5 * ...
    fast.observe_latency(0.010, 60.0, 10.0)
    fast.active = 4
    assert balancer.pick([fast, slow], 60.0) is slow


def test_peak_ewma_rejects_a_bad_decay() -> None:
    with pytest.raises(ValueError):
        PeakEwma(random.Random(1), decay=0.0)
