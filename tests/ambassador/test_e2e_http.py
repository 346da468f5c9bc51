"""The real ambassador's HTTP listener (``protocol = "http"``) between curl/wrk and real upstreams.

Upstreams: ``Upstream`` (a threaded HTTP/1.1 keep-alive server written here, which
records every request it sees with the client port of the connection it came on)
and a real nginx. Each test reads back what the upstream saw, the access log and
/metrics, and checks them against what curl sent and got.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import free_port, require_binary, stop_pid, wait_for_port

from .e2e import AmbassadorProc, http, metrics, sample, wait_until

pytestmark = pytest.mark.slow

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Upstream:
    """A keep-alive HTTP/1.1 upstream named ``name``; ``/flaky`` fails its first request (503)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[dict[str, Any]] = []
        self.flaky_calls = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._answer(200, b"ok")
                    return
                owner.seen.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "client_port": self.client_address[1],
                    }
                )
                if self.path == "/flaky":
                    owner.flaky_calls += 1
                    if owner.flaky_calls == 1:
                        self._answer(503, b"try again")
                        return
                self._answer(200, f"{owner.name} {self.path}".encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        return [r for r in list(self.seen) if path is None or r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstreams() -> Iterator[dict[str, Upstream]]:
    servers = {name: Upstream(name) for name in ("dev", "prod")}
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture
def procs() -> Iterator[list[AmbassadorProc]]:
    started: list[AmbassadorProc] = []
    yield started
    for proc in started:
        proc.stop()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("curl"), "-s", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` the way a Secret update does: a new file renamed over the old."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_http_listener_end_to_end(
    upstreams: dict[str, Upstream], procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    token = tmp_path / "authorization"
    token.write_text("Bearer one\n")
    config = tmp_path / "ambassador.toml"
    config.write_text(
        f"""
env = "dev"
admin = "127.0.0.1:{admin}"

[[listeners]]
name = "api"
listen = "127.0.0.1:{port}"
protocol = "http"
health_check = {{ type = "http", path = "/healthz", interval = "0.5s", timeout = "0.4s" }}
[listeners.http]
inject_headers = {{ Authorization = "{token}" }}
retry = {{ max_retries = 2, backoff_initial = "10ms", backoff_max = "20ms" }}
[listeners.environments]
dev = ["127.0.0.1:{upstreams["dev"].port}"]
prod = ["127.0.0.1:{upstreams["prod"].port}"]
"""
    )
    amb = AmbassadorProc(["--config", str(config)], tmp_path)
    procs.append(amb)
    amb.wait_listening()
    base = f"http://127.0.0.1:{port}"
    dev = upstreams["dev"]

    # Two requests on one client connection (curl reuses it), the first with a
    # traceparent to continue, the second without one (a new trace starts).
    done = curl(
        "-v", "-H", "Authorization: Bearer from-the-app", "-H", f"traceparent: {PARENT}",
        f"{base}/a", "--next", "-v", f"{base}/b",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "dev /adev /b"
    assert "Re-using existing" in done.stderr  # keep-alive towards the app
    a, b = dev.requests("/a")[0], dev.requests("/b")[0]
    # Keep-alive towards the upstream: both requests came on one pooled connection.
    assert a["client_port"] == b["client_port"]
    # The credential is the ambassador's (read from the file), never the app's.
    assert a["headers"]["authorization"] == "Bearer one"
    assert b["headers"]["authorization"] == "Bearer one"
    # traceparent continued: same trace, a new span of ours; or started when absent.
    version, trace_id, span_id, flags = a["headers"]["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id != "00f067aa0ba902b7" and re.fullmatch(r"[0-9a-f]{16}", span_id)
    started = b["headers"]["traceparent"].split("-")
    assert started[1] != TRACE_ID and re.fullmatch(r"[0-9a-f]{32}", started[1])
    # A request id was added, sent upstream, echoed to the app.
    request_ids = re.findall(r"(?im)^< x-request-id: (\S+)", done.stderr)
    assert request_ids == [a["headers"]["x-request-id"], b["headers"]["x-request-id"]]
    assert len(set(request_ids)) == 2

    # One access-log line per request, with the ids the upstream saw.
    lines = [line for line in amb.wait_access(2) if line["message"] == "request"]
    by_path = {line["path"]: line for line in lines}
    assert by_path["/a"]["request_id"] == request_ids[0]
    assert by_path["/a"]["trace_id"] == TRACE_ID
    assert by_path["/b"]["trace_id"] == started[1]
    for line in lines:
        assert line["listener"] == "api" and line["env"] == "dev"
        assert line["method"] == "GET" and line["status"] == 200 and line["outcome"] == "ok"
        assert line["upstream"] == f"127.0.0.1:{dev.port}" and line["attempts"] == 1
        assert line["bytes_out"] == len("dev /a")

    # The Secret rotates: the next requests carry the new value (re-read within ~1 s).
    write_atomically(token, "Bearer two\n")

    def rotated() -> bool:
        curl(f"{base}/rotated")
        return bool(dev.requests("/rotated")[-1]["headers"]["authorization"] == "Bearer two")

    wait_until(rotated, timeout=10, what="the rotated credential upstream")

    # A retry: the upstream fails the first attempt with 503, the app sees 200.
    flaky = curl("-i", f"{base}/flaky")
    assert flaky.stdout.startswith("HTTP/1.1 200"), flaky.stdout
    assert flaky.stdout.endswith("dev /flaky")
    assert len(dev.requests("/flaky")) == 2
    flaky_line = wait_until(
        lambda: [x for x in amb.access() if x.get("path") == "/flaky"], what="flaky log line"
    )[0]
    assert flaky_line["attempts"] == 2 and flaky_line["status"] == 200
    assert "status 503" in flaky_line["reason"]

    # The environment switch moves the next requests (same client code, same port).
    code, body = http("PUT", f"http://127.0.0.1:{admin}/env", b"prod")
    assert code == 200, body
    moved = curl(f"{base}/after-switch")
    assert moved.stdout == "prod /after-switch"
    assert upstreams["prod"].requests("/after-switch")
    assert not dev.requests("/after-switch")

    # The client side's bytes, heads included, land in the listener's byte
    # counters once the connection ends (exact: one raw connection alone).
    def byte_totals() -> tuple[float, float]:
        now = metrics(admin)
        return tuple(  # type: ignore[return-value]
            sample(now, name, listener="api", env="prod")
            for name in ("ambassador_received_bytes_total", "ambassador_sent_bytes_total")
        )

    before = byte_totals()
    request = b"GET /raw HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(request)
        response = b""
        while chunk := raw.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"prod /raw")
    expected = (before[0] + len(request), before[1] + len(response))
    wait_until(lambda: byte_totals() == expected, what=f"byte counters at {expected}")

    values = metrics(admin)
    dev_2xx = sample(
        values,
        "ambassador_http_requests_total",
        listener="api",
        env="dev",
        method="GET",
        code_class="2xx",
    )
    rotated_count = len(dev.requests("/rotated"))
    assert dev_2xx == 2 + rotated_count + 1  # /a, /b, the /rotated polls, /flaky
    assert (
        sample(
            values,
            "ambassador_http_requests_total",
            listener="api",
            env="prod",
            method="GET",
            code_class="2xx",
        )
        == 2  # /after-switch, /raw
    )
    assert sample(values, "ambassador_http_retries_total", listener="api", env="dev") == 1
    assert (
        sample(
            values,
            "ambassador_http_upstream_failures_total",
            listener="api",
            env="dev",
            endpoint=f"127.0.0.1:{dev.port}",
            reason="5xx",
        )
        == 1
    )
    assert sample(values, "ambassador_env_switches_total", result="switched", source="admin") == 1

    # SIGTERM: idle keep-alive clients closed, exit 0.
    amb.signal(signal.SIGTERM)
    assert amb.wait() == 0


def test_http_no_usable_endpoint_is_503_json(
    upstreams: dict[str, Upstream], procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    port, admin, dead = free_port(), free_port(), free_port()
    config = tmp_path / "ambassador.toml"
    config.write_text(
        f"""
env = "dev"
admin = "127.0.0.1:{admin}"
[[listeners]]
name = "api"
listen = "127.0.0.1:{port}"
protocol = "http"
health_check = {{ type = "tcp", interval = "0.3s", timeout = "0.2s" }}
[listeners.environments]
dev = ["127.0.0.1:{dead}"]
prod = ["127.0.0.1:{upstreams["prod"].port}"]
"""
    )
    amb = AmbassadorProc(["--config", str(config)], tmp_path)
    procs.append(amb)
    amb.wait_listening()
    # The only dev endpoint refuses: the health check marks it down at once.
    wait_until(lambda: http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 503, what="not ready")
    done = curl("-i", f"http://127.0.0.1:{port}/x")
    head, _, body = done.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 503"), done.stdout
    assert "content-type: application/json" in head.lower()
    doc = json.loads(body)
    assert doc["status"] == 503 and doc["error"] == "no healthy upstream"
    assert re.search(rf"(?im)^x-request-id: {re.escape(doc['request_id'])}\s*$", head)
    line = amb.wait_access(1)[-1]
    assert (line["status"], line["outcome"], line["request_id"]) == (
        503,
        "no_endpoint",
        doc["request_id"],
    )
    values = metrics(admin)
    assert (
        sample(
            values,
            "ambassador_http_requests_total",
            listener="api",
            env="dev",
            method="GET",
            code_class="5xx",
        )
        == 1
    )
    # Switching to an environment with a live endpoint serves at once.
    assert http("PUT", f"http://127.0.0.1:{admin}/env", b"prod")[0] == 200
    assert curl(f"http://127.0.0.1:{port}/y").stdout == "prod /y"


# --------------------------------------------------------------------------- nginx and wrk

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port};
    location = /status {{ stub_status; }}
    location / {{ return 200 "nginx\\n"; }}
  }}
}}
"""


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[int]:
    binary = require_binary("nginx", search=["/usr/sbin"])
    directory = tmp_path / "nginx"
    directory.mkdir()
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, port=port))
    proc = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield port
    finally:
        stop_pid(proc.pid, proc=proc)


def accepted(nginx_port: int) -> int:
    """nginx's count of accepted connections (stub_status)."""
    code, body = http("GET", f"http://127.0.0.1:{nginx_port}/status")
    assert code == 200
    return int(body.decode().splitlines()[2].split()[0])


def test_wrk_through_the_http_listener_reuses_upstream_connections(
    nginx: int, procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    """Under concurrent keep-alive load every request succeeds on a few pooled connections."""
    wrk = require_binary("wrk")
    port, admin = free_port(), free_port()
    amb = AmbassadorProc(
        [
            "--listen", f"127.0.0.1:{port}", "--protocol", "http", "--health-check", "none",
            "--backend", f"dev=127.0.0.1:{nginx}", "--admin", f"127.0.0.1:{admin}",
            "--log-level", "warning",
        ],
        tmp_path,
    )  # fmt: skip
    procs.append(amb)
    wait_for_port("127.0.0.1", port, proc=amb.proc)
    before = accepted(nginx)
    out = subprocess.run(
        [wrk, "-t1", "-c8", "-d1s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert total > 0
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    # The pool: 8 concurrent clients need at most 8 upstream connections, not one per request.
    opened = accepted(nginx) - before - 1  # minus the status request itself
    assert 1 <= opened <= 8, (opened, total)
    values = metrics(admin)
    served = sample(
        values,
        "ambassador_http_requests_total",
        listener="default",
        env="dev",
        method="GET",
        code_class="2xx",
    )
    # wrk counts the responses it read; a few in flight when it stopped were served too.
    assert total <= served <= total + 8
    assert (
        sample(
            values,
            "ambassador_http_requests_total",
            listener="default",
            env="dev",
            method="GET",
            code_class="5xx",
        )
        == 0
    )
