"""Build the mypyc-compiled ambassador beside a copy of its sources; print the directory.

The development install is editable and pure Python (a compiled module would
shadow its edited source). The tests and bench/ need the build that ships
(setup.py compiles pyproject.toml's ``[tool.sidecars] compiled`` when it can),
so this builds the same modules with the same compiler into an overlay
directory, ``build/compiled/<digest>/``, holding a copy of ``ambassador`` and
``sidecar_common`` with the C extensions beside their sources; with that
directory first on ``PYTHONPATH`` Python imports the compiled modules.

The digest covers the sources, the module list, mypy's and Python's versions:
an unchanged tree reuses its build (seconds), an edited one gets a new build
(about a minute on two cores).

    PYTHONPATH=$(.venv/bin/python scripts/compiled.py) .venv/bin/pytest tests/ambassador
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
#: The packages copied into the overlay: the compiled ones and what mypyc must type-check.
PACKAGES = ("ambassador", "sidecar_common")


class BuildError(Exception):
    """mypyc or the C compiler failed (the message ends with their output)."""


@functools.cache
def _setup_py(root: Path) -> ModuleType:
    """``root``'s setup.py as a module (its ``main`` runs only as ``__main__``), loaded once."""
    spec = importlib.util.spec_from_file_location("sidecars_setup", root / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compiled_modules(root: Path = ROOT) -> list[str]:
    return list(_setup_py(root).compiled_modules(root))


def c_modules(root: Path = ROOT) -> list[str]:
    return list(_setup_py(root).c_modules(root))


#: The C modules' build, run in the overlay: setup.py's own ``c_extensions``
#: (its naming rule and flags), with ``build_ext --inplace``.
_BUILD_C = """
import importlib.util, sys
from setuptools import setup
spec = importlib.util.spec_from_file_location("sidecars_setup", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.argv[1:] = ["build_ext", "--inplace"]
setup(name="overlay", ext_modules=module.c_extensions())  # the tree's list, built here
"""


def _sources(root: Path) -> list[Path]:
    return sorted(
        p for pkg in PACKAGES for pattern in ("*.py", "*.c") for p in (root / pkg).rglob(pattern)
    )


def digest(root: Path = ROOT) -> str:
    import mypy.version

    h = hashlib.sha256()
    h.update(f"{sys.version}\0{mypy.version.__version__}\0".encode())
    h.update("\0".join(compiled_modules(root) + c_modules(root)).encode())
    h.update((root / "setup.py").read_bytes())  # the build's rules (flags, naming)
    for path in _sources(root):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build(root: Path = ROOT, cache: Path | None = None) -> Path:
    """The overlay directory for ``root``'s current sources (built unless it exists)."""
    cache = cache if cache is not None else root / "build" / "compiled"
    dest = cache / digest(root)
    if (dest / ".built").exists():
        return dest
    tmp = cache / f".{dest.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for pkg in PACKAGES:
        shutil.copytree(root / pkg, tmp / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    # mypyc's command line: mypycify + setuptools' build_ext --inplace, as setup.py does.
    res = subprocess.run(
        [sys.executable, "-m", "mypyc", *compiled_modules(root)],
        cwd=tmp,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPY_CACHE_DIR": str(tmp / ".mypy_cache")},
    )
    if res.returncode != 0:
        raise BuildError(f"mypyc failed ({res.returncode}): {(res.stdout + res.stderr)[-3000:]}")
    res = subprocess.run(
        [sys.executable, "-c", _BUILD_C, str(root / "setup.py")],
        cwd=tmp,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise BuildError(f"the C build failed: {(res.stdout + res.stderr)[-3000:]}")
    shutil.rmtree(tmp / "build", ignore_errors=True)
    shutil.rmtree(tmp / ".mypy_cache", ignore_errors=True)
    (tmp / ".built").write_text(dest.name + "\n")
    # Older builds of this cache are replaced (one per tree is all anybody runs).
    for old in cache.iterdir():
        if old.is_dir() and old.name != tmp.name and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    tmp.rename(dest)
    return dest


def main() -> int:
    try:
        print(build())
    except BuildError as exc:
        print(f"compiled.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
