"""The adapter's benchmark: lines per second on one core, per format, next to syslog-ng.

What it measures, in one run, with the variants interleaved round-robin over several
rounds (median and spread reported, because these machines are shared and noisy):

* ``adapter run --format F`` for each format, and ``--format auto`` on the same input,
  reading the input from a pipe on stdin (as ``app | adapter run`` does) and writing
  ECS JSON lines to /dev/null, pinned to one core with taskset. Throughput is given
  per CPU second of the adapter process (user + system time of all its threads, from
  ``wait4``): on a loaded machine the wall clock measures the neighbours as much as us,
  the CPU time does not. Wall-clock lines/s is shown as well.
* Peak RSS (``ru_maxrss`` of the process), and one long run to show it does not grow
  with the input length.
* syslog-ng (Debian's syslog-ng-core with syslog-ng-scl) as a C peer on the same input:
  ``stdin()`` source, ``apache-accesslog-parser()`` / ``json-parser()`` /
  ``syslog-parser()``, ``file()`` destination with ``$(format-json ...)``, same core.
* ``--inproc``: Pipeline.feed + encode_json alone in this process (no trio, no I/O),
  to show how much of the time is the pure pipeline and how much the shell.

Usage:
  .venv/bin/python bench/adapter.py                      # full run, writes BENCHMARKS-adapter.md
  .venv/bin/python bench/adapter.py --smoke --out /tmp/x.md --json /tmp/x.json
  .venv/bin/python bench/adapter.py --formats json,access --lines 200000 --rounds 5
  .venv/bin/python bench/adapter.py --inproc-only --formats access --profile
Setup: apt-get install -y syslog-ng-core syslog-ng-scl (the scl holds apache-accesslog-parser).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VENV_BIN = Path(sys.executable).parent
GNU_TIME = "/usr/bin/time"  # Debian package "time"
CHUNK_LINES = 500  # about one 64 KiB read of typical lines
NOTES_MARKER = "<!-- notes: kept when bench/adapter.py rewrites this file -->"
FORMATS = ("json", "logfmt", "access", "syslog", "python", "klog", "plain")
# Formats with a syslog-ng counterpart: the parser doing the same job in its config.
SYSLOG_NG_PARSERS = {
    "access": 'apache-accesslog-parser(prefix(".apache."))',
    "json": 'json-parser(prefix(".json."))',
    "syslog": "syslog-parser(flags(syslog-protocol))",
}
# Formats where every input line is one record (no multiline joining in the generated input).
ONE_RECORD_PER_LINE = frozenset({"json", "logfmt", "access", "syslog", "klog", "plain"})
BASE_TIME = dt.datetime(2026, 3, 14, 9, 26, 53, tzinfo=dt.UTC).timestamp()


def log(msg: str) -> None:
    print(f"[bench-adapter {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- inputs

_PATHS = (
    "/",
    "/api/v1/orders",
    "/api/v1/orders/8841",
    "/api/v1/users/me",
    "/static/app.3f9c2.js",
    "/static/style.css",
    "/healthz",
    "/search?q=blue+shoes&page=2",
    "/api/v1/cart/items?id=12&qty=3",
    "/favicon.ico",
)
_METHODS = ("GET", "GET", "GET", "GET", "POST", "PUT", "DELETE")
_STATUS = (200, 200, 200, 200, 200, 201, 204, 301, 304, 400, 404, 500)
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:124.0) Gecko/20100101 Firefox/124.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36",
    "curl/8.5.0",
    "kube-probe/1.29",
    "python-requests/2.31.0",
)
_LOGGERS = ("app.http", "app.db", "app.worker", "sqlalchemy.engine", "uvicorn.access")
_WORDS = (
    "request",
    "completed",
    "user",
    "order",
    "cache",
    "miss",
    "retrying",
    "connection",
    "pool",
    "queue",
    "job",
    "started",
    "finished",
    "timeout",
    "upstream",
    "payload",
)
_LEVELS = ("DEBUG", "INFO", "INFO", "INFO", "INFO", "WARNING", "ERROR")


def _sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _ip(rng: random.Random) -> str:
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _when(i: int) -> float:
    """Input line i was written at: about 2,000 lines a second, like a busy service."""
    return BASE_TIME + i * 0.000497


def _iso(t: float) -> str:
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def gen_json(rng: random.Random, i: int) -> list[str]:
    level = rng.choice(_LEVELS).lower()
    rec = {
        "time": _iso(_when(i)),
        "level": level,
        "logger": rng.choice(_LOGGERS),
        "msg": _sentence(rng),
        "method": rng.choice(_METHODS),
        "path": rng.choice(_PATHS),
        "status": rng.choice(_STATUS),
        "duration_ms": round(rng.random() * 250, 3),
        "request_id": f"{rng.getrandbits(64):016x}",
        "trace_id": f"{rng.getrandbits(128):032x}",
    }
    return [json.dumps(rec, separators=(",", ":"))]


def gen_logfmt(rng: random.Random, i: int) -> list[str]:
    return [
        f"time={_iso(_when(i))} level={rng.choice(_LEVELS).lower()} "
        f'msg="{_sentence(rng)}" component={rng.choice(_LOGGERS)} '
        f"method={rng.choice(_METHODS)} path={rng.choice(_PATHS).split('?')[0]} "
        f"status={rng.choice(_STATUS)} duration={rng.randrange(1, 900)}ms"
    ]


def gen_access(rng: random.Random, i: int) -> list[str]:
    t = dt.datetime.fromtimestamp(_when(i), dt.UTC)
    referrer = rng.choice(("-", "https://shop.example.com/", "https://www.google.com/"))
    return [
        f"{_ip(rng)} - {rng.choice(('-', '-', '-', 'alice'))} "
        f"[{t.strftime('%d/%b/%Y:%H:%M:%S')} +0000] "
        f'"{rng.choice(_METHODS)} {rng.choice(_PATHS)} HTTP/1.1" {rng.choice(_STATUS)} '
        f'{rng.randrange(0, 60000)} "{referrer}" "{rng.choice(_AGENTS)}"'
    ]


def gen_syslog(rng: random.Random, i: int) -> list[str]:
    pri = 8 * rng.choice((1, 3, 16)) + rng.choice((3, 4, 5, 6, 6, 6, 7))
    sd = rng.choice(
        ("-", f'[req@32473 id="{rng.getrandbits(32):08x}" user="u{rng.randrange(99)}"]')
    )
    return [
        f"<{pri}>1 {_iso(_when(i))} web-{rng.randrange(4)}.example.com "
        f"{rng.choice(('nginx', 'api', 'worker'))} {rng.randrange(100, 30000)} "
        f"{rng.choice(('-', 'ID47', 'AUDIT'))} {sd} {_sentence(rng, 8)}"
    ]


_PY_TRACEBACK = (
    "Traceback (most recent call last):",
    '  File "/srv/app/worker.py", line 88, in run',
    "    result = self.handle(job)",
    '  File "/srv/app/worker.py", line 131, in handle',
    "    return self.db.fetch(job.key)",
    '  File "/srv/app/db.py", line 42, in fetch',
    "    raise LookupError(f'no row for {key!r}')",
    "LookupError: no row for 'job-{n}'",
)


def gen_python(rng: random.Random, i: int) -> list[str]:
    t = dt.datetime.fromtimestamp(_when(i), dt.UTC)
    stamp = t.strftime("%Y-%m-%d %H:%M:%S") + f",{t.microsecond // 1000:03d}"
    if rng.random() < 0.02:  # logger.exception(...): an ERROR line and its traceback
        head = f"{stamp} - app.worker - ERROR - job {i} failed"
        return [head, *(line.replace("{n}", str(i)) for line in _PY_TRACEBACK)]
    return [f"{stamp} - {rng.choice(_LOGGERS)} - {rng.choice(_LEVELS)} - {_sentence(rng)}"]


def gen_klog(rng: random.Random, i: int) -> list[str]:
    t = dt.datetime.fromtimestamp(_when(i), dt.UTC)
    sev = rng.choice("IIIIIWE")
    if rng.random() < 0.5:
        msg = (
            f'"{_sentence(rng, 4)}" pod="default/web-{rng.randrange(9)}" attempt={rng.randrange(5)}'
        )
    else:
        msg = _sentence(rng)
    return [
        f"{sev}{t.strftime('%m%d %H:%M:%S')}.{t.microsecond:06d}    "
        f"{rng.randrange(1, 40)} {rng.choice(('controller.go', 'reflector.go', 'server.go'))}:"
        f"{rng.randrange(20, 900)}] {msg}"
    ]


def gen_plain(rng: random.Random, i: int) -> list[str]:
    return [
        rng.choice(
            (
                f"Starting worker {rng.randrange(16)} for queue {rng.choice(_WORDS)}",
                f"{_sentence(rng, 9)}",
                f"Listening on http://0.0.0.0:{rng.randrange(1024, 65535)}",
                f"processed {rng.randrange(10**6)} items in {rng.random():.3f}s",
            )
        )
    ]


GENERATORS: dict[str, Callable[[random.Random, int], list[str]]] = {
    "json": gen_json,
    "logfmt": gen_logfmt,
    "access": gen_access,
    "syslog": gen_syslog,
    "python": gen_python,
    "klog": gen_klog,
    "plain": gen_plain,
}


def generate(fmt: str, lines: int, path: Path, seed: int = 1) -> int:
    """Write about ``lines`` lines of ``fmt`` to ``path``; returns the exact line count."""
    rng = random.Random(f"{seed}-{fmt}")
    gen = GENERATORS[fmt]
    n = i = 0
    with path.open("w", encoding="utf-8") as fh:
        while n < lines:
            chunk = gen(rng, i)
            fh.write("\n".join(chunk))
            fh.write("\n")
            n += len(chunk)
            i += 1
    return n


# --------------------------------------------------------------------------- running


@dataclass
class Run:
    """One measured process: what it cost and how many lines it handled."""

    wall: float
    cpu: float
    maxrss_kib: int
    rc: int
    stderr: str = ""


def run_measured(
    argv: list[str],
    input_path: Path,
    out_path: str,
    cpu: int | None,
    env: dict[str, str] | None = None,
) -> Run:
    """Run ``argv`` with ``input_path`` fed through a pipe on stdin; wall, CPU and peak RSS.

    The feeder (``cat``) is a separate process so the measured one reads a pipe, as it
    does behind ``app |``; its cost is not counted. CPU time and ``ru_maxrss`` come from
    ``wait4`` on the measured process itself (all its threads).
    """
    if cpu is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu), *argv]
    # ru_maxrss of a child forked from this (large) process starts at our own RSS, so the
    # peak RSS is read from GNU time, itself small, which forks the measured process.
    fd, rss_path = tempfile.mkstemp(prefix="bench-rss-")
    os.close(fd)
    if os.path.exists(GNU_TIME):
        argv = [GNU_TIME, "-q", "-f", "%M", "-o", rss_path, *argv]
    with open(out_path, "wb") as out, tempfile.TemporaryFile() as err:
        feeder = subprocess.Popen(["cat", str(input_path)], stdout=subprocess.PIPE)
        assert feeder.stdout is not None
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=feeder.stdout, stdout=out, stderr=err, env=env)
        feeder.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        feeder.wait()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    maxrss = usage.ru_maxrss
    try:
        with open(rss_path) as fh:
            maxrss = int(fh.read().split()[-1])
    except (OSError, ValueError, IndexError):
        pass  # no GNU time: ru_maxrss (an upper bound)
    finally:
        os.unlink(rss_path)
    if proc.returncode != 0 and stderr.startswith("Command exited with non-zero status"):
        stderr = stderr.split("\n", 1)[-1]
    return Run(wall, usage.ru_utime + usage.ru_stime, maxrss, proc.returncode, stderr)


def adapter_argv(fmt: str) -> list[str]:
    return [str(VENV_BIN / "adapter"), "run", "--format", fmt]


SYSLOG_NG_TEMPLATE = "$(format-json --scope rfc5424 --scope dot-nv-pairs)"
SYSLOG_NG_CONF = """@version: 3.38
@include "scl.conf"
options {{ stats_freq(0); }};
source s_in {{ stdin(flags(no-parse)); }};
{parser}
destination d_out {{ file("{out}" template("{template}\\n")); }};
log {{ source(s_in); {parser_ref} destination(d_out); }};
"""


def syslog_ng_argv(fmt: str, workdir: Path, out: str) -> list[str]:
    """syslog-ng in the foreground with a config of our own, parsing ``fmt``."""
    d = workdir / f"syslog-ng-{fmt}-{Path(out).name}"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "syslog-ng.conf"
    conf.write_text(
        SYSLOG_NG_CONF.format(
            parser=f"parser p_in {{ {SYSLOG_NG_PARSERS[fmt]}; }};",
            parser_ref="parser(p_in);",
            out=out,
            template=SYSLOG_NG_TEMPLATE,
        )
    )
    return [
        "syslog-ng",
        "-F",
        "--no-caps",
        "-f",
        str(conf),
        "-R",
        str(d / "persist"),
        "-p",
        str(d / "pid"),
        "-c",
        str(d / "ctl"),
    ]


Argv = Callable[[str], list[str]]


def _fixed(argv: list[str]) -> Argv:
    return lambda _out: argv


@dataclass
class Variant:
    """One thing measured: a program on one format's input."""

    name: str  # e.g. "adapter --format json", "adapter --format auto", "syslog-ng"
    fmt: str
    argv: Argv  # output path -> argv
    to_stdout: bool = True  # False: the program writes the output path itself (syslog-ng)
    env: dict[str, str] | None = None  # e.g. PYTHONPATH of a baseline tree
    runs: list[Run] = field(default_factory=list)
    records: int | None = None  # output records of the last checked run


def records_in(path: str) -> int:
    """Count the output lines, checking each is a JSON object (raises if one is not)."""
    n = 0
    with open(path, "rb") as fh:
        for raw in fh:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {n + 1} is not a JSON object")
            n += 1
    return n


# --------------------------------------------------------------------------- in-process


def inproc(fmt: str, path: Path, *, profile: bool = False) -> dict[str, float]:
    """Pipeline.feed + encode_json alone, in this process; CPU seconds split by stage."""
    from adapter.pipeline import Pipeline, PipelineConfig, encode_json

    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    out: dict[str, float] = {"lines": float(len(lines))}
    for mode in (fmt, "auto"):
        pipe = Pipeline(PipelineConfig(format=mode, environ={}))
        feed = pipe.feed
        # One call per read, as the shell makes it (Pipeline.feed_lines; a tree from before it
        # existed is fed line by line, as its shell did).
        feed_lines = getattr(pipe, "feed_lines", None)
        wall = time.time()
        feed_s = encode_s = 0.0
        # In chunks, as the shell does (a read's worth of lines, then their records written):
        # holding every record of the run at once would measure the garbage collector instead.
        for start in range(0, len(lines), CHUNK_LINES):
            records: list[dict[str, Any]] = []
            t0 = time.process_time()
            chunk = lines[start : start + CHUNK_LINES]
            if feed_lines is not None:
                records += feed_lines(chunk, now=0.0, wall=wall)
            else:
                for line in chunk:
                    records += feed(line, now=0.0, wall=wall)
            if start + CHUNK_LINES >= len(lines):
                records += pipe.flush()
            t1 = time.process_time()
            for record in records:
                encode_json(record)
            t2 = time.process_time()
            feed_s += t1 - t0
            encode_s += t2 - t1
        which = "auto" if mode == "auto" else "fixed"
        out[f"{which}_feed"] = feed_s
        out[f"{which}_encode"] = encode_s
    if profile:
        import cProfile
        import pstats

        pipe = Pipeline(PipelineConfig(format="auto", environ={}))
        prof = cProfile.Profile()
        prof.enable()
        for line in lines:
            for record in pipe.feed(line, now=0.0, wall=time.time()):
                encode_json(record)
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(18)
    return out


# --------------------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f"{min(values):,.0f}-{max(values):,.0f}"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average at start {load[0]:.1f}"
    )


def syslog_ng_version() -> str:
    try:
        res = subprocess.run(["syslog-ng", "--version"], capture_output=True, text=True)
    except OSError:
        return "not installed"
    return res.stdout.splitlines()[0] if res.stdout else "unknown"


def render(
    variants: list[Variant],
    lines_by_fmt: dict[str, int],
    startup: list[Run],
    long_run: tuple[int, Run] | None,
    inproc_results: dict[str, dict[str, float]],
    args: argparse.Namespace,
    command: str,
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    startup_cpu = _median([r.cpu for r in startup])
    out = [
        "# Adapter benchmark",
        "",
        f"- date: {now}",
        f"- machine: {machine()}",
        f"- command: `{command}`",
        f"- syslog-ng: {syslog_ng_version()}",
        f"- input: {args.lines:,} generated lines per format (bench/adapter.py), fed through a "
        "pipe on stdin; output ECS JSON lines to /dev/null; each process pinned to CPU "
        f"{args.cpu} with taskset; {args.rounds} interleaved rounds, median (min-max).",
        "- lines/CPU-s: input lines per second of CPU time (user+sys, all threads) of the "
        "measured process: the throughput of one core, whatever the neighbours on this shared "
        "machine do. wall: lines per second of wall-clock time (includes waiting for the CPU). "
        f"Start-up and shutdown of the adapter with no input cost {startup_cpu:.2f} CPU-s "
        "(included in both).",
        "",
        "| format | program | lines/CPU-s | spread | steady lines/CPU-s | wall lines/s "
        "| peak RSS MB | records |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    fixed: dict[str, float] = {}
    for v in variants:
        n = lines_by_fmt[v.fmt]
        rates = [n / r.cpu for r in v.runs if r.cpu > 0]
        # Steady state: without the start-up cost (measured on empty input, same round).
        base_cpu = startup_cpu if v.name.startswith(("adapter", "baseline")) else 0.0
        steady = [n / (r.cpu - base_cpu) for r in v.runs if r.cpu > base_cpu]
        walls = [n / r.wall for r in v.runs if r.wall > 0]
        rss = max((r.maxrss_kib for r in v.runs), default=0) / 1024
        med = _median(rates)
        prog = v.name.split(" ", 1)[0]
        if v.name.startswith(("adapter --format", "baseline --format")) and not v.name.endswith(
            "auto"
        ):
            fixed[prog + v.fmt] = med
        extra = ""
        if v.name.endswith("auto") and fixed.get(prog + v.fmt) and med:
            extra = f" ({(fixed[prog + v.fmt] / med - 1) * 100:+.0f}% time)"
        records = "" if v.records is None else f"{v.records:,}"
        out.append(
            f"| {v.fmt} | {v.name}{extra} | {med:,.0f} | {_spread(rates)} | "
            f"{_median(steady):,.0f} | {_median(walls):,.0f} | {rss:.1f} | {records} |"
        )
    if long_run is not None:
        n, r = long_run
        out += [
            "",
            f"RSS against input length: `adapter run --format auto` on {n:,} json lines: "
            f"peak RSS {r.maxrss_kib / 1024:.1f} MB, {n / r.cpu:,.0f} lines/CPU-s.",
        ]
    if inproc_results:
        out += [
            "",
            "In-process (no trio, no pipe; `Pipeline.feed` then `encode_json` over the same "
            "lines, in chunks of 500 lines as the shell feeds them (`feed_lines`), CPU time of "
            "this process, one "
            "pass): where the time goes.",
            "",
            "| format | fixed: feed lines/s | encode lines/s | both | auto: feed lines/s | both |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for fmt, ip in inproc_results.items():
            count = ip["lines"]

            def rate(t: float, count: float = count) -> str:
                return f"{count / t:,.0f}" if t > 0 else "-"

            out.append(
                f"| {fmt} | {rate(ip['fixed_feed'])} | {rate(ip['fixed_encode'])} | "
                f"{rate(ip['fixed_feed'] + ip['fixed_encode'])} | {rate(ip['auto_feed'])} | "
                f"{rate(ip['auto_feed'] + ip['auto_encode'])} |"
            )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


def rotated(items: list[Variant], k: int) -> Iterator[Variant]:
    """Round k starts at a different variant, so no one always runs first or last."""
    k %= max(len(items), 1)
    yield from items[k:] + items[:k]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a few thousand lines, one round")
    p.add_argument("--lines", type=int, default=200_000, help="input lines per format")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1)
    p.add_argument("--no-auto", action="store_true", help="skip the --format auto runs")
    p.add_argument("--no-syslog-ng", action="store_true", help="skip the syslog-ng peer")
    p.add_argument("--long", type=int, default=1_000_000, help="lines of the RSS run (0: skip)")
    p.add_argument("--inproc", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--inproc-only", action="store_true", help="only the in-process numbers")
    p.add_argument("--profile", action="store_true", help="cProfile the in-process auto run")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS-adapter.md")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    p.add_argument("--keep-output", action="store_true", help="write outputs to files, check")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--tree", type=Path, help="import the adapter from this tree (--inproc-only)")
    p.add_argument(
        "--baseline",
        type=Path,
        help="also run the adapter from this source tree (PYTHONPATH), e.g. an older commit "
        "unpacked with git archive, interleaved with the current one: before/after in one run",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.lines = min(args.lines, 3000)
        args.rounds = 1
        args.long = 0
        args.keep_output = True
    if args.tree is not None:
        sys.path.insert(0, str(args.tree.resolve()))
    formats = [f for f in args.formats.split(",") if f]
    for fmt in formats:
        if fmt not in GENERATORS:
            p.error(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    syslog_ng = not args.no_syslog_ng and shutil.which("syslog-ng") is not None
    if not args.no_syslog_ng and not syslog_ng:
        log("syslog-ng not found: the C peer is skipped (apt-get install syslog-ng-core)")
    command = "python bench/adapter.py " + " ".join(argv if argv is not None else sys.argv[1:])

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-adapter-"))
    workdir.mkdir(parents=True, exist_ok=True)
    inputs: dict[str, Path] = {}
    lines_by_fmt: dict[str, int] = {}
    for fmt in formats:
        inputs[fmt] = workdir / f"{fmt}.log"
        lines_by_fmt[fmt] = generate(fmt, args.lines, inputs[fmt])
        log(f"generated {lines_by_fmt[fmt]:,} {fmt} lines ({inputs[fmt].stat().st_size:,} bytes)")

    inproc_results: dict[str, dict[str, float]] = {}
    if args.inproc or args.inproc_only:
        for fmt in formats:
            inproc_results[fmt] = inproc(fmt, inputs[fmt], profile=args.profile)
            ip = inproc_results[fmt]
            fixed_s = ip["fixed_feed"] + ip["fixed_encode"]
            auto_s = ip["auto_feed"] + ip["auto_encode"]
            log(
                f"in-process {fmt}: fixed {ip['lines'] / fixed_s:,.0f} lines/s, "
                f"auto {ip['lines'] / auto_s:,.0f} lines/s"
            )
    if args.inproc_only:
        print(json.dumps(inproc_results, indent=1))
        return 0
    if args.baseline is not None and (args.inproc or args.inproc_only):
        res = subprocess.run(
            [
                sys.executable,
                __file__,
                *("--inproc-only", "--tree", str(args.baseline)),
                *("--formats", ",".join(formats), "--lines", str(args.lines)),
                *("--workdir", str(workdir)),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        for fmt, ip in json.loads(res.stdout).items():
            inproc_results[f"{fmt} (baseline)"] = ip

    variants: list[Variant] = []
    for fmt in formats:
        variants.append(Variant(f"adapter --format {fmt}", fmt, _fixed(adapter_argv(fmt))))
        if not args.no_auto:
            variants.append(Variant("adapter --format auto", fmt, _fixed(adapter_argv("auto"))))
        if args.baseline is not None:
            env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
            for mode in (fmt, "auto") if not args.no_auto else (fmt,):
                variants.append(
                    Variant(
                        f"baseline --format {mode}",
                        fmt,
                        _fixed(adapter_argv(mode)),
                        env=env,
                    )
                )
        if syslog_ng and fmt in SYSLOG_NG_PARSERS:
            variants.append(
                Variant(
                    "syslog-ng",
                    fmt,
                    functools.partial(syslog_ng_argv, fmt, workdir),
                    to_stdout=False,
                )
            )
    empty = workdir / "empty.log"
    empty.write_bytes(b"")
    startup: list[Run] = []
    failures: list[str] = []
    for rnd in range(args.rounds):
        log(f"round {rnd + 1}/{args.rounds}")
        startup.append(run_measured(adapter_argv("auto"), empty, os.devnull, args.cpu))
        for v in rotated(variants, rnd):
            out = str(workdir / f"out-{len(v.runs)}.json") if args.keep_output else os.devnull
            stdout = out if v.to_stdout else os.devnull
            r = run_measured(v.argv(out), inputs[v.fmt], stdout, args.cpu, v.env)
            if r.rc != 0:
                failures.append(f"{v.name} on {v.fmt}: exit {r.rc}: {r.stderr[-500:]}")
                continue
            v.runs.append(r)
            if args.keep_output:
                n = records_in(out)
                v.records = n
                if v.fmt in ONE_RECORD_PER_LINE and n != lines_by_fmt[v.fmt]:
                    failures.append(f"{v.name} on {v.fmt}: {n} records for {lines_by_fmt[v.fmt]}")
                os.unlink(out)
            log(
                f"  {v.name:24} {v.fmt:7} {lines_by_fmt[v.fmt] / r.cpu:10,.0f} lines/CPU-s "
                f"{lines_by_fmt[v.fmt] / r.wall:10,.0f} lines/s  rss {r.maxrss_kib / 1024:.1f} MB"
            )
    long_run: tuple[int, Run] | None = None
    if args.long > 0:
        path = workdir / "long.log"
        n = generate("json", args.long, path)
        r = run_measured(adapter_argv("auto"), path, os.devnull, args.cpu)
        if r.rc != 0:
            failures.append(f"long run: exit {r.rc}: {r.stderr[-500:]}")
        else:
            long_run = (n, r)
            log(f"long run: {n:,} lines, peak RSS {r.maxrss_kib / 1024:.1f} MB")
        path.unlink()

    report = render(variants, lines_by_fmt, startup, long_run, inproc_results, args, command)
    # Hand-written analysis below the marker survives a re-run.
    old = args.out.read_text() if args.out.exists() else ""
    if NOTES_MARKER in old:
        report += "\n" + old[old.index(NOTES_MARKER) :]
    args.out.write_text(report)
    log(f"wrote {args.out}")
    if args.json:
        raw = {
            "lines": lines_by_fmt,
            "startup_cpu": [r.cpu for r in startup],
            "results": {
                f"{v.name} [{v.fmt}]": {
                    "lines_per_cpu_s": [lines_by_fmt[v.fmt] / r.cpu for r in v.runs if r.cpu > 0],
                    "lines_per_s": [lines_by_fmt[v.fmt] / r.wall for r in v.runs],
                    "maxrss_kib": [r.maxrss_kib for r in v.runs],
                    "records": v.records,
                }
                for v in variants
            },
            "inproc": inproc_results,
            "failures": failures,
        }
        args.json.write_text(json.dumps(raw, indent=1))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    for failure in failures:
        log("FAILED: " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
