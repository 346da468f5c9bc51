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
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from compiled import c_modules, compiled_modules, digest  # noqa: E402


@pytest.mark.parametrize("path", compiled_modules())
def test_each_hot_module_is_the_build_under_test(path: str) -> None:
    expect_compiled = bool(os.environ.get("SIDECARS_COMPILED_OVERLAY"))
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert module.__file__ is not None
    assert module.__file__.endswith(".so") == expect_compiled, module.__file__


def test_the_relay_hubs_c_path_is_there_exactly_in_the_compiled_build() -> None:
    from ambassador import fastrelay

    compiled = bool(os.environ.get("SIDECARS_COMPILED_OVERLAY"))
    assert compiled == fastrelay.HAS_ACCEL
    hub = fastrelay.SpliceHub()
    try:
        assert (hub.table is not None) == compiled
    finally:
        hub.close()


def test_the_compiled_list_names_existing_modules_once() -> None:
    paths = compiled_modules() + c_modules()
    assert len(set(paths)) == len(paths)
    for path in paths:
        assert (ROOT / path).is_file(), path


def test_the_build_digest_follows_the_sources(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for name in ("ambassador", "sidecar_common"):
        (tree / name).mkdir(parents=True)
        (tree / name / "__init__.py").write_text("")
    for name in ("pyproject.toml", "setup.py"):
        (tree / name).write_bytes((ROOT / name).read_bytes())
    before = digest(tree)
    assert digest(tree) == before
    (tree / "ambassador" / "__init__.py").write_text("# edited\n")
    edited = digest(tree)
    assert edited != before
    (tree / "ambassador" / "_fast.c").write_text("/* C sources count too */\n")
    with_c = digest(tree)
    assert with_c != edited
    # setup.py holds the build's rules (the C flags, the naming): they count too.
    setup_py = tree / "setup.py"
    setup_py.write_text(setup_py.read_text().replace('"-O2"', '"-O3"'))
    assert digest(tree) != with_c


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


def _build_ext(tree: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``setup.py build_ext`` of a copy of the project, with this venv's setuptools and mypy."""
    return subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext",
         "--build-lib", str(out / "lib"), "--build-temp", str(out / "temp")],
        cwd=tree, capture_output=True, text=True, timeout=600,
        env={**os.environ, **env},
    )  # fmt: skip


def _project_copy(tmp_path: Path) -> Path:
    """What the images' builder stage copies (and nothing else: no venv, no build/)."""
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (tree / name).write_bytes((ROOT / name).read_bytes())
    for name in ("sidecar_common", "ambassador", "adapter", "watcher"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def _requirement_names(requirements: list[str]) -> dict[str, str]:
    return {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower(): r for r in requirements}


def test_the_build_requires_the_runtime_dependencies_mypyc_type_checks_with_their_ranges() -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    build = _requirement_names(project["build-system"]["requires"])
    runtime = _requirement_names(project["project"]["dependencies"])
    shared = set(build) & set(runtime)
    assert {"trio", "h11", "httptools", "orjson"} <= shared, shared
    for name in shared:
        assert build[name] == runtime[name], name


@pytest.mark.skipif(
    bool(os.environ.get("SIDECARS_COMPILED_OVERLAY")),
    reason="the build itself is tested once, in the pure-Python run",
)
def test_setup_compiles_the_list_and_falls_back_to_pure_python_only_in_auto(
    tmp_path: Path,
) -> None:
    tree = _project_copy(tmp_path)
    expected = {p.removesuffix(".py") for p in compiled_modules()}
    expected |= {p.removesuffix(".c") for p in c_modules()}
    # As the images build it: pip in an environment without the project's dependencies (mypy
    # looks for types in the running interpreter's site-packages too, so not this venv), its
    # isolated build environment holding only [build-system] requires.
    builder = tmp_path / "builder"
    subprocess.run([sys.executable, "-m", "venv", str(builder)], check=True, timeout=300)
    res = subprocess.run(
        [str(builder / "bin" / "python"), "-m", "pip", "wheel", "--no-deps",
         "--wheel-dir", str(tmp_path / "w"), str(tree)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "SIDECARS_COMPILE": "1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (wheel,) = (tmp_path / "w").glob("sidecars-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        built = {n.split(".")[0] for n in zf.namelist() if n.endswith(".so") and "__mypyc" not in n}
    assert built == expected
    # The compiler present but failing: auto installs pure Python, with a warning and
    # without a partial build; 1 fails.
    res = _build_ext(tree, tmp_path / "auto", SIDECARS_COMPILE="auto", CC="false")
    assert res.returncode == 0, res.stderr
    assert "sidecars: the C build failed" in res.stderr
    assert "installing the pure-Python modules" in res.stderr
    assert not list((tmp_path / "auto").rglob("*.so"))
    res = _build_ext(tree, tmp_path / "strict", SIDECARS_COMPILE="1", CC="false")
    assert res.returncode != 0
