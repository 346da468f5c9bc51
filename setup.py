"""The build's one addition to pyproject.toml: the ambassador's hot modules compiled to C.

Why: the HTTP listener's fast lane and its per-request modules spend their time
in Python bytecode (attribute access, calls, small objects), and mypyc turns the
same type-annotated source into a C extension that runs it without the
interpreter loop: wrk through the HTTP listener went from Envoy's requests/s to
about 1.3x of it (BENCHMARKS.md). mypyc is mypy's compiler (black and mypy ship
compiled this way); the modules stay plain Python that mypy --strict checks,
and scripts/test.sh runs the ambassador's tests against both builds. Beside
them, ``[tool.sidecars] c-modules``: one hand-written C module, the L4 relay
hub's common event without the GIL (ambassador/_splicefast.c says why).

``SIDECARS_COMPILE``: ``auto`` (the default) compiles when a C compiler and
Python's headers are present, else installs the pure-Python modules, and so it
does, with a warning, when the compile fails (every built extension is removed
first: mypyc's per-module shims without their shared library would not import);
``1`` compiles or fails; ``0`` never compiles (scripts/setup.sh's editable
install: a compiled module would shadow its edited source).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tomllib
from pathlib import Path

from setuptools import setup  # type: ignore[import-untyped]
from setuptools.command.build_ext import build_ext  # type: ignore[import-untyped]
from setuptools.errors import (  # type: ignore[import-untyped]
    CCompilerError,
    ExecError,
    PlatformError,
)

ROOT = Path(__file__).resolve().parent


def _tool_table(root: Path) -> dict[str, list[str]]:
    with open(root / "pyproject.toml", "rb") as f:
        table: dict[str, list[str]] = tomllib.load(f)["tool"]["sidecars"]
    return table


def compiled_modules(root: Path = ROOT) -> list[str]:
    """The module paths of pyproject.toml's ``[tool.sidecars] compiled``."""
    return list(_tool_table(root)["compiled"])


def c_modules(root: Path = ROOT) -> list[str]:
    """The source paths of pyproject.toml's ``[tool.sidecars] c-modules`` (Linux only)."""
    if not sys.platform.startswith("linux"):
        return []
    return list(_tool_table(root)["c-modules"])


def c_extensions(root: Path = ROOT) -> list[object]:
    """An ``Extension`` per C module: the module name is its path (``a/_b.c``: ``a._b``).

    The paths are relative: the build runs in the tree (pip), or in a copy of
    it (scripts/compiled.py's overlay, which imports this file for the rule).
    """
    from setuptools import Extension

    return [
        Extension(path.removesuffix(".c").replace("/", "."), [path], extra_compile_args=["-O2"])
        for path in c_modules(root)
    ]


def can_compile() -> bool:
    compiler = (os.environ.get("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return shutil.which(compiler) is not None and headers.exists()


def _warn(what: str) -> None:
    print(f"sidecars: {what}; installing the pure-Python modules", file=sys.stderr)


class OptionalBuildExt(build_ext):  # type: ignore[misc]
    """``auto``: a compile that fails leaves no extension behind and installs pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError) as exc:
            for ext in self.extensions:  # where this build writes it (in place or not)
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            _warn(f"the C build failed ({exc})")


def ext_modules(mode: str) -> list[object]:
    if mode == "0" or (mode == "auto" and not can_compile()):
        return []
    from mypyc.build import mypycify

    try:
        return [*mypycify(compiled_modules(), opt_level="3"), *c_extensions()]
    except SystemExit:  # mypyc's own errors (it reports them, then exits)
        if mode == "1":
            raise
        _warn("mypyc failed")
        return []


def main() -> None:
    mode = os.environ.get("SIDECARS_COMPILE", "auto")
    if mode not in ("auto", "0", "1"):
        sys.exit(f"SIDECARS_COMPILE must be auto, 1 or 0, not {mode!r}")
    cmdclass = {"build_ext": OptionalBuildExt} if mode == "auto" else {}
    setup(ext_modules=ext_modules(mode), cmdclass=cmdclass)


if __name__ == "__main__":  # pip's build backend runs this file as __main__
    main()
