"""The watcher's serving process: what ``watcher run`` becomes once its settings are valid.

``watcher run`` parses flags, ``WATCHER_*`` and the TOML file with typer,
which brings pydantic, click and rich along (about 12 MiB resident, for
nothing once the settings are known). So the CLI validates everything, then
execs ``python -OO -P -m sidecar_common.leanstart watcher.serve --run FD`` with the
validated settings in a memfd (``sidecar_common.leanexec``): same PID (signals, PID 1), same
environment, and only the serving code in memory. This module must not
import typer, pydantic, rich or click, directly or through anything it
imports (``tests/watcher/test_serve.py`` checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from sidecar_common.leanexec import LeanExecError, exec_lean, run_lean

from .config import Validated

__all__ = ["MODULE", "become_server", "main", "serve"]

MODULE = "watcher.serve"


def become_server(v: Validated) -> NoReturn:
    """Exec this module with ``v``: the CLI's last step (never returns)."""
    exec_lean(MODULE, v)


def serve(payload: object) -> int:
    """Serve the validated settings handed over by :func:`become_server`; the exit status."""
    if not isinstance(payload, Validated):
        raise LeanExecError(f"start-up payload is a {type(payload).__name__}, not watcher settings")
    from .app import run

    return run(payload)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """``python -m watcher.serve --run FD`` (started by ``watcher run``, not by hand)."""
    run_lean("watcher", serve, argv)


if __name__ == "__main__":
    main()
