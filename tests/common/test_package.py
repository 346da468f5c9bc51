"""The shared core's public API: every re-exported name resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import sidecar_common


def test_every_public_name_resolves_to_its_module_object() -> None:
    for name in sidecar_common.__all__:
        value = getattr(sidecar_common, name)
        if isinstance(value, type) or (callable(value) and hasattr(value, "__code__")):
            assert value.__module__.startswith("sidecar_common."), name
        else:  # constants and type aliases
            assert value is not None, name


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        sidecar_common.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_pulls_in_nothing_heavy() -> None:
    # A sidecar's idle memory is a budget: the package itself must stay cheap to import.
    code = (
        "import sys, sidecar_common; "
        "print(sorted(m for m in ('trio', 'h11', 'asyncpg') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
