"""``python -OO -m sidecar_common.precompile``: write the bytecode the serving processes read.

Why: the serving processes run ``-OO`` (:data:`sidecar_common.leanexec.LEAN_OPTIMIZE`:
no docstrings in memory), and ``-OO`` reads ``*.opt-2.pyc``. pip writes only the
plain ``*.pyc`` at install time, and an image's filesystem is read-only when it
runs, so without these every start would compile its modules from source.

This compiles the four packages whole (every module a serving process may import
lazily), then imports each of their modules but the command lines (``*.cli``,
which run before the exec, at the plain level) so that the standard library and
the dependencies they import are written too. What a module imports only inside
a function (asyncpg for a PostgreSQL health check) is compiled on first use.
Run it once where the sidecars are installed, at ``-OO`` and with bytecode
writes allowed (the images' install step does).
"""

from __future__ import annotations

import compileall
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from .leanexec import _fail  # the lean processes' one-line usage error, without typer

__all__ = ["PACKAGES", "main", "serving_modules"]

#: What the sidecars' serving processes are made of.
PACKAGES = ("sidecar_common", "ambassador", "adapter", "watcher")
PROG = "sidecar_common.precompile"


def serving_modules(packages: Sequence[str] = PACKAGES) -> list[str]:
    """Every module of ``packages`` a serving process may import (all but the CLIs)."""
    names = []
    for package in packages:
        root = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name.rsplit(".", 1)[-1] != "cli":
                names.append(info.name)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """0: all written; 1: a file did not compile; misuse: one line and exit 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args:
        _fail(PROG, f"takes no arguments, got {args[0]!r}")
    if sys.flags.optimize < 2:
        _fail(PROG, "run it with python -OO (the level it writes)")
    if sys.dont_write_bytecode:
        _fail(PROG, "bytecode writes are off (PYTHONDONTWRITEBYTECODE or -B)")
    ok = True
    for package in PACKAGES:
        for path in importlib.import_module(package).__path__:
            ok = compileall.compile_dir(path, quiet=1) and ok
    for name in serving_modules():
        importlib.import_module(name)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
