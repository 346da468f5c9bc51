"""The adapter benchmark's smoke mode runs in the tests, so the harness cannot rot.

It checks that the harness works end to end: every format's input is generated, the real
``adapter run`` (fixed format and auto) and syslog-ng run on it, every output line is a JSON
object with one record per input line where the input has no multiline records, and the
report renders. It asserts nothing about speed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import adapter as bench  # noqa: E402


@pytest.mark.parametrize("fmt", bench.FORMATS)
def test_generated_input_is_what_the_adapter_parses(fmt: str, tmp_path: Path) -> None:
    """Each generator writes lines of its format: the pipeline detects them as that format."""
    from adapter.pipeline import Pipeline, PipelineConfig

    path = tmp_path / f"{fmt}.log"
    n = bench.generate(fmt, 300, path)
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b"" and len(lines) == n >= 300
    pipe = Pipeline(PipelineConfig(format="auto", environ={}))
    for i, line in enumerate(lines):
        pipe.feed(line, now=float(i), wall=1.7e9)
    pipe.flush()
    assert pipe.stats.parse_failures == 0
    assert set(pipe.stats.by_format) == {fmt}


def test_adapter_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    raw = tmp_path / "raw.json"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "adapter.py"),
            "--smoke",
            "--lines",
            "1500",
            "--out",
            str(out),
            "--json",
            str(raw),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(raw.read_text())
    assert data["failures"] == []
    results = data["results"]
    expected = {f"adapter --format {f} [{f}]" for f in bench.FORMATS}
    expected |= {f"adapter --format auto [{f}]" for f in bench.FORMATS}
    if shutil.which("syslog-ng"):
        expected |= {f"syslog-ng [{f}]" for f in bench.SYSLOG_NG_PARSERS}
    assert set(results) == expected
    for name, values in results.items():
        assert values["lines_per_cpu_s"] and all(v > 0 for v in values["lines_per_cpu_s"]), name
        assert all(kib > 0 for kib in values["maxrss_kib"]), name
        fmt = name.rsplit("[", 1)[1].rstrip("]")
        if fmt in bench.ONE_RECORD_PER_LINE:
            assert values["records"] == data["lines"][fmt], name
        else:  # python: tracebacks are joined into their ERROR line's record
            assert 0 < values["records"] < data["lines"][fmt], name
    report = out.read_text()
    assert "| json | adapter --format json |" in report
    assert "In-process" in report
