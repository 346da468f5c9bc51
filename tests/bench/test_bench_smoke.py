"""The benchmark's smoke mode runs in the tests, so the harness cannot rot.

It checks the harness works end to end (every variant starts, every workload
produces a number, the report renders with its targets table); it asserts
nothing about speed. The ambassador runs as users run it (``ambassador run``:
the fast relay, the lean exec'd process, and --workers 2), and wrk-l7 goes
through each proxy's HTTP-aware listener (the ambassador's protocol = "http",
HAProxy mode http, Envoy's http_connection_manager).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = (
    "direct", "ambassador", "ambassador-py", "ambassador-w2", "haproxy", "envoy", "naive-trio"
)  # fmt: skip
#: The naive trio proxy (the issue's anchor) is L4 only: it has no HTTP-aware listener.
L4_ONLY = {"naive-trio"}


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    raw = tmp_path / "raw.json"
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out),
         "--json", str(raw), "--variants", ",".join(VARIANTS)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(raw.read_text())
    assert set(data["results"]) == {
        "pgbench-s1", "pgbench-s16", "pgbench-c4", "iperf-1", "iperf-4", "wrk-l4", "wrk-l7",
    }  # fmt: skip
    for workload, by_variant in data["results"].items():
        assert set(by_variant) == set(VARIANTS)
        for variant, values in by_variant.items():
            if workload == "wrk-l7" and variant in L4_ONLY:
                assert values == [], (workload, variant, values)
                continue
            assert values and all(v > 0 for v in values), (workload, variant, values)
    for variant in VARIANTS[1:]:
        assert data["memory"][variant]["idle"] > 0
        assert data["memory"][variant]["idle_conns"] > 0
    # --workers 2 is measured as the parent and its two workers together.
    assert data["memory"]["ambassador-w2"]["idle"] > data["memory"]["ambassador"]["idle"]
    report = out.read_text()
    assert "| pgbench -S, 16 clients, TPS |" in report
    assert "**" in report  # ratios against direct are rendered
    assert "Targets of issue 4" in report
    assert "| wrk 1 KiB via L7 (HTTP), 32 conns, req/s |" in report
    assert "| wrk 1 KiB via L7 >= Envoy (issue 8) |" in report
    assert "| proxy CPU per request, us (wrk 1 KiB via L7 (HTTP), 32 conns) |" in report
    for variant in VARIANTS[1:]:  # direct has no proxy process
        cpu = data["cpu_us_per_request"]
        assert cpu["wrk-l4"][variant] and all(v > 0 for v in cpu["wrk-l4"][variant]), variant
        assert cpu["pgbench-c4"][variant], variant  # per connection (may round to 0 in 1 s)
        if variant not in L4_ONLY:
            assert all(v > 0 for v in cpu["wrk-l7"][variant]), variant
    # The RSS anchor is the naive trio proxy's figure: compared in the same run.
    assert "| RSS idle <= the naive trio proxy's (same run) |" in report
    assert "| proxy CPU per request, us (pgbench -S -C, 4 clients) |" in report
    assert "- command: `.venv/bin/python bench/run.py --smoke" in report
