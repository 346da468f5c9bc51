"""The build under test is the one asked for: compiled modules or their sources.

scripts/test.sh runs tests/ambassador twice: against the editable pure-Python
install, then with ``SIDECARS_COMPILED_OVERLAY`` naming the mypyc build
(scripts/compiled.py), which tests/conftest.py puts first on the path. In the
second run every module of pyproject.toml's compiled list must be its C
extension (else that run would test pure Python again, silently); in the
first, its source (a compiled module in the editable tree would shadow every
edit of it).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from compiled import compiled_modules, digest  # noqa: E402


@pytest.mark.parametrize("path", compiled_modules())
def test_each_hot_module_is_the_build_under_test(path: str) -> None:
    expect_compiled = bool(os.environ.get("SIDECARS_COMPILED_OVERLAY"))
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert module.__file__ is not None
    assert module.__file__.endswith(".so") == expect_compiled, module.__file__


def test_the_compiled_list_names_existing_modules_once() -> None:
    paths = compiled_modules()
    assert len(set(paths)) == len(paths)
    for path in paths:
        assert (ROOT / path).is_file(), path


def test_the_build_digest_follows_the_sources(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for name in ("ambassador", "sidecar_common"):
        (tree / name).mkdir(parents=True)
        (tree / name / "__init__.py").write_text("")
    (tree / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    before = digest(tree)
    assert digest(tree) == before
    (tree / "ambassador" / "__init__.py").write_text("# edited\n")
    assert digest(tree) != before


def test_a_bad_compile_mode_is_one_line_and_fails() -> None:
    res = subprocess.run(
        [sys.executable, "setup.py", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "SIDECARS_COMPILE": "sometimes"},
        timeout=60,
    )
    assert res.returncode != 0
    assert res.stderr.strip() == "SIDECARS_COMPILE must be auto, 1 or 0, not 'sometimes'"
