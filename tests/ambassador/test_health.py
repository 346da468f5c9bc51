"""Active-health thresholds, pure: result sequences on explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambassador.health import HealthConfig, HealthState, Transition
from sidecar_common.errors import ConfigError


def run(config: HealthConfig, results: list[bool]) -> list[tuple[int, bool]]:
    """Feed results at t = 0, 1, 2...; return (time, healthy) of each transition."""
    state = HealthState(config)
    out = []
    for t, ok in enumerate(results):
        transition = state.record(ok, float(t), "" if ok else "refused")
        if transition is not None:
            assert transition.at == float(t)
            assert transition.healthy == state.healthy
            out.append((t, transition.healthy))
    return out


T, F = True, False


@pytest.mark.parametrize(
    ("config", "results", "transitions"),
    [
        # starts healthy; the first result decides at once
        (HealthConfig(2, 3), [F], [(0, F)]),
        (HealthConfig(2, 3), [T], []),
        # then the thresholds: 3 failures in a row to go down...
        (HealthConfig(2, 3), [T, F, F], []),
        (HealthConfig(2, 3), [T, F, F, F], [(3, F)]),
        # ...an interleaved success restarts the count
        (HealthConfig(2, 3), [T, F, F, T, F, F, F], [(6, F)]),
        # ...and 2 successes in a row to come back
        (HealthConfig(2, 3), [F, T], [(0, F)]),
        (HealthConfig(2, 3), [F, T, T], [(0, F), (2, T)]),
        (HealthConfig(2, 3), [F, T, F, T, T], [(0, F), (4, T)]),
        # flapping never flips it
        (HealthConfig(2, 3), [T, F, T, F, T, F, T, F], []),
        # thresholds of 1: every change counts
        (HealthConfig(1, 1), [T, F, T, F], [(1, F), (2, T), (3, F)]),
        # starting unhealthy: waits for the first success
        (HealthConfig(2, 3, initial_healthy=False), [F, F, T], []),
        (HealthConfig(2, 3, initial_healthy=False), [F, F, T, T], [(3, T)]),
        (HealthConfig(2, 3, initial_healthy=False), [T], [(0, T)]),
    ],
)
def test_thresholds(
    config: HealthConfig, results: list[bool], transitions: list[tuple[int, bool]]
) -> None:
    assert run(config, results) == transitions


def test_transition_carries_the_reason() -> None:
    state = HealthState(HealthConfig(1, 1))
    assert state.record(False, 5.0, "connection refused") == Transition(
        False, 5.0, "connection refused"
    )
    assert state.last_reason == "connection refused"


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"healthy_threshold": 0}, "healthy_threshold"),
        ({"unhealthy_threshold": 0}, "unhealthy_threshold"),
    ],
)
def test_bad_thresholds(kwargs: dict[str, int], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        HealthConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.setting == setting


@given(
    rise=st.integers(1, 4),
    fall=st.integers(1, 4),
    initial=st.booleans(),
    results=st.lists(st.booleans(), max_size=40),
)
def test_matches_a_reference_model(
    rise: int, fall: int, initial: bool, results: list[bool]
) -> None:
    """The state equals: first result decides; later, the last `threshold` results agree."""
    state = HealthState(HealthConfig(rise, fall, initial))
    healthy = initial
    run_length = 0
    for i, ok in enumerate(results):
        state.record(ok, float(i))
        if i == 0:
            healthy = ok
            run_length = 0
        elif ok == healthy:
            run_length = 0
        else:
            run_length += 1
            if run_length >= (rise if ok else fall):
                healthy, run_length = ok, 0
        assert state.healthy == healthy
