"""``--workers``: the metrics merge as a table, then 2 real worker processes end to end.

The end-to-end test runs the real binary, ``ambassador run --workers 2 --config``
(which execs the lean process, which starts the supervisor and its workers),
against a real echo backend, and checks what a user sees: connections spread
over both workers, the parent's /metrics is the exact sum, an env switch
reaches every worker, a killed worker is replaced, SIGTERM exits 0. The lean
start (``exec_run``) is checked on the same binary: same PID, no typer or
pydantic resident, start-up errors still one line and exit 2. The stand-alone
entry ``python -m ambassador.workers`` (the benchmark's) keeps a smoke test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ambassador.config import LimitsConfig, parse_config
from ambassador.workers import merge_expositions, share_limits, worker_config
from sidecar_common.metrics import Registry, parse_exposition, parse_text
from tests.ambassador.e2e import (
    AMBASSADOR,
    TRAILER,
    EchoServer,
    http,
    metrics,
    recv_all,
    sample,
    wait_until,
)
from tests.support.lean import assert_lean_process
from tests.support.procs import free_port, stop_pid

# --------------------------------------------------------------------------- merge (pure)


def _worker_registry(conns: int, healthy: float, connect: list[float]) -> str:
    reg = Registry()
    reg.counter("ambassador_connections_total", "Conns.", ("listener", "outcome")).labels(
        listener="pg", outcome="closed"
    ).inc(conns)
    reg.gauge("ambassador_active_connections", "Active.", ("listener",)).labels(listener="pg").set(
        conns
    )
    reg.gauge("ambassador_endpoint_healthy", "Healthy.", ("endpoint",)).labels(
        endpoint="10.0.0.1:5432"
    ).set(healthy)
    hist = reg.histogram("ambassador_connect_duration_seconds", "Conn.", buckets=(0.001, 0.01))
    for v in connect:
        hist.observe(v)
    reg.counter("admin_http_requests_total", "Admin.", ("path", "code")).labels(
        path="/metrics", code="200"
    ).inc(7)
    return reg.render()


def test_merge_sums_counters_gauges_and_histograms() -> None:
    a = _worker_registry(3, 1.0, [0.0005, 0.005])
    b = _worker_registry(4, 1.0, [0.05])
    merged = parse_exposition(merge_expositions([a, b], skip={"admin_http_requests_total"}))
    s = merged.samples
    assert (
        s[("ambassador_connections_total", frozenset({("listener", "pg"), ("outcome", "closed")}))]
        == 7
    )
    assert s[("ambassador_active_connections", frozenset({("listener", "pg")}))] == 7
    assert s[("ambassador_endpoint_healthy", frozenset({("endpoint", "10.0.0.1:5432")}))] == 1
    bucket = "ambassador_connect_duration_seconds_bucket"
    assert s[(bucket, frozenset({("le", "0.001")}))] == 1
    assert s[(bucket, frozenset({("le", "0.01")}))] == 2
    assert s[(bucket, frozenset({("le", "+Inf")}))] == 3
    assert s[("ambassador_connect_duration_seconds_count", frozenset())] == 3
    assert s[("ambassador_connect_duration_seconds_sum", frozenset())] == pytest.approx(0.0555)
    assert merged.types["ambassador_connect_duration_seconds"] == "histogram"
    assert merged.helps["ambassador_connections_total"] == "Conns."
    assert not any(name.startswith("admin_http") for name, _ in s)


def test_merge_health_is_the_minimum_over_workers() -> None:
    merged = parse_text(
        merge_expositions([_worker_registry(1, 1.0, []), _worker_registry(1, 0.0, [])])
    )
    assert merged[("ambassador_endpoint_healthy", frozenset({("endpoint", "10.0.0.1:5432")}))] == 0


def test_merge_is_exact_for_large_counts_and_skips_bad_text() -> None:
    big = 2**53 - 1
    text = f'# TYPE x_bytes_total counter\nx_bytes_total{{l="a\\"b"}} {big}\n'
    merged = merge_expositions([text, "garbage {{{", text])
    assert f'x_bytes_total{{l="a\\"b"}} {2 * big}' in merged
    assert merge_expositions([]) == ""


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("total", "workers", "parts"),
    [
        (10, 2, [5, 5]),
        (7, 3, [3, 2, 2]),  # the first total % workers get one more: the sum is kept
        (2, 4, [1, 1, 1, 1]),  # never below 1 connection per worker
        (None, 3, [None, None, None]),  # unlimited stays unlimited
    ],
)
def test_limits_are_shared_out_so_the_workers_together_keep_them(
    total: int | None, workers: int, parts: list[int | None]
) -> None:
    limits = LimitsConfig(
        max_connections=total,
        max_connections_per_endpoint=total,
        max_pending=5,
        pending_timeout=2.5,
        connect_timeout=0.5,
    )
    shared = [share_limits(limits, workers, i) for i in range(workers)]
    assert [x.max_connections for x in shared] == parts
    assert [x.max_connections_per_endpoint for x in shared] == parts
    assert sum(x.max_pending for x in shared) == 5  # pending may be 0 per worker
    # Per-connection settings are not shares.
    assert {(x.pending_timeout, x.connect_timeout) for x in shared} == {(2.5, 0.5)}


def test_worker_config_shares_every_listeners_limits() -> None:
    cfg = parse_config(
        {
            "listeners": [
                {"name": "a", "listen": "127.0.0.1:1", "environments": {"dev": ["127.0.0.1:2"]},
                 "limits": {"max_connections": 9}},
                {"name": "b", "listen": "127.0.0.1:3", "environments": {"dev": ["127.0.0.1:4"]}},
            ]
        }
    )  # fmt: skip
    parts = [worker_config(cfg, 2, i) for i in range(2)]
    assert [[lst.limits.max_connections for lst in p.listeners] for p in parts] == [
        [5, None],
        [4, None],
    ]
    assert all(p.environments == cfg.environments for p in parts)


# --------------------------------------------------------------------------- end to end


class Workers:
    """``ambassador run --workers N --config FILE`` (the real binary); stderr to a file."""

    def __init__(self, tmp: Path, backend_port: int, workers: int = 2, extra: str = "") -> None:
        self.port = free_port()
        self.admin = free_port()
        self.config = config = tmp / "ambassador.toml"
        config.write_text(
            f"""
admin = "127.0.0.1:{self.admin}"
env = "blue"
drain_timeout = "5s"
[[listeners]]
name = "app"
listen = "127.0.0.1:{self.port}"
[listeners.environments.blue]
endpoints = ["127.0.0.1:{backend_port}"]
[listeners.environments.green]
endpoints = ["127.0.0.1:{backend_port}"]
{extra}"""
        )
        self.log_path = tmp / "workers.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMBASSADOR_")}
        self.proc = subprocess.Popen(
            [AMBASSADOR, "run", "--workers", str(workers), "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip

    def events(self, message: str) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text().splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if line.get("message") == message:
                out.append(line)
        return out

    def live_workers(self) -> dict[int, dict[str, Any]]:
        """worker index -> its latest "worker started" event."""
        latest: dict[int, dict[str, Any]] = {}
        for ev in self.events("worker started"):
            latest[ev["worker"]] = ev
        return latest

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited {self.proc.returncode}: {self.log_path.read_text()}")
        try:
            return http("GET", f"http://127.0.0.1:{self.admin}/readyz")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_pid(self.proc.pid, sig=signal.SIGKILL, proc=self.proc)
        for ev in self.live_workers().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(ev["pid"], signal.SIGKILL)
        self._log.close()


def echo_once(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_two_workers_end_to_end(tmp_path: Path) -> None:
    backend = EchoServer()
    w = Workers(tmp_path, backend.port)
    try:
        wait_until(w.ready, timeout=30, what="both workers ready")
        workers = w.live_workers()
        assert sorted(workers) == [0, 1]

        # Connections spread over both workers (SO_REUSEPORT hashes the 4-tuple).
        n, payload = 40, b"x" * 1000
        for _ in range(n):
            assert echo_once(w.port, payload) == payload + TRAILER

        # A connection is counted once both directions ended and the upstream
        # closed, which may be just after the client saw EOF: wait for the count.
        def counts() -> list[float] | None:
            got = [
                sample(
                    metrics(ev["admin_port"]),
                    "ambassador_connections_total",
                    listener="app",
                    env="blue",
                    outcome="closed",
                )
                for ev in workers.values()
            ]
            return got if sum(got) >= n else None

        per_worker = wait_until(counts, what="every connection counted")
        assert all(c > 0 for c in per_worker), per_worker
        assert sum(per_worker) == n

        # The parent's /metrics is the exact sum, with its own families once.
        def merged_done() -> dict[Any, float] | None:
            m = metrics(w.admin)
            done = sample(
                m, "ambassador_connections_total", listener="app", env="blue", outcome="closed"
            )
            return m if done == n else None

        m = wait_until(merged_done, what="merged connection count")
        assert sample(m, "ambassador_received_bytes_total", listener="app", env="blue") == n * len(
            payload
        )
        assert sample(m, "ambassador_sent_bytes_total", listener="app", env="blue") == n * (
            len(payload) + len(TRAILER)
        )
        assert sample(m, "ambassador_workers") == 2
        assert sample(m, "ambassador_current_env", env="blue") == 1

        # An env switch through the parent reaches every worker, counted once.
        status, body = http("PUT", f"http://127.0.0.1:{w.admin}/env", b"green")
        assert status == 200, body
        for ev in workers.values():
            status, body = http("GET", f"http://127.0.0.1:{ev['admin_port']}/env")
            assert json.loads(body)["env"] == "green"
        m = metrics(w.admin)
        assert sample(m, "ambassador_env_switches_total", result="switched", source="admin") == 1
        assert echo_once(w.port, b"after switch") == b"after switch" + TRAILER

        # A worker that dies is replaced on the same socket.
        victim = workers[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: w.live_workers()[0]["pid"] != victim, timeout=20, what="worker restarted"
        )
        wait_until(w.ready, timeout=30, what="ready again")
        m = metrics(w.admin)
        assert sample(m, "ambassador_worker_restarts_total") == 1
        assert sample(m, "ambassador_workers") == 2
        # The new worker starts in the current environment.
        status, body = http("GET", f"http://127.0.0.1:{w.live_workers()[0]['admin_port']}/env")
        assert json.loads(body)["env"] == "green"
        for _ in range(10):
            assert echo_once(w.port, b"still here") == b"still here" + TRAILER

        # A changed config file: the parent switches (source "config") and replaces
        # both workers; the merged counters keep what the old workers counted.
        assert http("PUT", f"http://127.0.0.1:{w.admin}/env", b"blue")[0] == 200
        before = metrics(w.admin)
        bytes_before = {
            env: sample(before, "ambassador_received_bytes_total", listener="app", env=env)
            for env in ("blue", "green")
        }
        old_pids = {ev["pid"] for ev in w.live_workers().values()}
        w.config.write_text(
            w.config.read_text().replace('env = "blue"', 'env = "green"\ndns_refresh = "7s"')
        )

        def replaced() -> bool:
            pids = {ev["pid"] for ev in w.live_workers().values()}
            return len(pids) == 2 and not pids & old_pids and w.ready()

        wait_until(replaced, timeout=30, what="both workers replaced")

        def counts_kept() -> dict[Any, float] | None:
            m = metrics(w.admin)
            got = {
                env: sample(m, "ambassador_received_bytes_total", listener="app", env=env)
                for env in ("blue", "green")
            }
            return m if got == bytes_before else None

        m = wait_until(counts_kept, timeout=15, what="counters kept across the replacement")
        assert sample(m, "ambassador_env_switches_total", result="switched", source="config") == 1
        for ev in w.live_workers().values():
            status, body = http("GET", f"http://127.0.0.1:{ev['admin_port']}/env")
            assert json.loads(body)["env"] == "green"
        assert echo_once(w.port, b"new config") == b"new config" + TRAILER

        # SIGTERM drains everything and exits 0; no worker outlives the parent.
        pids = [ev["pid"] for ev in w.live_workers().values()]
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=30) == 0
        wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=10, what="workers gone")
        assert w.events("workers drained")
    finally:
        w.stop()
        backend.close()


def test_workers_follow_listeners_added_moved_and_removed_by_a_reload(tmp_path: Path) -> None:
    backend = EchoServer()
    w = Workers(tmp_path, backend.port)
    try:
        wait_until(w.ready, timeout=30, what="both workers ready")
        original = w.config.read_text()
        moved_port, extra_port = free_port(), free_port()
        extra = (
            f'[[listeners]]\nname = "extra"\nlisten = "127.0.0.1:{extra_port}"\n'
            f'[listeners.environments]\nblue = ["127.0.0.1:{backend.port}"]\n'
        )

        def replace_workers(text: str) -> None:
            old_pids = {ev["pid"] for ev in w.live_workers().values()}
            w.config.write_text(text)

            def replaced() -> bool:
                pids = {ev["pid"] for ev in w.live_workers().values()}
                return len(pids) == 2 and not pids & old_pids and w.ready()

            wait_until(replaced, timeout=30, what="both workers replaced")

        # "app" moves, "extra" is added: bound by the parent, served by new workers.
        replace_workers(original.replace(f":{w.port}", f":{moved_port}") + extra)
        assert [ev["listener"] for ev in w.events("listener moved")] == ["app"]
        assert [ev["listener"] for ev in w.events("listener added")] == ["extra"]
        for port in (moved_port, extra_port):
            for _ in range(6):  # both workers (SO_REUSEPORT spreads by 4-tuple)
                assert echo_once(port, b"hi") == b"hi" + TRAILER

        def closed(port: int) -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_until(lambda: closed(w.port), what="the old address closed")

        # "extra" is removed: its sockets close once the successors are ready, and the
        # line says so only then (a client connecting after it is refused, not reset).
        replace_workers(original.replace(f":{w.port}", f":{moved_port}"))
        removed = "listener removed; draining its connections"
        wait_until(lambda: w.events(removed), timeout=20, what="the removal said")
        assert closed(extra_port)
        assert [ev["listener"] for ev in w.events(removed)] == ["extra"]
        assert echo_once(moved_port, b"kept") == b"kept" + TRAILER

        # A listener that cannot be bound: said, and the running config stays.
        pids = {ev["pid"] for ev in w.live_workers().values()}
        busy = extra.replace(f":{extra_port}", f":{backend.port}")
        w.config.write_text(original.replace(f":{w.port}", f":{moved_port}") + busy)
        wait_until(lambda: w.events("cannot listen; listener change not applied"), timeout=20)
        assert {ev["pid"] for ev in w.live_workers().values()} == pids
        assert echo_once(moved_port, b"alive") == b"alive" + TRAILER
    finally:
        w.stop()
        backend.close()


def test_two_workers_together_keep_the_listeners_connection_limit(tmp_path: Path) -> None:
    backend = EchoServer()
    w = Workers(tmp_path, backend.port, extra="[listeners.limits]\nmax_connections = 2\n")
    held: list[socket.socket] = []
    try:
        wait_until(w.ready, timeout=30, what="both workers ready")
        admitted = 0
        for i in range(6):
            client = socket.create_connection(("127.0.0.1", w.port), timeout=5)
            held.append(client)  # kept open: each admitted one holds its slot
            client.sendall(b"hello %d" % i)
            try:
                answer = client.recv(64)
            except ConnectionResetError:
                answer = b""
            admitted += answer == b"hello %d" % i
        # One slot per worker: however the kernel spread the six, at most two got in.
        assert 1 <= admitted <= 2

        def rejections() -> float:
            m = metrics(w.admin)
            return sum(
                value
                for (name, _labels), value in m.items()
                if name == "ambassador_circuit_breaker_rejections_total"
            )

        wait_until(lambda: rejections() == 6 - admitted, what="the refusals counted")
    finally:
        for client in held:
            client.close()
        w.stop()
        backend.close()


@pytest.mark.parametrize(
    "argv",
    [
        [AMBASSADOR, "run", "--workers", "0"],
        [sys.executable, "-m", "ambassador.workers", "--workers", "0", "run"],
    ],
    ids=["cli", "stand-alone"],
)
def test_bad_workers_flag_is_one_line(tmp_path: Path, argv: list[str]) -> None:
    config = tmp_path / "a.toml"
    config.write_text('[[listeners]]\nname = "a"\nlisten = "127.0.0.1:1"\n')
    res = subprocess.run(
        [*argv, "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "--workers" in res.stderr


# --------------------------------------------------------------------------- lean exec


def _one_listener_config(tmp: Path, port: int, admin: int, backend_port: int) -> Path:
    config = tmp / "lean.toml"
    config.write_text(
        f"""
admin = "127.0.0.1:{admin}"
[[listeners]]
name = "app"
listen = "127.0.0.1:{port}"
[listeners.environments.prod]
endpoints = ["127.0.0.1:{backend_port}"]
"""
    )
    return config


def test_ambassador_run_serves_from_a_lean_process_with_the_same_pid(tmp_path: Path) -> None:
    backend = EchoServer()
    port, admin = free_port(), free_port()
    config = _one_listener_config(tmp_path, port, admin, backend.port)
    log_path = tmp_path / "lean.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [AMBASSADOR, "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=log_file, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:

            def ready() -> bool:
                assert proc.poll() is None, log_path.read_text()
                try:
                    return http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 200
                except OSError:
                    return False

            wait_until(ready, timeout=30, what="lean ambassador ready")
            # Same PID, new program: the CLI process became the lean one.
            # The CLI's imports did not come along (pydantic's native core is not mapped),
            # nor asyncpg (no PostgreSQL check configured).
            assert_lean_process(proc.pid, "ambassador.serve")
            assert "/asyncpg/" not in Path(f"/proc/{proc.pid}/maps").read_text()
            assert echo_once(port, b"lean") == b"lean" + TRAILER

            def counted() -> dict[Any, float] | None:
                v = metrics(admin)
                done = sample(v, "ambassador_received_bytes_total", listener="app", env="prod")
                return v if done == 4 else None

            m = wait_until(counted, what="bytes counted")
            assert sample(m, "ambassador_sent_bytes_total", listener="app", env="prod") == 4 + len(
                TRAILER
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                stop_pid(proc.pid, sig=signal.SIGKILL, proc=proc)
            backend.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_busy_address_is_one_line_exit_2(tmp_path: Path, workers: str) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    config = _one_listener_config(tmp_path, port, free_port(), 1)
    try:
        res = subprocess.run(
            [AMBASSADOR, "run", "--workers", workers, "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        busy.close()
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("ambassador: error: ")
    assert res.stderr.strip().count("\n") == 0
    assert f"127.0.0.1:{port}" in res.stderr


def test_bad_relay_setting_is_one_line_exit_2(tmp_path: Path) -> None:
    config = _one_listener_config(tmp_path, free_port(), free_port(), 1)
    res = subprocess.run(
        [AMBASSADOR, "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "AMBASSADOR_RELAY": "zero-copy"},
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0
    assert "AMBASSADOR_RELAY" in res.stderr
