"""Memory and CPU footprint of each sidecar, run the way k8s-manifests runs it.

Why: the pod's resources (requests and limits in k8s-manifests/) must come from
measurements, not guesses. Each sidecar is started here as a real subprocess (its console
script, as the images' entrypoints are) on 127.0.0.1 and free ports, settled, measured idle,
put under a short load, measured again, and stopped by PID:

- ambassador: a TOML config with two listeners like k8s-manifests/base/ambassador.toml
  (both ``protocol = "tcp"``: the load is raw bytes, not PostgreSQL) forwarding to a local
  echo server; the load is N concurrent connections pushing data and reading it back.
- adapter: ``adapter run --admin ... --field ... -- python -c ...`` wrapping an app that
  prints N lines once told to; the load ends when all N records came out.
- watcher: watches a temp dir laid out like a ConfigMap volume (``..data`` symlink swapped
  atomically, as kubelet does), reloads a small app with SIGHUP (``--pid-file``) and probes
  its HTTP port; the load is a few config changes (each awaited as a reload) and probes.

Reported per sidecar: RSS idle (VmRSS after settling), RSS peak (VmHWM at the end of the
load, so it includes start-up; at least the idle reading, since the kernel updates the high-water
mark lazily and a heap trim in between can leave it below an RSS we saw), and the CPU seconds
used during the load (utime + stime from /proc/PID/stat). Shared machines are noisy: the
numbers size a pod, they are no speed test.

And the ambassador's idle RSS by config size (issue 4: "independent of the number of
configured listeners and endpoints"): three configs, started and measured alike, with TCP
health checks on every endpoint (all healthy, one environment): 1 listener with 1 endpoint,
N listeners with 1 endpoint each, N listeners with M endpoints each. Per listener = the
second minus the first over N - 1; per endpoint = the third minus the second over N x (M - 1).

Usage:
  .venv/bin/python bench/footprint.py            # full run (~50 s), writes k8s-manifests/README.md
  .venv/bin/python bench/footprint.py --smoke    # seconds-long sanity run (the tests run this)
  .venv/bin/python bench/footprint.py --json out.json --no-readme
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.procs import free_port  # noqa: E402

BIN = Path(sys.executable).parent
README = ROOT / "k8s-manifests" / "README.md"
START = "<!-- footprint:start -->"
END = "<!-- footprint:end -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024


@dataclass(frozen=True)
class Load:
    """How hard each sidecar is pushed: the full run and --smoke differ only here."""

    settle: float
    connections: int
    seconds: float
    chunk: int
    lines: int
    changes: int
    listeners: int
    endpoints: int
    scaling_settle: float  # past the ambassador's heap trim (2 s after start) when it counts


FULL = Load(
    settle=3.0,
    connections=200,
    seconds=5.0,
    chunk=16384,
    lines=200_000,
    changes=5,
    listeners=20,
    endpoints=10,
    scaling_settle=3.0,
)
SMOKE = Load(
    settle=0.5,
    connections=20,
    seconds=1.0,
    chunk=4096,
    lines=5_000,
    changes=8,  # the lean watcher spends ~5 ms per change: enough clock ticks to be sure of > 0
    listeners=5,
    endpoints=4,
    scaling_settle=0.5,
)


@dataclass(frozen=True)
class Footprint:
    sidecar: str
    load: str
    rss_idle_bytes: int
    rss_peak_bytes: int
    cpu_seconds: float
    load_seconds: float


# ---- /proc ---------------------------------------------------------------------------------


def peak_bytes(pid: int, seen: int) -> int:
    """VmHWM, but never below ``seen``, an RSS read earlier from the same process.

    Linux keeps the high-water mark lazily (updated at unmaps and exit, not at
    every page fault), and ``malloc_trim`` gives pages back with madvise, not
    munmap: the mark can then read lower than an RSS we already saw.
    """
    return max(status_kib(pid, "VmHWM"), seen)


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} missing in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """utime + stime of PID itself (not its children), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """Direct children of PID (the adapter's wrapped app), to stop them by PID too."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def metric(admin: int, name: str) -> float:
    """Sum of one metric's samples on the admin server's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(None, 1)[1])
    return total


# ---- processes -----------------------------------------------------------------------------


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until URL answers 2xx (the sidecar's /healthz: it is up, like a startupProbe)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode} before {url} answered")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if 200 <= resp.status < 300:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, then SIGKILL after 10 s; the process's children likewise."""
    if proc.poll() is None:
        kids = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)


@contextlib.contextmanager
def started(argv: list[str], **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        stop(proc)


def settle_and_read(pid: int, settle: float) -> tuple[int, float]:
    """Idle RSS after ``settle`` seconds, and the CPU clock at the load's start."""
    time.sleep(settle)
    return status_kib(pid, "VmRSS"), cpu_seconds(pid)


# ---- ambassador ----------------------------------------------------------------------------

ECHO = textwrap.dedent(
    """
    import asyncio, sys
    async def echo(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
    async def main():
        servers = [await asyncio.start_server(echo, "127.0.0.1", int(p), backlog=1024)
                   for p in sys.argv[1:]]
        await asyncio.gather(*(s.serve_forever() for s in servers))
    asyncio.run(main())
    """
)


def ambassador_toml(listen: list[int], backends: list[int]) -> str:
    """Two listeners like base/ambassador.toml, every environment on the local backends."""
    out = ['drain_timeout = "1s"', 'dns_refresh = "5s"', ""]
    for name, port, backend in zip(("postgres", "redis"), listen, backends, strict=True):
        addr = f'["127.0.0.1:{backend}"]'
        out += [
            "[[listeners]]",
            f'name = "{name}"',
            f'listen = "127.0.0.1:{port}"',
            'protocol = "tcp"',
            'policy = "peak_ewma"' if name == "postgres" else 'policy = "least_connections"',
            "",
            "[listeners.health_check]",
            'type = "tcp"',
            'interval = "5s"',
            'timeout = "2s"',
            "",
            "[listeners.limits]",
            "max_connections = 200",
            'connect_timeout = "2s"',
            "",
            "[listeners.environments]",
            f"dev = {addr}",
            f"test = {addr}",
            f"prod = {addr}",
            "",
        ]
    return "\n".join(out)


async def push(ports: list[int], connections: int, seconds: float, chunk: int) -> int:
    """``connections`` clients spread over ``ports``, each writing ``chunk`` bytes and reading
    them back until ``seconds`` passed; returns the bytes echoed (proof the data went through).
    """
    payload = b"x" * chunk
    total = 0
    deadline = trio.current_time() + seconds

    async def client(port: int) -> None:
        nonlocal total
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            while trio.current_time() < deadline:
                await stream.send_all(payload)
                got = 0
                while got < chunk:
                    data = await stream.receive_some(65536)
                    if not data:
                        raise RuntimeError("the ambassador closed a connection under load")
                    got += len(data)
                total += got

    async with trio.open_nursery() as nursery:
        for i in range(connections):
            nursery.start_soon(client, ports[i % len(ports)])
    return total


def measure_ambassador(load: Load, tmp: Path) -> Footprint:
    backends = [free_port(), free_port()]
    listen = [free_port(), free_port()]
    admin = free_port()
    config = tmp / "ambassador.toml"
    config.write_text(ambassador_toml(listen, backends))
    switch = tmp / "environment"
    switch.write_text("dev\n")
    env = {**os.environ, "AMBASSADOR_ENV": "dev"}
    echo_argv = [sys.executable, "-c", ECHO, *map(str, backends)]
    with started(echo_argv) as _echo:
        for port in backends:
            wait_port(port)
        argv = [
            str(BIN / "ambassador"),
            "run",
            f"--config={config}",
            f"--env-file={switch}",
            f"--admin=127.0.0.1:{admin}",
            "--log-level=warning",
        ]
        with started(argv, env=env) as proc:
            wait_http(f"http://127.0.0.1:{admin}/healthz", proc)
            idle, cpu0 = settle_and_read(proc.pid, load.settle)
            t0 = time.monotonic()
            moved = trio.run(push, listen, load.connections, load.seconds, load.chunk)
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(proc.pid) - cpu0
            peak = peak_bytes(proc.pid, idle)
    if moved <= 0:
        raise RuntimeError("no data went through the ambassador")
    what = (
        f"{load.connections} connections over 2 listeners echoing {load.chunk // 1024} KiB "
        f"chunks for {load.seconds:g} s ({moved / MiB:.0f} MiB each way)"
    )
    return Footprint("ambassador", what, idle, peak, cpu, elapsed)


@dataclass(frozen=True)
class Scaling:
    """The ambassador's idle RSS against the size of its config (see the module doc)."""

    listeners: int
    endpoints: int
    rss_small_bytes: int  # 1 listener, 1 endpoint
    rss_listeners_bytes: int  # ``listeners`` listeners, 1 endpoint each
    rss_full_bytes: int  # ``listeners`` listeners, ``endpoints`` endpoints each

    @property
    def per_listener_bytes(self) -> float:
        return (self.rss_listeners_bytes - self.rss_small_bytes) / (self.listeners - 1)

    @property
    def per_endpoint_bytes(self) -> float:
        extra = self.listeners * (self.endpoints - 1)
        return (self.rss_full_bytes - self.rss_listeners_bytes) / extra


def scaling_toml(admin: int, listen: list[int], backends: list[int]) -> str:
    """One TCP listener per ``listen`` port, each over all ``backends``, TCP health checks."""
    eps = ", ".join(f'"127.0.0.1:{b}"' for b in backends)
    out = [f'admin = "127.0.0.1:{admin}"', 'env = "dev"', 'log_level = "warning"', ""]
    for i, port in enumerate(listen):
        out += [
            "[[listeners]]",
            f'name = "l{i}"',
            f'listen = "127.0.0.1:{port}"',
            'protocol = "tcp"',
            "[listeners.health_check]",
            'type = "tcp"',
            'interval = "5s"',
            'timeout = "2s"',
            "[listeners.environments]",
            f"dev = [{eps}]",
            "",
        ]
    return "\n".join(out)


def idle_rss(tmp: Path, name: str, listeners: int, backends: list[int], settle: float) -> int:
    """VmRSS of ``ambassador run`` with ``listeners`` listeners over ``backends``, idle."""
    admin = free_port()
    config = tmp / f"{name}.toml"
    config.write_text(scaling_toml(admin, [free_port() for _ in range(listeners)], backends))
    argv = [str(BIN / "ambassador"), "run", f"--config={config}"]
    with started(argv) as proc:
        wait_http(f"http://127.0.0.1:{admin}/healthz", proc)
        rss, _cpu = settle_and_read(proc.pid, settle)
    return rss


def measure_scaling(load: Load, tmp: Path) -> Scaling:
    backends = [free_port() for _ in range(load.endpoints)]
    with started([sys.executable, "-c", ECHO, *map(str, backends)]):
        for port in backends:
            wait_port(port)
        settle = load.scaling_settle
        return Scaling(
            listeners=load.listeners,
            endpoints=load.endpoints,
            rss_small_bytes=idle_rss(tmp, "small", 1, backends[:1], settle),
            rss_listeners_bytes=idle_rss(tmp, "listeners", load.listeners, backends[:1], settle),
            rss_full_bytes=idle_rss(tmp, "full", load.listeners, backends, settle),
        )


def scaling_table(sc: Scaling) -> str:
    n, m = sc.listeners, sc.endpoints
    return "\n".join(
        [
            "| ambassador config (TCP health checks on) | RSS idle |",
            "|---|---|",
            f"| 1 listener, 1 endpoint | {sc.rss_small_bytes / MiB:.1f} MiB |",
            f"| {n} listeners, 1 endpoint each | {sc.rss_listeners_bytes / MiB:.1f} MiB |",
            f"| {n} listeners, {m} endpoints each | {sc.rss_full_bytes / MiB:.1f} MiB |",
            f"| per listener | {sc.per_listener_bytes / 1024:.1f} KiB |",
            f"| per endpoint | {sc.per_endpoint_bytes / 1024:.1f} KiB |",
        ]
    )


# ---- adapter -------------------------------------------------------------------------------

APP = textwrap.dedent(
    """
    import os, sys, time
    go, n = sys.argv[1], int(sys.argv[2])
    while not os.path.exists(go):
        time.sleep(0.05)
    w = sys.stdout.write
    for i in range(n):
        w(f"2026-11-25T21:00:00.{i % 1000:03d}Z INFO request {i} served path=/api/items/{i}"
          f" status=200 duration_ms={i % 97}\\n")
    sys.stdout.flush()
    time.sleep(3600)
    """
)


def count_lines(fd: int, counter: list[int], done: threading.Event, want: int) -> None:
    """Reads the adapter's stdout (as a log collector would) and counts its records.

    os.read, not a buffered file's read(n): that would wait for n bytes and hide the tail.
    """
    while data := os.read(fd, 65536):
        counter[0] += data.count(b"\n")
        if counter[0] >= want:
            done.set()
    done.set()


def measure_adapter(load: Load, tmp: Path) -> Footprint:
    admin = free_port()
    go = tmp / "go"
    argv = [
        str(BIN / "adapter"),
        "run",
        f"--admin=127.0.0.1:{admin}",
        "--field=service.name=app",
        "--field=service.environment=dev",
        "--log-level=warning",
        "--",
        sys.executable,
        "-c",
        APP,
        str(go),
        str(load.lines),
    ]
    env = {**os.environ, "CONTAINER_NAME": "app", "POD_NAME": "app-0", "POD_NAMESPACE": "bench"}
    counter = [0]
    done = threading.Event()
    with started(argv, env=env, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        stdout_fd = proc.stdout.fileno()
        reader = threading.Thread(
            target=count_lines, args=(stdout_fd, counter, done, load.lines), daemon=True
        )
        reader.start()
        wait_http(f"http://127.0.0.1:{admin}/healthz", proc)
        idle, cpu0 = settle_and_read(proc.pid, load.settle)
        t0 = time.monotonic()
        go.touch()
        # The end of the load: the adapter read every line (its own counter), and its
        # records reached stdout (up to a short grace: see ``out`` in the table).
        deadline = time.monotonic() + 120
        while metric(admin, "adapter_lines_total") < load.lines:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the adapter read {metric(admin, 'adapter_lines_total')}")
            time.sleep(0.05)
        done.wait(2)
        elapsed = time.monotonic() - t0
        if counter[0] < load.lines * 0.9:
            raise RuntimeError(f"the adapter wrote {counter[0]} of {load.lines} records")
        cpu = cpu_seconds(proc.pid) - cpu0
        peak = peak_bytes(proc.pid, idle)
    what = (
        f"{load.lines:,} lines from the wrapped app to JSON records on stdout "
        f"({counter[0]:,} out when measured)"
    )
    return Footprint("adapter", what, idle, peak, cpu, elapsed)


# ---- watcher -------------------------------------------------------------------------------

PROBED_APP = textwrap.dedent(
    """
    import http.server, signal, sys
    port, reloads = int(sys.argv[1]), sys.argv[2]
    def reload(signum, frame):
        with open(reloads, "a") as f:
            f.write("reload\\n")
    signal.signal(signal.SIGHUP, reload)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


def configmap_update(volume: Path, n: int) -> None:
    """Write app.toml version ``n`` the way kubelet updates a ConfigMap volume: a new
    timestamped dir, then the ``..data`` symlink swapped by an atomic rename."""
    data = volume / f"..2026_11_25_21_00_{n:02d}.000000000"
    data.mkdir()
    (data / "app.toml").write_text(f'version = {n}\nlevel = "info"\n')
    tmp_link = volume / "..data_tmp"
    tmp_link.symlink_to(data.name)
    old = (volume / "..data").resolve() if (volume / "..data").exists() else None
    tmp_link.rename(volume / "..data")
    if not (volume / "app.toml").is_symlink():
        (volume / "app.toml").symlink_to("..data/app.toml")
    if old is not None:
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def reload_count(path: Path) -> int:
    return path.read_text().count("reload") if path.exists() else 0


def measure_watcher(load: Load, tmp: Path) -> Footprint:
    volume = tmp / "etc-app"
    volume.mkdir()
    configmap_update(volume, 0)
    app_port, admin = free_port(), free_port()
    reloads = tmp / "reloads"
    pid_file = tmp / "app.pid"
    with started([sys.executable, "-c", PROBED_APP, str(app_port), str(reloads)]) as app:
        wait_port(app_port)
        pid_file.write_text(f"{app.pid}\n")
        argv = [
            str(BIN / "watcher"),
            "run",
            f"--watch={volume}",
            "--signal=HUP",
            f"--pid-file={pid_file}",
            f"--probe=http://127.0.0.1:{app_port}/healthz",
            "--probe-period=0.2",
            "--debounce=0.2",
            f"--admin=127.0.0.1:{admin}",
            "--log-level=warning",
        ]
        with started(argv) as proc:
            wait_http(f"http://127.0.0.1:{admin}/healthz", proc)
            idle, cpu0 = settle_and_read(proc.pid, load.settle)
            t0 = time.monotonic()
            for n in range(1, load.changes + 1):
                configmap_update(volume, n)
                deadline = time.monotonic() + 15
                while reload_count(reloads) < n:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"change {n}: the watcher did not reload the app")
                    time.sleep(0.05)
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(proc.pid) - cpu0
            peak = peak_bytes(proc.pid, idle)
    what = f"{load.changes} ConfigMap-style changes, each a SIGHUP; probes every 0.2 s"
    return Footprint("watcher", what, idle, peak, cpu, elapsed)


# ---- report --------------------------------------------------------------------------------


def table(rows: list[Footprint]) -> str:
    out = [
        "| sidecar | RSS idle | RSS peak | CPU during load | load |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.sidecar} | {r.rss_idle_bytes / MiB:.1f} MiB | {r.rss_peak_bytes / MiB:.1f} MiB "
            f"| {r.cpu_seconds:.2f} s in {r.load_seconds:.1f} s | {r.load} |"
        )
    return "\n".join(out)


def round_up(value: float, step: float) -> float:
    return float(-(-value // step) * step)


def suggest(r: Footprint) -> dict[str, str]:
    """Base requests and limits from one sidecar's numbers, by the rule the README states.

    Memory: request = idle RSS rounded up to 8 MiB + 16 MiB margin (what it holds steadily,
    with room for a few buffers); limit = 2x the peak, rounded up to 16 MiB (a leak or a
    flood is OOM-killed and restarted by kubelet long before it hurts the app).
    CPU: the load's average use in cores, ``rate``; request = rate / 4 rounded up to 10m,
    at least 10m (the load is a burst, the steady state far below it); limit = 2x rate
    rounded up to 100m, at least 100m, at most 1 core (one Python thread does the work).
    """
    rate = r.cpu_seconds / r.load_seconds
    mem_req = round_up(r.rss_idle_bytes / MiB, 8) + 16
    mem_lim = round_up(2 * r.rss_peak_bytes / MiB, 16)
    cpu_req = max(10, round_up(rate / 4 * 1000, 10))
    cpu_lim = min(1000, max(100, round_up(2 * rate * 1000, 100)))
    return {
        "cpu request": f"{cpu_req:.0f}m",
        "cpu limit": f"{cpu_lim:.0f}m",
        "memory request": f"{mem_req:.0f}Mi",
        "memory limit": f"{mem_lim:.0f}Mi",
    }


def suggestions(rows: list[Footprint]) -> str:
    keys = ["cpu request", "cpu limit", "memory request", "memory limit"]
    out = ["| sidecar | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        s = suggest(r)
        out.append(f"| {r.sidecar} | " + " | ".join(s[k] for k in keys) + " |")
    return "\n".join(out)


def write_readme(path: Path, body: str) -> None:
    """Replace the text between the footprint markers (append the block when absent)."""
    text = path.read_text()
    block = f"{START}\n{body}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--smoke", action="store_true", help="seconds-long run (for the tests)")
    ap.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    ap.add_argument("--readme", type=Path, default=README, help="file with the markers")
    ap.add_argument("--no-readme", action="store_true", help="print only")
    ap.add_argument(
        "--no-scaling", action="store_true", help="skip the ambassador's RSS by config size"
    )
    args = ap.parse_args(argv)
    load = SMOKE if args.smoke else FULL
    with tempfile.TemporaryDirectory(prefix="footprint-") as d:
        tmp = Path(d)
        rows = []
        for name, fn in (
            ("ambassador", measure_ambassador),
            ("adapter", measure_adapter),
            ("watcher", measure_watcher),
        ):
            sub = tmp / name
            sub.mkdir()
            rows.append(fn(load, sub))
        scaling = None
        if not args.no_scaling:
            sub = tmp / "scaling"
            sub.mkdir()
            scaling = measure_scaling(load, sub)
    md = table(rows) + "\n\nWhat the rule in `suggest()` makes of them (base's values):\n\n"
    md += suggestions(rows)
    if scaling is not None:
        md += "\n\nThe ambassador's idle RSS by config size (one environment):\n\n"
        md += scaling_table(scaling)
    print(md)
    if args.json:
        data = [asdict(r) | {"suggested": suggest(r)} for r in rows]
        if scaling is not None:
            data[0]["scaling"] = asdict(scaling) | {
                "per_listener_bytes": scaling.per_listener_bytes,
                "per_endpoint_bytes": scaling.per_endpoint_bytes,
            }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    if not args.no_readme:
        cmd = "bench/footprint.py" + (" --smoke" if args.smoke else "")
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        body = (
            f"Measured {when} with `.venv/bin/python {cmd}` ({os.cpu_count()} CPUs, "
            f"Python {sys.version.split()[0]}); RSS peak is VmHWM, so it includes start-up.\n\n"
            + md
        )
        write_readme(args.readme, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
