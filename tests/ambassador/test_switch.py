"""The environment switch as a pure object: every source obeys the same rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambassador.switch import EnvSwitch


def test_switch_to_known_env_changes_current_and_generation() -> None:
    sw = EnvSwitch(["dev", "test", "prod"], "dev")
    result = sw.set("prod", "env_file")
    assert (result.result, result.previous, result.current, result.source) == (
        "switched",
        "dev",
        "prod",
        "env_file",
    )
    assert result.changed and not result.refused
    assert sw.current == "prod"
    assert sw.generation == 1


def test_unknown_env_is_refused_and_current_stays() -> None:
    sw = EnvSwitch(["dev", "prod"], "dev")
    result = sw.set("staging", "admin")
    assert result.refused
    assert result.current == "dev"
    assert result.reason == "unknown environment 'staging' (choices: dev, prod)"
    assert sw.current == "dev"
    assert sw.generation == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dev", "unchanged"),
        ("  prod\n", "switched"),
        ("", "refused"),
        ("   ", "refused"),
        ("PROD", "refused"),
    ],
)
def test_set_table(name: str, expected: str) -> None:
    sw = EnvSwitch(["dev", "prod"], "dev")
    assert sw.set(name, "start").result == expected


def test_no_current_env_until_set() -> None:
    sw = EnvSwitch(["dev", "prod"])
    assert sw.current is None
    result = sw.set("dev", "admin")
    assert (result.result, result.previous, result.current) == ("switched", None, "dev")


def test_constructor_refuses_unknown_current() -> None:
    with pytest.raises(ValueError, match="unknown environment 'qa'"):
        EnvSwitch(["dev"], "qa")


def test_reload_keeps_current_even_if_removed() -> None:
    sw = EnvSwitch(["dev", "prod"], "prod")
    sw.set_environments(["dev", "test"])
    assert sw.current == "prod"
    assert sw.environments == ("dev", "test")
    assert sw.set("prod", "config").refused
    assert sw.set("test", "config").changed


def test_snapshot_is_the_get_body() -> None:
    sw = EnvSwitch(["dev", "prod", "dev"], "dev")
    sw.set("prod", "admin")
    assert sw.snapshot() == {"env": "prod", "environments": ["dev", "prod"], "generation": 1}


@given(st.lists(st.sampled_from(["dev", "test", "prod", "bogus", ""]), max_size=30))
def test_current_is_always_a_known_env_and_generation_counts_changes(names: list[str]) -> None:
    sw = EnvSwitch(["dev", "test", "prod"], "dev")
    changes = 0
    for name in names:
        before = sw.current
        result = sw.set(name, "admin")
        assert sw.current in sw.environments
        if result.changed:
            changes += 1
            assert sw.current == name != before
        else:
            assert sw.current == before
    assert sw.generation == changes
