"""Checks that a sidecar serves from its lean process (``sidecar_common.leanexec``).

The three CLIs parse with typer, which loads pydantic, rich and click; once the
settings are valid each execs ``python -P -m sidecar_common.leanstart <sidecar>.serve
--run FD``. These
helpers look at that from outside: which modules a fresh interpreter running
the serving code loads, and what a live PID runs and has mapped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: What must not be resident in a serving process.
CLI_LIBRARIES = ("typer", "pydantic", "pydantic_core", "rich", "click")


def modules_loaded_by(setup: str) -> set[str]:
    """Top-level module names a fresh ``python -P`` has loaded after running ``setup``."""
    report = "import sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    code = f"{setup}\n{report}"
    res = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return set(res.stdout.split())


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` (``/proc/PID/cmdline`` is NUL-terminated)."""
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]


def assert_lean_process(pid: int, module: str) -> None:
    """``pid`` runs ``-P -m sidecar_common.leanstart MODULE --run FD``, without the CLI's code.

    Neither a CLI library's native code (pydantic_core) nor OpenSSL's libcrypto
    is mapped: the callers' sidecars use no TLS, so ``sidecar_common.leanstart``
    kept ``ssl`` and ``hmac`` (which trio imports) from loading it.
    """
    argv = cmdline(pid)
    assert argv[-6:-1] == ["-P", "-m", "sidecar_common.leanstart", module, "--run"], argv
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "pydantic_core" not in maps
    assert "libcrypto" not in maps
