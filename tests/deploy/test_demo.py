"""The Quickstart demo (README command one) runs to the end and tells the whole story.

It runs ``python -m demo`` exactly as ``scripts/demo.sh`` does after setup, so the
demo cannot rot: every step it announces must really have happened (the demo
itself waits for the adapter's records and fails when a step does not come).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_tells_the_story_and_exits_0(tmp_path: Path) -> None:
    res = run_demo("--keep", str(tmp_path / "demo"))
    out = res.stdout
    assert res.returncode == 0, f"stdout:\n{out}\nstderr:\n{res.stderr}"
    # In order: dev first, the file flips it to test, the admin API to prod, then the reload.
    key_lines = [
        "Step 1/11. Three stand-in databases",
        "-> the app reached: dev",
        "The ambassador noticed: environment switched dev -> test (source: env_file).",
        "-> the app reached: test",
        '<- 200 {"env": "prod"',
        "-> the app reached: prod",
        "acted: sent SIGHUP to pid",
        "-> the app logged: config reloaded, greeting=bonjour",
        '"name": "demo-7c9f8d-x2k4q"',
        '"type": "ValueError"',
        'ambassador_env_switches_total{result="switched",source="env_file"} 1',
        'ambassador_env_switches_total{result="switched",source="admin"} 1',
        'ambassador_current_env{env="prod"} 1',
        "adapter_records_total{",
        'watcher_reloads_total{action="signal",outcome="success"} 1',
        "watcher (pid ",
        "adapter (pid ",
        "ambassador (pid ",
        "Demo finished",
    ]
    position = 0
    for line in key_lines:
        found = out.find(line, position)
        assert found >= 0, f"missing (or out of order): {line!r}\nstdout:\n{out}"
        position = found
    # Every process it started exited cleanly after SIGTERM.
    assert out.count("exit status 0") + out.count("exited with status 0") == 3, out
    # The sidecars' own logs were kept where asked; each is JSON lines.
    for name in ("ambassador", "adapter", "watcher"):
        assert (tmp_path / "demo" / f"{name}.log").read_text().startswith("{"), name


def test_demo_help_and_bad_flag() -> None:
    res = run_demo("--help")
    assert res.returncode == 0
    assert "--keep DIR" in res.stdout
    res = run_demo("--nope")
    assert res.returncode == 2
    assert "unrecognized arguments: --nope" in res.stderr
