"""The cluster: routing decisions over health, ejection, limits and address changes (pure)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ambassador.balancer import POLICIES
from ambassador.cluster import Cluster
from ambassador.endpoint import Address
from ambassador.health import HealthConfig, Transition
from ambassador.outlier import OutlierConfig

A: Address = ("10.0.0.1", 5432)
B: Address = ("10.0.0.2", 5432)
C: Address = ("10.0.0.3", 5432)


def cluster(*addresses: Address, policy: str = "round_robin", **kwargs: object) -> Cluster:
    c = Cluster("pg/prod", policy=policy, rng=random.Random(1), **kwargs)  # type: ignore[arg-type]
    c.set_addresses(addresses, 0.0)
    return c


def chosen(c: Cluster, now: float, n: int = 12, **kwargs: object) -> set[Address]:
    out = set()
    for _ in range(n):
        ep = c.choose(now, **kwargs)  # type: ignore[arg-type]
        if ep is not None:
            out.add(ep.address)
    return out


def test_a_new_cluster_is_empty_and_fails_fast() -> None:
    c = Cluster("empty")
    assert c.endpoints == [] and c.choose(0.0) is None and not c.has_usable(0.0)


def test_set_addresses_keeps_state_drops_duplicates_and_notifies() -> None:
    c = cluster(A, B)
    calls: list[int] = []
    unsubscribe = c.watch(lambda: calls.append(c.generation))
    a = c.endpoint(A)
    assert a is not None
    a.active = 3
    assert c.set_addresses([B, A, B, C], 1.0) is True
    assert [ep.address for ep in c.endpoints] == [B, A, C]
    assert c.endpoint(A) is a and a.active == 3
    assert c.set_addresses([B, A, C], 2.0) is False  # same set: no change, no call
    assert c.set_addresses([C], 3.0) is True
    assert c.endpoint(A) is None
    assert calls == [2, 3]
    unsubscribe()
    c.set_addresses([A], 4.0)
    assert calls == [2, 3]


def test_choose_round_robins_over_all_usable() -> None:
    assert chosen(cluster(A, B, C), 0.0) == {A, B, C}


def test_exclude_skips_tried_endpoints() -> None:
    c = cluster(A, B, C)
    assert chosen(c, 0.0, exclude={A, B}) == {C}
    assert c.choose(0.0, exclude={A, B, C}) is None


def test_unhealthy_endpoints_are_not_chosen() -> None:
    c = cluster(A, B, health=HealthConfig(healthy_threshold=2, unhealthy_threshold=2))
    a = c.endpoint(A)
    assert a is not None
    assert c.health_result(a, False, 1.0, "refused") == Transition(False, 1.0, "refused")
    assert chosen(c, 1.0) == {B}
    assert c.health_result(a, True, 2.0) is None  # one success is not enough
    assert chosen(c, 2.0) == {B}
    assert c.health_result(a, True, 3.0) == Transition(True, 3.0, "")
    assert chosen(c, 3.0) == {A, B}


def test_no_healthy_endpoint_means_none_and_not_ready() -> None:
    c = cluster(A, B)
    for ep in c.endpoints:
        c.health_result(ep, False, 1.0)
    assert c.choose(1.0) is None
    assert not c.has_usable(1.0)
    assert c.usable(1.0) == []


def test_results_for_a_removed_endpoint_are_ignored() -> None:
    c = cluster(A, B)
    a = c.endpoint(A)
    assert a is not None
    c.set_addresses([B], 1.0)
    assert c.health_result(a, False, 2.0) is None
    c.connect_started(a)
    assert c.connect_failed(a, 2.0) is False
    assert a.active == 0


def test_connect_failures_eject_until_the_time_passes() -> None:
    c = cluster(
        A,
        B,
        outlier=OutlierConfig(consecutive_failures=2, base_ejection=10.0, max_ejection_percent=50),
    )
    a = c.endpoint(A)
    assert a is not None
    c.connect_started(a)
    assert c.connect_failed(a, 1.0) is False
    c.connect_started(a)
    assert c.connect_failed(a, 2.0) is True
    assert a.active == 0 and a.is_ejected(2.0)
    assert c.ejected_count(2.0) == 1
    assert chosen(c, 2.0) == {B}
    assert chosen(c, 11.999) == {B}
    assert chosen(c, 12.0) == {A, B}  # the cached list is rebuilt when the ejection ends


def test_a_passing_health_check_unejects() -> None:
    c = cluster(A, B, outlier=OutlierConfig(consecutive_failures=1, max_ejection_percent=50))
    a = c.endpoint(A)
    assert a is not None
    c.connect_started(a)
    assert c.connect_failed(a, 1.0)
    assert chosen(c, 2.0) == {B}
    c.health_result(a, True, 2.0)
    assert chosen(c, 2.0) == {A, B}

    kept = cluster(
        A,
        B,
        outlier=OutlierConfig(
            consecutive_failures=1, max_ejection_percent=50, uneject_on_health_success=False
        ),
    )
    ka = kept.endpoint(A)
    assert ka is not None
    kept.connect_started(ka)
    assert kept.connect_failed(ka, 1.0)
    kept.health_result(ka, True, 2.0)
    assert chosen(kept, 2.0) == {B}


def test_a_single_dead_endpoint_is_ejected_so_clients_fail_fast() -> None:
    c = cluster(A, outlier=OutlierConfig(consecutive_failures=1))
    a = c.endpoint(A)
    assert a is not None
    c.connect_started(a)
    assert c.connect_failed(a, 0.0)
    assert c.choose(0.0) is None and not c.has_usable(0.0)


def test_per_endpoint_limit() -> None:
    c = cluster(A, B, max_connections_per_endpoint=1)
    first = c.choose(0.0)
    assert first is not None
    c.connect_started(first)
    second = c.choose(0.0)
    assert second is not None and second is not first
    c.connect_started(second)
    assert c.choose(0.0) is None
    assert c.has_usable(0.0)  # saturated is not unready
    c.connect_succeeded(first, 0.001, 0.0)
    c.connection_closed(first)
    assert c.choose(0.0) is first


def test_attempt_accounting_and_latency() -> None:
    c = cluster(A, policy="peak_ewma")
    a = c.endpoint(A)
    assert a is not None
    c.connect_started(a)
    assert a.active == 1
    c.connect_succeeded(a, 0.004, 1.0)
    assert (a.active, a.connects_total, a.latency_samples) == (1, 1, 1)
    assert a.ewma_latency == pytest.approx(0.004)
    c.connection_closed(a)
    c.connection_closed(a)  # never below zero
    assert a.active == 0
    c.connect_started(a)
    c.connect_failed(a, 2.0)
    # a failure counts as a slow sample (peak): the endpoint looks expensive now
    assert a.ewma_latency == pytest.approx(c.failure_latency)
    assert a.connect_failures_total == 1


def test_peak_ewma_cluster_steers_away_from_a_failing_endpoint() -> None:
    c = cluster(A, B, policy="peak_ewma", outlier=OutlierConfig(enabled=False))
    a, b = c.endpoint(A), c.endpoint(B)
    assert a is not None and b is not None
    c.connect_started(b)
    c.connect_succeeded(b, 0.002, 0.0)
    c.connection_closed(b)
    c.connect_started(a)
    c.connect_failed(a, 0.0)  # refused: fast, but must not look cheap
    assert all(c.choose(0.1) is b for _ in range(20))


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_works_in_a_cluster(policy: str) -> None:
    c = cluster(A, B, C, policy=policy)
    assert chosen(c, 0.0, n=60) <= {A, B, C}
    assert chosen(c, 0.0, n=60, exclude={A}) <= {B, C}


ops = st.lists(
    st.tuples(
        st.sampled_from(["health_ok", "health_fail", "start", "succeed", "fail", "close", "time"]),
        st.integers(0, 3),
        st.floats(0.0, 20.0),
    ),
    max_size=60,
)


@settings(max_examples=150)
@given(
    policy=st.sampled_from(POLICIES),
    limit=st.one_of(st.none(), st.integers(1, 3)),
    script=ops,
    exclude=st.sets(st.integers(0, 3)),
    seed=st.integers(0, 2**32),
)
def test_choose_never_returns_an_unusable_endpoint(
    policy: str,
    limit: int | None,
    script: list[tuple[str, int, float]],
    exclude: set[int],
    seed: int,
) -> None:
    addresses = [(f"10.0.0.{i}", 80) for i in range(4)]
    c = Cluster(
        "prop",
        policy=policy,
        rng=random.Random(seed),
        max_connections_per_endpoint=limit,
        outlier=OutlierConfig(consecutive_failures=2, base_ejection=5.0, max_ejection_percent=50),
        health=HealthConfig(1, 1),
    )
    c.set_addresses(addresses, 0.0)
    now = 0.0
    excluded = {addresses[i] for i in exclude}
    for op, index, dt in script:
        ep = c.endpoints[index]
        if op == "health_ok":
            c.health_result(ep, True, now)
        elif op == "health_fail":
            c.health_result(ep, False, now)
        elif op == "start":
            c.connect_started(ep)
        elif op == "succeed":
            c.connect_succeeded(ep, dt / 1000, now)
        elif op == "fail":
            c.connect_failed(ep, now)
        elif op == "close":
            c.connection_closed(ep)
        else:
            now += dt
        pick = c.choose(now, exclude=excluded)
        eligible = [
            e
            for e in c.endpoints
            if e.healthy
            and not e.is_ejected(now)
            and e.address not in excluded
            and (limit is None or e.active < limit)
        ]
        if pick is None:
            assert eligible == []
        else:
            assert pick in eligible
        assert c.has_usable(now) == any(e.usable(now) for e in c.endpoints)
