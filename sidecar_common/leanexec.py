"""Become a lean serving process: same PID, without the command line's libraries.

Why: a sidecar's command line is parsed with typer, and typer 0.29 imports
pydantic, click and rich when a command runs, about 12 MiB of resident memory
for code that never runs again once the settings are valid. A sidecar's idle
RSS is what the pod's memory request is sized from, so that is paid on every
pod. Python cannot unload modules, so the process starts over instead: once
the CLI has parsed and validated everything, :func:`exec_lean` pickles the
result into an anonymous memory file (memfd) and ``execv``\\s
``python -OO -P -m sidecar_common.leanstart MODULE --run FD`` (with this
interpreter's own flags; :mod:`sidecar_common.leanstart` defers OpenSSL, then
runs MODULE as ``python -m MODULE`` would), and the
module's ``main`` hands the payload to its serve function with :func:`run_lean`.

What the exec keeps, and why it matters:
- the PID: the sidecar stays PID 1 of its container (or the child its parent
  waits for), so signals, ``kubectl exec kill``, pid files and probes still
  reach the process that serves;
- the environment (``os.environ`` as it is at the exec), stdin/stdout/stderr,
  the working directory and rlimits;
- the exit-status contract: a user error found before the exec is the CLI's
  one line and status 2; a user error found after it (``ConfigError``, e.g. an
  address in use) is the same one line and status 2 from :func:`run_lean`.

What it does not keep: every other file descriptor (Python opens them
close-on-exec), threads, and anything in memory but the payload. So bind
sockets after the exec, or pass them as inheritable fds.

``-P`` (Python 3.11+) keeps the working directory off ``sys.path``, as it is
for the console script: a ``trio.py`` or ``watcher/`` in the directory the
sidecar runs from must not shadow the installed code.

Linux only (``os.memfd_create``), like the sidecars' images. The payload is a
pickle read from an fd named on our own command line, from our own process:
it is no more trusted or untrusted than the code that wrote it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import stat
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .errors import ConfigError, SidecarError

__all__ = [
    "RUN_FLAG",
    "LeanExecError",
    "exec_lean",
    "interpreter_flags",
    "lean_argv",
    "lean_command",
    "load_lean_payload",
    "run_lean",
    "trim_after_start",
    "trim_memory",
]

#: The module every lean process starts from (it then runs the sidecar's).
STARTER = "sidecar_common.leanstart"
#: The lean module's command line is ``--run FD``.
RUN_FLAG = "--run"
#: First bytes of the payload file: an fd that is not ours is refused by name, not unpickled.
MAGIC = b"sidecar-lean-payload/1\n"
#: The serving process runs ``-OO``: without docstrings (and asserts). A docstring is
#: a constant of its code object, loaded with the module and kept for the process's
#: life; the serving process never reads one (help text is the CLI's, before the
#: exec). Measured on the ambassador's bench config: idle RSS 25.4 -> 24.3 MiB. Our
#: asserts only narrow types for mypy; errors users can cause are raised, not asserted.
LEAN_OPTIMIZE = 2
#: Exit status of a user error, as ``sidecar_common.cli`` (not imported: it pulls typer).
USAGE_ERROR = 2


class LeanExecError(SidecarError):
    """The lean process could not get its payload (bad ``--run FD``), or could not exec."""


def interpreter_flags() -> list[str]:
    """This interpreter's command-line options, so that the lean one runs the same way.

    ``-I``/``-E``/``-s``/``-S`` change where modules come from, ``-X``/``-W``
    what is traced and warned: a sidecar started with them must not lose them
    at the exec. ``-O`` is raised to :data:`LEAN_OPTIMIZE` (``-OO``).
    """
    f = sys.flags
    args = []
    if f.isolated:
        args.append("-I")  # implies -E, -s and -P
    else:
        args += ["-E"] if f.ignore_environment else []
        args += ["-s"] if f.no_user_site else []
    args += ["-S"] if f.no_site else []
    args += ["-" + "O" * max(f.optimize, LEAN_OPTIMIZE)]
    args += ["-B"] if f.dont_write_bytecode else []
    args += [f"-W{option}" for option in sys.warnoptions]
    args += [
        f"-X{name}" if value is True else f"-X{name}={value}"
        for name, value in sys._xoptions.items()
    ]
    return args


def lean_command(module: str) -> list[str]:
    """How to start ``module`` lean: ``python [FLAGS] -P -m sidecar_common.leanstart MODULE``.

    :mod:`sidecar_common.leanstart` defers the modules that load OpenSSL
    before ``module`` (and trio) are imported; arguments go after it.
    """
    return [sys.executable, *interpreter_flags(), "-P", "-m", STARTER, module]


def lean_argv(module: str, fd: int) -> list[str]:
    """The command line :func:`exec_lean` runs: :func:`lean_command` plus ``--run FD``."""
    return [*lean_command(module), RUN_FLAG, str(fd)]


def exec_lean(module: str, payload: object) -> NoReturn:
    """Replace this process by :func:`lean_argv` (MODULE ``--run FD``), ``payload`` in fd FD.

    ``payload`` must pickle (dataclasses of settings do); it is written to a
    memfd that, alone of this process's files, survives the exec. Buffered
    stdout and stderr are flushed first: ``execv`` throws Python's buffers
    away, and what the CLI printed must not be lost. Never returns: on
    success the process runs the lean module; a failure before the exec raises
    ``LeanExecError`` (with nothing left open).
    """
    if not sys.executable:
        raise LeanExecError("cannot re-execute: sys.executable is unknown")
    data = MAGIC + pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    # flags=0, not the default MFD_CLOEXEC: this one fd must be inherited.
    fd = os.memfd_create(f"lean-{module}", 0)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        for stream in (sys.stdout, sys.stderr):
            # A closed or broken stream has nothing left to save.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
        argv = lean_argv(module, fd)
        os.execv(argv[0], argv)
    except OSError as exc:
        os.close(fd)
        raise LeanExecError(f"cannot re-execute {sys.executable} -m {module}: {exc}") from exc


def load_lean_payload(fd: int) -> object:
    """Read the payload :func:`exec_lean` left in ``fd``, and close ``fd``.

    Refuses, with a ``LeanExecError`` that says which fd and why, an fd that is
    not open, not a regular file (a terminal on stdin would otherwise block
    forever; such an fd is left open) or does not start with our marker, and a
    payload that does not unpickle.
    """
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise LeanExecError(f"--run {fd}: no start-up payload ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise LeanExecError(f"--run {fd}: not a start-up payload (not a memfd or regular file)")
    try:
        with os.fdopen(fd, "rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                raise LeanExecError(f"--run {fd}: not a start-up payload (no marker)")
            return pickle.load(fh)
    except LeanExecError:
        raise
    except OSError as exc:
        raise LeanExecError(f"--run {fd}: cannot read the start-up payload ({exc})") from None
    except Exception as exc:  # unpickling raises anything: an import, an attribute, EOF...
        raise LeanExecError(
            f"--run {fd}: start-up payload does not load ({type(exc).__name__}: {exc})"
        ) from None


def _fail(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(USAGE_ERROR)


def run_lean(
    prog: str, serve: Callable[[object], int], argv: Sequence[str] | None = None
) -> NoReturn:
    """The lean module's ``main``: ``--run FD`` -> payload -> ``serve(payload)`` -> exit status.

    A bad ``--run`` or payload, and a ``ConfigError`` out of ``serve`` (the
    user's, found only once serving starts), print ``<prog>: error: ...`` as
    one line and exit 2, as ``sidecar_common.cli.run_app`` does before the
    exec; this module does not import typer to do it.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != RUN_FLAG or not args[1].isdigit():
        _fail(prog, f"expected {RUN_FLAG} FD (this program is started by `{prog} run`)")
    try:
        payload = load_lean_payload(int(args[1]))
        status = serve(payload)
    except (LeanExecError, ConfigError) as exc:
        _fail(prog, str(exc))
    raise SystemExit(status)


def trim_memory() -> None:
    """Collect garbage, then hand glibc's free heap pages back to the OS.

    Start-up leaves freed memory (parsing, imports, the payload) that glibc
    keeps in its arenas and that counts in RSS until reused; ``malloc_trim(0)``
    returns it (about 1 MiB). Best effort: on musl or without ctypes it does
    nothing. ``CDLL(None)`` finds ``malloc_trim`` in the already loaded libc
    (``ctypes.util.find_library`` would run ``ldconfig`` in a subprocess).
    """
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


async def trim_after_start(delay: float = 2.0) -> None:
    """``trim_memory()`` once start-up is over: run it with ``nursery.start_soon``.

    ``delay`` gives the first probes, connections and log lines time to leave
    their garbage behind, so one trim returns it all.
    """
    import trio

    await trio.sleep(delay)
    trim_memory()
