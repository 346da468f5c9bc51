"""``watcher run`` serves from a lean process: same PID, without typer, pydantic, rich, click.

The CLI validates, then execs ``python -P -m watcher.serve --run FD`` (see
``watcher/serve.py``). Checked on the real binary (the PID we started now runs
the lean module and has no pydantic native code mapped) and on the import
graph (no CLI library is imported by anything the serving process imports;
pure-Python modules leave no trace in /proc/PID/maps, so this is the check
that catches a stray ``import typer``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar_common.leanexec import MAGIC
from tests.support.lean import CLI_LIBRARIES, assert_lean_process, modules_loaded_by
from tests.support.wait import wait_until
from watcher.config import WatcherSettings, validate
from watcher.serve import main

from .conftest import WatcherProc


def test_serving_imports_no_cli_library() -> None:
    """All the serving process imports (the payload's classes too), in a fresh interpreter."""
    loaded = modules_loaded_by(
        "import pickle\n"
        "import watcher.serve, watcher.app\n"
        "from watcher.config import WatcherSettings, validate\n"
        "pickle.loads(pickle.dumps(validate(WatcherSettings(probe='exec:true'))))"
    )
    assert "trio" in loaded and "watcher" in loaded  # the check sees real imports
    assert loaded.isdisjoint(CLI_LIBRARIES), loaded & set(CLI_LIBRARIES)


@pytest.mark.slow
def test_watcher_run_serves_from_the_lean_module_with_the_same_pid(
    run_watcher: Callable[..., WatcherProc],
) -> None:
    w = run_watcher("--probe", "exec:true", "--probe-period", "0.2")
    pid = w.proc.pid  # the `watcher` console script we started
    # pydantic's native core is not mapped (the CLI process had it: typer imports pydantic).
    assert_lean_process(pid, "watcher.serve")
    # And this lean process is the one serving: ready (once its first probe passed,
    # which may come just after "started"), its start logged once.
    wait_until(lambda: w.admin_get("/readyz")[0] == 200, timeout=10, what="ready")
    assert len(w.events("started")) == 1


def _memfd(payload: object) -> int:
    fd = os.memfd_create("test", 0)
    os.write(fd, MAGIC + pickle.dumps(payload))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def test_a_payload_that_is_not_watcher_settings_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--run", str(_memfd({"probe": "exec:true"}))])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "watcher: error: start-up payload is a dict, not watcher settings"
    ]


def test_serve_started_by_hand_is_one_line_exit_2() -> None:
    res = subprocess.run(
        [sys.executable, "-P", "-m", "watcher.serve"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "watcher: error: expected --run FD (this program is started by `watcher run`)"
    ]


def test_validated_settings_survive_the_pickle() -> None:
    """What crosses the exec is what the CLI validated, parsed values included."""
    v = validate(
        WatcherSettings(
            watch=["/etc/app"],
            pid_file=Path("/run/app.pid"),
            signal="USR1",
            probe="tcp://127.0.0.1:8080",
            webhook_header=["X-Token: abc"],
        )
    )
    assert pickle.loads(pickle.dumps(v)) == v
