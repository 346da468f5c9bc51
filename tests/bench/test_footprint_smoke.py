"""The footprint harness's smoke mode runs in the tests, so it cannot rot.

It starts the real ambassador, adapter and watcher as subprocesses, as the full run does,
and checks that every number the manifests are sized from exists and is positive, and that
the README block is written between its markers. It asserts nothing about the numbers' size
but one loose bound: the ambassador's RSS must not grow by megabytes with its config.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import footprint  # noqa: E402


def test_footprint_smoke(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# before\n\n{footprint.START}\nold\n{footprint.END}\n\nafter\n")
    raw = tmp_path / "raw.json"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "footprint.py"),
            "--smoke",
            "--json",
            str(raw),
            "--readme",
            str(readme),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(raw.read_text())
    assert [r["sidecar"] for r in rows] == ["ambassador", "adapter", "watcher"]
    for r in rows:
        assert r["rss_idle_bytes"] > 0, r
        assert r["rss_peak_bytes"] >= r["rss_idle_bytes"], r  # VmHWM >= VmRSS, always
        assert r["cpu_seconds"] > 0, r
        assert r["load_seconds"] > 0, r
        assert set(r["suggested"]) == {"cpu request", "cpu limit", "memory request", "memory limit"}
    # The ambassador's idle RSS by config size: measured, and no pathological growth
    # (megabytes per listener or endpoint); the smoke run is too short for finer bounds.
    sc = rows[0]["scaling"]
    assert (sc["listeners"], sc["endpoints"]) == (5, 4)
    assert min(sc["rss_small_bytes"], sc["rss_listeners_bytes"], sc["rss_full_bytes"]) > 0
    assert sc["rss_full_bytes"] < sc["rss_small_bytes"] + 16 * footprint.MiB
    assert "| per endpoint |" in res.stdout and "| per listener |" in res.stdout
    text = readme.read_text()
    assert text.startswith("# before\n") and text.endswith("\n\nafter\n")
    assert "old" not in text and text.count(footprint.START) == 1
    assert "bench/footprint.py --smoke" in text
    for name in ("ambassador", "adapter", "watcher"):
        assert f"| {name} |" in res.stdout and f"| {name} |" in text


def test_readme_block_is_appended_when_markers_are_missing(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# title\n")
    footprint.write_readme(readme, "body")
    footprint.write_readme(readme, "body 2")
    assert readme.read_text() == f"# title\n\n{footprint.START}\nbody 2\n{footprint.END}\n"


def test_suggest_follows_the_stated_rule() -> None:
    r = footprint.Footprint("x", "load", 30 * footprint.MiB, 40 * footprint.MiB, 2.0, 5.0)
    # idle 30 -> 32 + 16; peak 40 -> 80; rate 0.4: /4 -> 100m, x2 -> 800m.
    assert footprint.suggest(r) == {
        "cpu request": "100m",
        "cpu limit": "800m",
        "memory request": "48Mi",
        "memory limit": "80Mi",
    }
    busy = footprint.Footprint("y", "load", 1, 1, 9.0, 5.0)
    assert footprint.suggest(busy)["cpu limit"] == "1000m"  # one Python thread: 1 core at most
