"""sidecar_common.precompile: the opt-2 bytecode of the serving processes, written once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar_common.precompile import PACKAGES, serving_modules

ROOT = Path(__file__).resolve().parents[2]


def _run(*flags: str, args: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return subprocess.run(
        [sys.executable, *flags, "-m", "sidecar_common.precompile", *args],
        capture_output=True, text=True, timeout=120, env={**base, **env}, check=False,
    )  # fmt: skip


def test_serving_modules_are_every_module_but_the_command_lines() -> None:
    names = serving_modules()
    assert set(PACKAGES) <= set(names)
    assert {"ambassador.app", "ambassador.http.lane", "adapter.parsers", "watcher.app"} <= set(
        names
    )
    assert not [n for n in names if n.endswith(".cli")]
    assert len(names) == len(set(names))


def test_it_writes_at_oo_and_exits_0() -> None:
    # Each serving entry's opt-2 bytecode, and lazily imported modules' too: gone first, so
    # what is there afterwards was written by this run.
    tag = sys.implementation.cache_tag
    written = [
        ROOT / package / "__pycache__" / f"{name}.{tag}.opt-2.pyc"
        for package, name in (
            ("ambassador", "serve"),
            ("adapter", "serve"),
            ("watcher", "serve"),
            ("ambassador", "app"),
            ("sidecar_common", "lifecycle"),
        )
    ]
    for path in written:
        path.unlink(missing_ok=True)
    res = _run("-OO")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    for path in written:
        assert path.is_file(), path


@pytest.mark.parametrize(
    ("flags", "env", "args", "message"),
    [
        ((), {}, (), "run it with python -OO (the level it writes)"),
        (("-O",), {}, (), "run it with python -OO (the level it writes)"),
        (("-OO",), {"PYTHONDONTWRITEBYTECODE": "1"}, (), "bytecode writes are off"),
        (("-OO",), {}, ("--all",), "takes no arguments, got '--all'"),
    ],
    ids=["plain", "-O", "no-writes", "argument"],
)
def test_misuse_is_one_line_and_exit_2(
    flags: tuple[str, ...], env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    res = _run(*flags, args=args, **env)
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sidecar_common.precompile: error: ")
    assert message in lines[0]
