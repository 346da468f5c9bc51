"""GET /clusters through the real binary: one process, and the supervisor of two workers."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

from tests.ambassador.e2e import AmbassadorProc, EchoServer, free_ports, http, wait_until


def clusters(admin: int) -> dict[str, Any]:
    status, body = http("GET", f"http://127.0.0.1:{admin}/clusters")
    assert status == 200, body
    report: dict[str, Any] = json.loads(body)
    return report


def write(tmp_path: Path, admin: int, port: int, endpoints: list[str]) -> Path:
    path = tmp_path / "ambassador.toml"
    path.write_text(
        f"""
env = "prod"
admin = "127.0.0.1:{admin}"
[[listeners]]
name = "db"
listen = "127.0.0.1:{port}"
health_check = {{ type = "tcp", interval = "0.2s", timeout = "0.1s" }}
[listeners.environments]
prod = {json.dumps(endpoints)}
"""
    )
    return path


def test_clusters_shows_health_connections_and_latency_per_endpoint(tmp_path: Path) -> None:
    echo = EchoServer()
    admin, port, dead = free_ports(3)  # nothing listens on ``dead``
    live_ep, dead_ep = f"127.0.0.1:{echo.port}", f"127.0.0.1:{dead}"
    amb = AmbassadorProc(["--config", str(write(tmp_path, admin, port, [live_ep, dead_ep]))],
                         tmp_path)  # fmt: skip
    try:
        amb.wait_listening(1)

        def by_address() -> dict[str, dict[str, Any]] | None:
            (listener,) = clusters(admin)["listeners"]
            eps = {ep["address"]: ep for ep in listener["environments"]["prod"]["endpoints"]}
            return eps if not eps[dead_ep]["healthy"] else None

        wait_until(by_address, what="the dead endpoint found unhealthy by its health check")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
            held.sendall(b"ping")
            assert held.recv(64) == b"ping"
            report = clusters(admin)
            (listener,) = report["listeners"]
            assert report["env"] == "prod" and listener["environments"]["prod"]["current"]
            assert (listener["name"], listener["protocol"], listener["open_connections"]) == (
                "db",
                "tcp",
                1,
            )
            eps = {ep["address"]: ep for ep in listener["environments"]["prod"]["endpoints"]}
            live, down = eps[live_ep], eps[dead_ep]
            assert (live["usable"], live["active_connections"], live["connects_total"]) == (
                True,
                1,
                1,
            )
            assert 0 < live["latency_ewma_seconds"] < 1.0
            assert (down["usable"], down["healthy"], down["active_connections"]) == (
                False,
                False,
                0,
            )
    finally:
        amb.stop()
        echo.close()


def test_the_supervisor_shows_every_workers_report(tmp_path: Path) -> None:
    echo = EchoServer()
    admin, port = free_ports(2)
    path = write(tmp_path, admin, port, [f"127.0.0.1:{echo.port}"])
    amb = AmbassadorProc(["--workers", "2", "--config", str(path)], tmp_path)
    try:

        def ready() -> bool:
            assert amb.proc.poll() is None, amb.log_path.read_text()
            try:
                return http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout=30, what="both workers ready")
        report = clusters(admin)
        assert report["env"] == "prod"
        workers = report["workers"]
        assert [w["worker"] for w in workers] == [0, 1]
        assert len({w["pid"] for w in workers}) == 2
        for w in workers:
            (listener,) = w["report"]["listeners"]
            assert listener["name"] == "db" and listener["listen"] == f"127.0.0.1:{port}"
            (ep,) = listener["environments"]["prod"]["endpoints"]
            assert ep["address"] == f"127.0.0.1:{echo.port}"
        amb.signal(signal.SIGTERM)  # the workers drain with their parent
        assert amb.wait() == 0
    finally:
        amb.stop()
        echo.close()
