"""The adapter's serving process: what ``adapter run`` becomes once its settings are valid.

``adapter run`` parses flags, ``ADAPTER_*`` and the TOML file with typer,
which brings pydantic, click and rich along (about 10 MiB resident, for
nothing once the settings are known). So the CLI validates everything, then
execs ``python -OO -P -m sidecar_common.leanstart adapter.serve --run FD`` with the
settings and the wrapped command in a memfd (``sidecar_common.leanexec``). The exec keeps what
the three modes depend on: the PID (the signals sent to ``adapter`` reach the
process that forwards them to a wrapped app, and its exit status is ours),
stdin untouched (``app | adapter run`` reads it from here on) and the
environment (the Downward API variables). In wrap mode the app is started
here, after the exec, so it is our child. This module must not import typer,
pydantic, rich or click, directly or through anything it imports
(``tests/adapter/test_serve.py`` checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from sidecar_common.leanexec import LeanExecError, exec_lean, run_lean

from .config import AdapterSettings

__all__ = ["MODULE", "become_server", "main", "serve"]

MODULE = "adapter.serve"


def become_server(settings: AdapterSettings, command: list[str]) -> NoReturn:
    """Exec this module with the settings and the command to wrap: the CLI's last step."""
    exec_lean(MODULE, (settings, list(command)))


def serve(payload: object) -> int:
    """Serve what :func:`become_server` handed over; the exit status (the wrapped app's)."""
    if not (
        isinstance(payload, tuple)
        and len(payload) == 2
        and isinstance(payload[0], AdapterSettings)
        and isinstance(payload[1], list)
        and all(isinstance(arg, str) for arg in payload[1])
    ):
        raise LeanExecError(
            f"start-up payload is a {type(payload).__name__}, not adapter settings and a command"
        )
    settings, command = payload
    # Logging is set up here, not in the CLI: handlers do not survive the exec.
    from sidecar_common.jsonlog import setup_logging

    from .app import run

    setup_logging(settings.log_level)
    return run(settings, command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """``python -m adapter.serve --run FD`` (started by ``adapter run``, not by hand)."""
    run_lean("adapter", serve, argv)


if __name__ == "__main__":
    main()
