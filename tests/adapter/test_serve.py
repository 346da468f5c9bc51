"""``adapter run`` serves from a lean process: same PID, without typer, pydantic, rich, click.

The CLI validates, then execs ``python -P -m adapter.serve --run FD`` (see
``adapter/serve.py``). Checked on the real binary, found by the PID we
started: it now runs the lean module and has no pydantic native code mapped,
while a wrapped app (its child, started after the exec) runs or while stdin is
still open; and on the import graph (pure-Python modules leave no trace in
/proc/PID/maps, so this is the check that catches a stray ``import typer``).
"""

from __future__ import annotations

import json
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from adapter.config import load
from adapter.serve import main
from sidecar_common.leanexec import MAGIC
from tests.support.lean import CLI_LIBRARIES, assert_lean_process, modules_loaded_by

ADAPTER = str(Path(sys.executable).with_name("adapter"))
LEAN_TAIL = ["-P", "-m", "sidecar_common.leanstart", "adapter.serve", "--run"]

# The wrapped app reports its parent's command line as it starts (so, whether it
# was started before or after the exec), then sleeps until SIGTERM.
SLEEPING_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
    parent = open(f"/proc/{os.getppid()}/cmdline").read().split("\\0")[:-1]
    print("parent " + " ".join(parent[-6:-1]), flush=True)
    while True:
        time.sleep(0.05)
    """
)


def read_record(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, "no record from the adapter"
    record: dict[str, Any] = json.loads(proc.stdout.readline())
    return record


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_serving_imports_no_cli_library() -> None:
    """All the serving process imports (the payload's classes too), in a fresh interpreter."""
    loaded = modules_loaded_by(
        "import pickle\n"
        "import adapter.serve, adapter.app, sidecar_common.jsonlog\n"
        "from adapter.config import load\n"
        "s = load({'pattern': ['(?P<message>.*)'], 'timezone': 'Europe/Paris'}, env={})\n"
        "pickle.loads(pickle.dumps((s, ['true'])))"
    )
    assert "trio" in loaded and "adapter" in loaded  # the check sees real imports
    assert loaded.isdisjoint(CLI_LIBRARIES), loaded & set(CLI_LIBRARIES)


@pytest.mark.slow
def test_wrap_mode_serves_from_the_lean_module_and_starts_the_app_after_the_exec() -> None:
    proc = subprocess.Popen(
        [ADAPTER, "run", "--log-level", "warning", "--", sys.executable, "-c", SLEEPING_CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        first = read_record(proc)
        # The app's parent is the PID we started, already the lean module when it started.
        assert (first["message"], first["stream"]) == ("parent " + " ".join(LEAN_TAIL), "stdout")
        assert_lean_process(proc.pid, "adapter.serve")
        proc.send_signal(signal.SIGTERM)  # forwarded by the lean process to its child
        _, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 7, err  # the app's status, passed through the exec
    assert err == b""


@pytest.mark.slow
def test_stdin_mode_reads_what_was_piped_before_and_after_the_exec() -> None:
    proc = subprocess.Popen(
        [ADAPTER, "run", "--field", "service.name=shop"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE,
        env={**os.environ, "POD_NAME": "shop-1"},
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        # Written at once, most likely while the CLI still parses: it must not read stdin.
        proc.stdin.write(b"level=info msg=first user=ann\nsecond line\n")
        proc.stdin.flush()
        records = [read_record(proc), read_record(proc)]
        # Serving, stdin still open: the lean module, without pydantic's native core.
        assert_lean_process(proc.pid, "adapter.serve")
        # The last line, then EOF: the adapter flushes and exits 0.
        out, err = proc.communicate(b'{"level": "error", "message": "third"}\n', timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    records += [json.loads(line) for line in out.splitlines()]
    assert [r["message"] for r in records] == ["first", "second line", "third"]
    assert [r["log"]["level"] for r in (records[0], records[2])] == ["info", "error"]
    assert records[0]["labels"] == {"user": "ann"}
    assert all(r["service"]["name"] == "shop" for r in records)  # the flag crossed the exec
    assert all(r["kubernetes"]["pod"]["name"] == "shop-1" for r in records)  # the environment too
    # Our own log (set up after the exec) is JSON lines on stderr, the start logged once.
    events = [json.loads(line)["message"] for line in err.splitlines()]
    assert events.count("adapter started") == 1


def _memfd(payload: object) -> int:
    fd = os.memfd_create("test", 0)
    os.write(fd, MAGIC + pickle.dumps(payload))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ({"format": "json"}, "dict"),
        ((load({}, env={}), "true"), "tuple"),  # the command must be a list of str
        ((load({}, env={}), ["true"], "extra"), "tuple"),
        (["true"], "list"),
    ],
)
def test_a_payload_that_is_not_settings_and_command_is_one_line_exit_2(
    payload: object, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--run", str(_memfd(payload))])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"adapter: error: start-up payload is a {kind}, not adapter settings and a command"
    ]


def test_serve_started_by_hand_is_one_line_exit_2() -> None:
    res = subprocess.run(
        [sys.executable, "-P", "-m", "adapter.serve"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "adapter: error: expected --run FD (this program is started by `adapter run`)"
    ]
    assert res.stdout == ""


def test_settings_survive_the_pickle() -> None:
    """What crosses the exec is what the CLI validated, lists and parsed values included."""
    settings = load(
        {
            "pattern": ["(?P<message>.*)"],
            "timezone": "Europe/Paris",
            "field": ["service.name=shop"],
            "admin": "127.0.0.1:9102",
            "tail": ["/var/log/*.log"],
            "checkpoint": "/tmp/pos.json",
        },
        env={},
    )
    assert pickle.loads(pickle.dumps((settings, ["app", "--flag"]))) == (
        settings,
        ["app", "--flag"],
    )
