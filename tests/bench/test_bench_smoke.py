"""The benchmark's smoke mode runs in the tests, so the harness cannot rot.

It checks the harness works end to end (every variant starts, every workload
produces a number, the report renders); it asserts nothing about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    raw = tmp_path / "raw.json"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--smoke",
            "--out",
            str(out),
            "--json",
            str(raw),
            "--variants",
            "direct,ambassador,haproxy,envoy",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(raw.read_text())
    for workload, by_variant in data["results"].items():
        for variant, values in by_variant.items():
            assert values and all(v > 0 for v in values), (workload, variant, values)
    for variant in ("ambassador", "haproxy", "envoy"):
        assert data["memory"][variant]["idle"] > 0
    report = out.read_text()
    assert "| pgbench -S, 16 clients, TPS |" in report
    assert "**" in report  # ratios against direct are rendered
