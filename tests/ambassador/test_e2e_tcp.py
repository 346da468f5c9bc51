"""The real ambassador between real TCP peers: half-close, resets, limits, admin, drain, CLI.

The backend is ``EchoServer`` (written in e2e.py); clients are plain sockets and
curl. Every test reads back the access log and /metrics and checks exact byte
counts against what the client and backend actually exchanged.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import free_port, require_binary

from .e2e import (
    AMBASSADOR,
    RESET,
    TRAILER,
    AmbassadorProc,
    EchoServer,
    http,
    metrics,
    recv_all,
    sample,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def procs() -> Iterator[list[AmbassadorProc]]:
    started: list[AmbassadorProc] = []
    yield started
    for proc in started:
        proc.stop()


def start(
    procs: list[AmbassadorProc], tmp_path: Path, *args: str, listeners: int = 1
) -> AmbassadorProc:
    proc = AmbassadorProc(args, tmp_path)
    procs.append(proc)
    proc.wait_listening(listeners)
    return proc


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ambassador.toml"
    path.write_text(text)
    return path


def test_half_close_both_ways_with_exact_byte_counts(
    echo: EchoServer, procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    amb = start(
        procs,
        tmp_path,
        "--listen", f"127.0.0.1:{port}",
        "--backend", f"dev=127.0.0.1:{echo.port}",
        "--admin", f"127.0.0.1:{admin}",
    )  # fmt: skip
    payload = b"x" * 200_000 + b"end"
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(payload)
        # Our half-close must reach the backend, and its reply (sent after it
        # saw EOF) must still reach us: the other direction stays open.
        client.shutdown(socket.SHUT_WR)
        received = recv_all(client)
    assert received == payload + TRAILER
    (line,) = amb.wait_access(1)
    assert line["outcome"] == "closed"
    assert line["bytes_in"] == len(payload)
    assert line["bytes_out"] == len(payload) + len(TRAILER)
    assert line["listener"] == "default" and line["env"] == "dev"
    assert line["endpoint"] == f"127.0.0.1:{echo.port}"
    assert line["client"].startswith("127.0.0.1:")
    for key in ("connect_time", "duration", "time"):
        assert key in line
    values = metrics(admin)
    labels = {"listener": "default", "env": "dev"}
    assert sample(values, "ambassador_received_bytes_total", **labels) == len(payload)
    assert sample(values, "ambassador_sent_bytes_total", **labels) == len(payload) + len(TRAILER)
    assert sample(values, "ambassador_connections_total", **labels, outcome="closed") == 1
    assert sample(values, "ambassador_connect_duration_seconds_count", **labels) == 1
    assert sample(values, "ambassador_active_connections", **labels) == 0
    assert sample(values, "ambassador_current_env", env="dev") == 1
    endpoint = f"127.0.0.1:{echo.port}"
    assert sample(values, "ambassador_endpoint_healthy", **labels, endpoint=endpoint) == 1


def test_resets_are_propagated_both_ways(
    echo: EchoServer, procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    port = free_port()
    amb = start(
        procs, tmp_path, "--listen", f"127.0.0.1:{port}", "--backend", f"dev=127.0.0.1:{echo.port}"
    )
    # Backend resets: the client must see a reset, not a clean EOF.
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(RESET)
        client.settimeout(10)
        with pytest.raises(ConnectionResetError):
            while client.recv(100):
                pass
    # Client resets: logged as such.
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"hello")
        assert client.recv(100) == b"hello"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    lines = amb.wait_access(2)
    assert [line["outcome"] for line in lines] == ["upstream_reset", "client_reset"]
    assert (lines[1]["bytes_in"], lines[1]["bytes_out"]) == (5, 5)


def test_circuit_breaker_rejects_over_the_limit_and_queues_pending(
    echo: EchoServer, procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    config = write_config(
        tmp_path,
        f"""
admin = "127.0.0.1:{admin}"
[[listeners]]
name = "limited"
listen = "127.0.0.1:{port}"
[listeners.environments]
dev = ["127.0.0.1:{echo.port}"]
[listeners.limits]
max_connections = 2
max_pending = 1
pending_timeout = "20s"
[listeners.health_check]
type = "none"
""",
    )
    amb = start(procs, tmp_path, "--config", str(config))
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    for sock in held:
        sock.sendall(b"hi")
        assert sock.recv(10) == b"hi"
    # The third waits in the pending queue (accepted by the kernel, not relayed yet).
    queued = socket.create_connection(("127.0.0.1", port))
    queued.sendall(b"queued")
    wait_until(
        lambda: sample(metrics(admin), "ambassador_pending_connections", listener="limited") == 1,
        what="the third client queued",
    )
    assert echo.connections == 2
    # The fourth finds the queue full: closed at once, counted.
    with socket.create_connection(("127.0.0.1", port)) as rejected:
        assert recv_all(rejected) == b""
    wait_until(
        lambda: sample(metrics(admin), "ambassador_circuit_breaker_rejections_total",
                       listener="limited", scope="listener") == 1,
        what="a listener breaker rejection",
    )  # fmt: skip
    # A slot frees: the queued client is served.
    held[0].shutdown(socket.SHUT_WR)
    assert recv_all(held[0]) == TRAILER
    held[0].close()
    assert queued.recv(100) == b"queued"
    queued.close()
    held[1].close()
    values = metrics(admin)
    assert (
        sample(
            values,
            "ambassador_connections_total",
            listener="limited",
            env="dev",
            outcome="rejected",
        )
        == 1
    )
    rejected_lines = [line for line in amb.access() if line["outcome"] == "rejected"]
    assert len(rejected_lines) == 1


def test_no_usable_endpoint_fails_fast(procs: list[AmbassadorProc], tmp_path: Path) -> None:
    port, dead1, dead2, admin = free_port(), free_port(), free_port(), free_port()
    amb = start(
        procs,
        tmp_path,
        "--listen", f"127.0.0.1:{port}",
        "--backend", f"dev=127.0.0.1:{dead1},127.0.0.1:{dead2}",
        "--health-check", "none",
        "--admin", f"127.0.0.1:{admin}",
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.settimeout(10)
        with pytest.raises(ConnectionResetError):
            client.recv(100)
    (line,) = amb.wait_access(1)
    # Both endpoints were tried (bounded retry over distinct endpoints), then the client closed.
    assert (line["outcome"], line["attempts"]) == ("connect_failed", 2)
    assert (
        http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 200
    )  # no active check, no ejection yet (5 failures needed)
    assert (
        sample(
            metrics(admin),
            "ambassador_connections_total",
            listener="default",
            env="dev",
            outcome="connect_failed",
        )
        == 1
    )


def test_allow_list_denies_other_clients(
    echo: EchoServer, procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        f"""
[[listeners]]
name = "private"
listen = "127.0.0.1:{port}"
allow = ["10.0.0.0/8"]
[listeners.environments]
dev = ["127.0.0.1:{echo.port}"]
[listeners.health_check]
type = "none"
""",
    )
    amb = start(procs, tmp_path, "--config", str(config))
    with socket.create_connection(("127.0.0.1", port)) as client:
        assert recv_all(client) == b""
    (line,) = amb.wait_access(1)
    assert line["outcome"] == "denied"
    assert echo.connections == 0


def test_admin_env_get_and_put_with_curl(
    echo: EchoServer, procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    curl = require_binary("curl")
    other = EchoServer()
    try:
        port, admin = free_port(), free_port()
        amb = start(
            procs,
            tmp_path,
            "--listen", f"127.0.0.1:{port}",
            "--backend", f"dev=127.0.0.1:{echo.port}",
            "--backend", f"prod=127.0.0.1:{other.port}",
            "--admin", f"127.0.0.1:{admin}",
            "--health-check", "none",
        )  # fmt: skip
        url = f"http://127.0.0.1:{admin}/env"

        def curl_call(*args: str) -> tuple[int, dict[str, object]]:
            res = subprocess.run(
                [curl, "-s", "-w", "\n%{http_code}", *args, url],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            body, _, code = res.stdout.rpartition("\n")
            return int(code), json.loads(body)

        # No --env and two environments: none selected, connections refused, not ready.
        assert curl_call() == (200, {"env": None, "environments": ["dev", "prod"], "generation": 0})
        assert http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 503
        with socket.create_connection(("127.0.0.1", port)) as client:
            assert recv_all(client) == b""
        code, body = curl_call("-X", "PUT", "--data", "prod")
        assert (code, body["env"], body["previous"]) == (200, "prod", None)
        code, body = curl_call("-X", "PUT", "-H", "Content-Type: application/json",
                               "--data", '{"env": "dev"}')  # fmt: skip
        assert (code, body["env"], body["previous"]) == (200, "dev", "prod")
        code, body = curl_call("-X", "PUT", "--data", "staging")
        assert code == 422
        assert body["error"] == "unknown environment 'staging' (choices: dev, prod)"
        assert body["env"] == "dev"
        code, body = curl_call("-X", "PUT", "--data", "")
        assert code == 400
        assert http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 200
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == TRAILER
        assert echo.connections == 1 and other.connections == 0
        values = metrics(admin)
        assert (
            sample(values, "ambassador_env_switches_total", result="switched", source="admin") == 2
        )
        assert (
            sample(values, "ambassador_env_switches_total", result="refused", source="admin") == 1
        )
        refused = amb.events("environment switch refused")
        assert refused[0]["requested"] == "staging" and refused[0]["env"] == "dev"
        assert [line["outcome"] for line in amb.wait_access(2)] == ["no_env", "closed"]
    finally:
        other.close()


def test_sigterm_stops_accepting_lets_connections_finish_and_exits_0(
    echo: EchoServer, procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    port = free_port()
    amb = start(
        procs,
        tmp_path,
        "--listen", f"127.0.0.1:{port}",
        "--backend", f"dev=127.0.0.1:{echo.port}",
        "--drain-timeout", "20",
    )  # fmt: skip
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(b"before")
    assert client.recv(100) == b"before"
    amb.signal(signal.SIGTERM)
    wait_until(lambda: amb.events("stopped accepting; draining connections"), what="drain start")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    # The open connection keeps working during the drain.
    client.sendall(b"during drain")
    assert client.recv(100) == b"during drain"
    assert amb.proc.poll() is None
    client.shutdown(socket.SHUT_WR)
    assert recv_all(client) == TRAILER
    client.close()
    assert amb.wait() == 0
    (line,) = amb.access()
    assert line["outcome"] == "closed"
    assert line["bytes_in"] == len(b"beforeduring drain")


def test_drain_timeout_closes_lingering_connections_and_exits_0(
    echo: EchoServer, procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    port = free_port()
    amb = start(
        procs,
        tmp_path,
        "--listen", f"127.0.0.1:{port}",
        "--backend", f"dev=127.0.0.1:{echo.port}",
        "--drain-timeout", "0.5",
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"idle")
        assert client.recv(100) == b"idle"
        amb.signal(signal.SIGTERM)
        assert amb.wait() == 0
    (line,) = amb.access()
    assert line["outcome"] == "shutdown"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AMBASSADOR, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--bogus"], "ambassador: error: No such option: --bogus"),
        (
            ["run", "--listen", "127.0.0.1:1", "--backend", "dev"],
            "ambassador: error: invalid value for --backend: 'dev' "
            "(expected ENV=HOST:PORT[,HOST:PORT...])",
        ),
        (
            ["run", "--listen", "0.0.0.0:1", "--backend", "dev=127.0.0.1:2"],
            "ambassador: error: invalid value for --listen: '0.0.0.0:1' "
            "(expected a loopback address, or --bind-public)",
        ),
        (
            ["run", "--listen", "127.0.0.1:1", "--backend", "dev=127.0.0.1:2", "--env", "prod"],
            "ambassador: error: invalid value for --env: 'prod' (expected one of dev)",
        ),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], message: str) -> None:
    res = run_cli(*args)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [message]


def test_busy_listen_address_exits_2_with_one_line(echo: EchoServer) -> None:
    res = run_cli("run", "--listen", f"127.0.0.1:{echo.port}", "--backend", "dev=127.0.0.1:2")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"ambassador: error: invalid value for --listen: '127.0.0.1:{echo.port}' "
        "(expected an address to listen on; Address already in use)"
    ]


def test_check_prints_routes_and_rejects_bad_config(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        """
env = "prod"
[[listeners]]
name = "pg"
listen = "127.0.0.1:5432"
protocol = "postgres"
[listeners.environments]
dev = ["127.0.0.1:6001"]
prod = ["db-0:5432", "db-1:5432"]
"""
    )
    res = run_cli("check", "--config", str(good))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "environments: dev, prod",
        "current: prod (from start)",
        "listener pg: 127.0.0.1:5432 protocol=postgres policy=peak_ewma health=tcp",
        "    dev -> 127.0.0.1:6001",
        "  * prod -> db-0:5432, db-1:5432",
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('"db-1:5432"', '"db-1"'))
    res = run_cli("check", "--config", str(bad))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "ambassador: error: invalid value for listeners[0].environments.prod[1]: 'db-1' "
        "(expected host:port, [ipv6]:port or :port with a port 0-65535)"
    ]


def test_switch_drain_deadline_closes_old_connections_and_idle_timeout_closes_silent_ones(
    echo: EchoServer, procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    other = EchoServer()
    try:
        port, idle_port, admin = free_port(), free_port(), free_port()
        config = write_config(
            tmp_path,
            f"""
env = "dev"
admin = "127.0.0.1:{admin}"
switch_drain_timeout = "300ms"
[[listeners]]
name = "main"
listen = "127.0.0.1:{port}"
[listeners.environments]
dev = ["127.0.0.1:{echo.port}"]
prod = ["127.0.0.1:{other.port}"]
[[listeners]]
name = "idle"
listen = "127.0.0.1:{idle_port}"
[listeners.environments]
dev = ["127.0.0.1:{echo.port}"]
prod = ["127.0.0.1:{other.port}"]
[listeners.limits]
idle_timeout = "400ms"
""",
        )
        amb = start(procs, tmp_path, "--config", str(config), listeners=2)
        old = socket.create_connection(("127.0.0.1", port))
        old.sendall(b"old")
        assert old.recv(10) == b"old"
        assert http("PUT", f"http://127.0.0.1:{admin}/env", b"prod")[0] == 200
        # The connection made before the switch keeps its backend until the drain deadline...
        old.sendall(b"still dev")
        assert old.recv(100) == b"still dev"
        # ...then it is closed (reset: it did not end on its own).
        with pytest.raises(ConnectionResetError):
            recv_all(old)
        old.close()
        with socket.create_connection(("127.0.0.1", idle_port)) as idle:
            idle.sendall(b"zzz")
            assert idle.recv(10) == b"zzz"
            # Silent for longer than idle_timeout: the ambassador closes both sides.
            assert recv_all(idle) == b""
        lines = amb.wait_access(2)
        by_listener = {line["listener"]: line for line in lines}
        assert by_listener["main"]["outcome"] == "drained"
        assert by_listener["main"]["env"] == "dev"
        assert by_listener["main"]["bytes_in"] == len(b"oldstill dev")
        assert by_listener["idle"]["outcome"] == "idle_timeout"
        assert by_listener["idle"]["env"] == "prod"
        assert (by_listener["idle"]["bytes_in"], by_listener["idle"]["bytes_out"]) == (3, 3)
    finally:
        other.close()
