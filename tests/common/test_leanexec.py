"""``sidecar_common.leanexec`` with real processes.

This file is also the tiny program the tests exec: ``python -P -m
tests.common.test_leanexec --before-exec`` plays a sidecar's CLI (prints
without flushing, changes its environment, then ``exec_lean``\\s this same
module), and ``... --run FD`` is the lean process, which reports what it got
as one JSON line. A real ``execv`` in a real child: the PID, the environment,
stdout's buffer and the payload fd are the kernel's, not a mock's.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from sidecar_common import leanexec
from sidecar_common.errors import ConfigError
from sidecar_common.leanexec import MAGIC, LeanExecError, exec_lean, load_lean_payload, run_lean

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.common.test_leanexec"
PAYLOAD: dict[str, Any] = {
    "text": "héllo\n",
    "bytes": bytes(range(256)) * 4096,  # 1 MiB: more than one write may take
    "path": Path("/etc/app/..data/app.conf"),
    "nested": ({"a": [1, 2.5, None]}, frozenset({"x"})),
    "inf": float("inf"),
}


# --------------------------------------------------------------------------- the child program


def _serve(payload: object) -> int:
    """The lean process's serve function: report, then exit with the asked status."""
    assert isinstance(payload, dict)
    if payload.get("config_error"):
        raise ConfigError("--admin", "127.0.0.1:1", "an address we can listen on")
    fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
    report = {
        "pid": os.getpid(),
        "ok": payload == PAYLOAD | {k: payload[k] for k in ("status",) if k in payload},
        "status": payload.get("status", 0),
        "env": os.environ.get("LEANEXEC_SET_BEFORE_EXEC"),
        "env_outer": os.environ.get("LEANEXEC_OUTER"),
        "fds": fds,
        "cmdline": Path("/proc/self/cmdline").read_text().split("\0")[1:-1],
        "optimize": sys.flags.optimize,
        "docstring": _serve.__doc__,
        "xoptions": sys._xoptions,
        "cli_module_loaded": "xml.dom.minidom" in sys.modules,
        "ssl": type(sys.modules.get("ssl")).__name__,
        "openssl_loaded": "_ssl" in sys.modules,
    }
    print(json.dumps(report, default=repr), flush=True)
    return int(payload.get("status", 0))


def _before_exec(status: int) -> None:
    """Plays the CLI: an import of its own, unflushed stdout, a changed environment, the exec."""
    import xml.dom.minidom  # noqa: F401  (stands in for typer: must not survive the exec)

    print(f"before exec pid={os.getpid()}")  # stdout is a pipe: block-buffered, not flushed
    os.environ["LEANEXEC_SET_BEFORE_EXEC"] = "set-at-runtime"
    exec_lean(MODULE, PAYLOAD | {"status": status} if status else PAYLOAD)


def _child_env(**extra: str) -> dict[str, str]:
    # -P keeps the working directory off sys.path: the tests package comes from PYTHONPATH.
    # Without PYTHONUNBUFFERED (containers often set it), so stdout really is buffered.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _run_child(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", MODULE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_child_env(),
        **kw,
    )


# --------------------------------------------------------------------------- real exec


def test_exec_keeps_pid_environment_stdout_and_payload() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", MODULE, "--before-exec", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_child_env(LEANEXEC_OUTER="from-the-parent"),
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    # What the CLI printed (unflushed) before the exec comes first, whole.
    assert lines[0] == f"before exec pid={proc.pid}", out
    report = json.loads(lines[1])
    assert report["pid"] == proc.pid  # the same process, not a child
    assert report["ok"] is True  # the payload arrived intact (1 MiB of bytes included)
    assert report["env"] == "set-at-runtime"  # os.environ as it was at the exec
    assert report["env_outer"] == "from-the-parent"
    assert report["cmdline"][-6:-1] == ["-P", "-m", "sidecar_common.leanstart", MODULE, "--run"]
    # Started through sidecar_common.leanstart: OpenSSL's modules are still placeholders.
    assert report["ssl"] == "DeferredModule" and not report["openssl_loaded"]
    assert report["cli_module_loaded"] is False  # a new interpreter: the CLI's imports are gone
    # It runs -OO (LEAN_OPTIMIZE): docstrings are not loaded, though the CLI ran without -O.
    assert report["optimize"] == 2 and report["docstring"] is None
    # The payload fd was read and closed: stdio and listdir's own fd only.
    assert report["fds"][:3] == [0, 1, 2] and len(report["fds"]) == 4


def test_serve_status_is_the_exit_status_and_interpreter_flags_are_kept() -> None:
    res = subprocess.run(
        [sys.executable, "-O", "-X", "leanexec_test=1", "-P", "-m", MODULE, "--before-exec", "7"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_child_env(),
    )
    assert res.returncode == 7, res.stderr
    report = json.loads(res.stdout.splitlines()[1])
    assert report["status"] == 7
    # -X options are kept; -O is raised to -OO, as without it.
    assert report["optimize"] == 2 and report["xoptions"] == {"leanexec_test": "1"}


def test_config_error_after_the_exec_is_one_line_exit_2() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            f"from {MODULE} import _config_error_child; _config_error_child()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_child_env(),
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "child: error: invalid value for --admin: '127.0.0.1:1' "
        "(expected an address we can listen on)"
    ]


def _config_error_child() -> None:
    exec_lean(MODULE, {"config_error": True})


# --------------------------------------------------------------------------- bad --run


def test_a_closed_fd_is_one_line_exit_2() -> None:
    res = _run_child("--run", "57")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "child: error: --run 57: no start-up payload (Bad file descriptor)"
    ]


def test_stdin_that_is_not_a_payload_is_one_line_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "payload"
    f.write_bytes(pickle.dumps(PAYLOAD))  # a pickle, but not one of ours
    with open(f, "rb") as stdin:
        res = _run_child("--run", "0", stdin=stdin)
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["child: error: --run 0: not a start-up payload (no marker)"]


@pytest.mark.parametrize("args", [["--run", "x"], ["--run"], ["--run", "3", "4"], []])
def test_bad_run_arguments_are_one_line_exit_2(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        run_lean("child", lambda payload: 0, args)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "child: error: expected --run FD (this program is started by `child run`)"
    ]


def test_a_pipe_is_refused_at_once_not_read() -> None:
    r, w = os.pipe()  # w stays open: a read would block forever
    try:
        with pytest.raises(LeanExecError, match=r"--run \d+: not a start-up payload \(not a memfd"):
            load_lean_payload(r)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "not a start-up payload (no marker)"),
        (pickle.dumps(PAYLOAD), "not a start-up payload (no marker)"),
        (MAGIC + b"garbage", "start-up payload does not load (UnpicklingError"),
        (MAGIC, "start-up payload does not load (EOFError"),
    ],
)
def test_a_file_that_is_not_a_payload_is_refused(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    f = tmp_path / "payload"
    f.write_bytes(content)
    fd = os.open(f, os.O_RDONLY)
    with pytest.raises(LeanExecError) as info:
        load_lean_payload(fd)
    assert str(info.value).startswith(f"--run {fd}: ") and needle in str(info.value)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed even when refused


# --------------------------------------------------------------------------- in process


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("test", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def test_load_lean_payload_reads_and_closes() -> None:
    fd = _memfd(MAGIC + pickle.dumps(PAYLOAD))
    assert load_lean_payload(fd) == PAYLOAD
    with pytest.raises(OSError):
        os.fstat(fd)  # closed: the lean process keeps no stray fd


def test_load_lean_payload_refuses_unloadable_classes() -> None:
    # A payload naming a module the lean process cannot import.
    data = pickle.dumps(PAYLOAD).replace(b"pathlib", b"nolibxy")
    fd = _memfd(MAGIC + data)
    with pytest.raises(LeanExecError, match=r"does not load \(ModuleNotFoundError"):
        load_lean_payload(fd)


def test_exec_failure_raises_and_leaks_no_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    with pytest.raises(LeanExecError, match="cannot re-execute /nonexistent/python3 -m m"):
        exec_lean("m", {"a": 1})
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_run_lean_passes_the_payload_and_exits_with_its_status() -> None:
    seen: list[object] = []

    def serve(payload: object) -> int:
        seen.append(payload)
        return 3

    with pytest.raises(SystemExit) as info:
        run_lean("child", serve, ["--run", str(_memfd(MAGIC + pickle.dumps(PAYLOAD)))])
    assert info.value.code == 3 and seen == [PAYLOAD]


def test_trim_memory_runs() -> None:
    leanexec.trim_memory()  # glibc here: malloc_trim is found and called without error


async def test_trim_after_start_waits_then_trims(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    calls: list[float] = []
    monkeypatch.setattr(leanexec, "trim_memory", lambda: calls.append(trio.current_time()))
    start = trio.current_time()
    await leanexec.trim_after_start(2.0)
    assert calls == [start + 2.0]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--before-exec"]:
        _before_exec(int(sys.argv[2]))
    run_lean("child", _serve)
