"""Passive outlier ejection, pure: failures on explicit times, Envoy semantics."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambassador.endpoint import EndpointState
from ambassador.health import HealthConfig
from ambassador.outlier import (
    OutlierConfig,
    count_ejected,
    ejection_allowed,
    ejection_duration,
    record_failure,
    record_success,
    uneject,
)
from sidecar_common.errors import ConfigError

CFG = OutlierConfig(consecutive_failures=3, base_ejection=10.0, max_ejection=35.0)


def ep(i: int = 0) -> EndpointState:
    return EndpointState((f"10.0.0.{i}", 6379), HealthConfig(), 0.0)


def fail(
    config: OutlierConfig, e: EndpointState, now: float, ejected: int = 0, total: int = 1
) -> bool:
    return record_failure(config, e, now, ejected, total)


def test_defaults_are_envoys() -> None:
    cfg = OutlierConfig()
    assert (cfg.consecutive_failures, cfg.base_ejection, cfg.max_ejection) == (5, 30.0, 300.0)
    assert cfg.max_ejection_percent == 10.0


def test_consecutive_failures_eject() -> None:
    e = ep()
    assert [fail(CFG, e, t) for t in (1.0, 2.0)] == [False, False]
    assert fail(CFG, e, 3.0) is True
    assert e.ejected_until == 13.0
    assert e.is_ejected(12.999) and not e.is_ejected(13.0)
    assert e.ejections_total == 1 and e.connect_failures_total == 3
    assert e.consecutive_failures == 0


def test_a_success_resets_the_count() -> None:
    e = ep()
    fail(CFG, e, 1.0)
    fail(CFG, e, 2.0)
    record_success(e)
    assert fail(CFG, e, 3.0) is False
    assert fail(CFG, e, 4.0) is False
    assert fail(CFG, e, 5.0) is True


def test_failures_while_ejected_only_count() -> None:
    e = ep()
    for t in (0.0, 0.0, 0.0):
        fail(CFG, e, t)
    assert e.ejected_until == 10.0
    assert [fail(CFG, e, 1.0) for _ in range(5)] == [False] * 5
    assert e.ejected_until == 10.0
    assert e.ejections_total == 1


@pytest.mark.parametrize(
    ("times", "duration"), [(1, 10.0), (2, 20.0), (3, 30.0), (4, 35.0), (10, 35.0)]
)
def test_ejection_duration_grows_and_is_capped(times: int, duration: float) -> None:
    assert ejection_duration(CFG, times) == duration


def test_an_endpoint_failing_again_on_return_stays_out_longer() -> None:
    """Fails 3 times right when each ejection ends: out for 10, 20, 30, 35, 35 s."""
    e = ep()
    now = 0.0
    durations = []
    for _ in range(5):
        for _ in range(3):
            ejected = fail(CFG, e, now)
        assert ejected
        durations.append(e.ejected_until - now)
        now = e.ejected_until
    assert durations == [10.0, 20.0, 30.0, 35.0, 35.0]


@pytest.mark.parametrize(
    ("well_for", "next_duration"),
    [(0.0, 30.0), (9.9, 30.0), (10.0, 20.0), (25.0, 10.0), (1000.0, 10.0)],
)
def test_the_multiplier_decays_while_back_in_rotation(
    well_for: float, next_duration: float
) -> None:
    """After two ejections, each base_ejection spent back in rotation removes one step."""
    e = ep()
    now = 0.0
    for _ in range(2):
        for _ in range(3):
            fail(CFG, e, now)
        now = e.ejected_until
    assert e.times_ejected == 2
    now += well_for
    for _ in range(3):
        fail(CFG, e, now)
    assert e.ejected_until - now == pytest.approx(next_duration)


@pytest.mark.parametrize(
    ("percent", "ejected", "total", "allowed"),
    [
        (10.0, 0, 1, True),  # one ejection always allowed when none is in force
        (10.0, 0, 2, True),
        (10.0, 1, 2, False),
        (10.0, 1, 20, True),  # 2/20 = 10 %
        (10.0, 2, 20, False),
        (50.0, 1, 4, True),
        (50.0, 2, 4, False),
        (100.0, 3, 4, True),
        (0.0, 0, 4, True),
        (0.0, 1, 4, False),
        (10.0, 0, 0, False),
    ],
)
def test_max_ejection_percent(percent: float, ejected: int, total: int, allowed: bool) -> None:
    cfg = OutlierConfig(max_ejection_percent=percent)
    assert ejection_allowed(cfg, ejected, total) is allowed


def test_over_the_percentage_the_endpoint_stays_and_keeps_counting() -> None:
    cfg = OutlierConfig(consecutive_failures=1, base_ejection=10.0, max_ejection_percent=50.0)
    endpoints = [ep(i) for i in range(4)]
    results = []
    for e in endpoints:
        results.append(fail(cfg, e, 1.0, count_ejected(endpoints, 1.0), len(endpoints)))
    assert results == [True, True, False, False]
    assert count_ejected(endpoints, 1.0) == 2
    assert endpoints[2].consecutive_failures == 1
    # once the first ejections expire, the next failure ejects
    assert fail(cfg, endpoints[2], 11.0, count_ejected(endpoints, 11.0), 4) is True


def test_uneject_ends_an_ejection_early() -> None:
    e = ep()
    for _ in range(3):
        fail(CFG, e, 0.0)
    assert uneject(e, 4.0) is True
    assert not e.is_ejected(4.0)
    assert uneject(e, 5.0) is False
    # the multiplier is kept: failing right away again ejects for 20 s
    for _ in range(3):
        fail(CFG, e, 4.0)
    assert e.ejected_until == 24.0


def test_disabled_never_ejects() -> None:
    cfg = OutlierConfig(enabled=False, consecutive_failures=1)
    e = ep()
    assert not any(fail(cfg, e, float(t)) for t in range(10))
    assert e.connect_failures_total == 10
    assert e.ejected_until == -math.inf


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"consecutive_failures": 0}, "consecutive_failures"),
        ({"base_ejection": 0.0}, "base_ejection"),
        ({"base_ejection": 10.0, "max_ejection": 5.0}, "max_ejection"),
        ({"max_ejection_percent": 101.0}, "max_ejection_percent"),
    ],
)
def test_bad_config(kwargs: dict[str, float], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        OutlierConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.setting == setting


@given(gaps=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=30))
def test_ejection_never_exceeds_the_cap(gaps: list[float]) -> None:
    e = ep()
    now = 0.0
    for gap in gaps:
        now += gap
        if fail(CFG, e, now):
            duration = e.ejected_until - now
            assert CFG.base_ejection - 1e-9 <= duration <= CFG.max_ejection + 1e-9
