"""TLS origination through the real ambassador: psql speaks plaintext, the server only TLS.

The server is a real PostgreSQL with ``ssl = on`` and ``hostssl``-only access
(certificates from trustme, as in test_pgtls.py); a second, plain PostgreSQL
stands for dev. One config: ``prod`` requires TLS with ``verify-full``, ``dev``
stays plain, ``badca`` trusts the wrong CA and must be refused.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.postgres import PostgresCluster
from tests.support.procs import free_port, require_binary

from .e2e import AMBASSADOR, AmbassadorProc, http, metrics, sample, wait_until
from .test_pgtls import server_ca, tls_postgres, write_ca  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

SSL_OF_MY_SESSION = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def psql(port: int, sql: str, *, sslmode: str = "disable") -> subprocess.CompletedProcess[str]:
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode={sslmode}"
    return subprocess.run(
        [require_binary("psql"), "-X", "-A", "-t", "-d", dsn, "-c", sql],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


@pytest.fixture
def procs() -> Iterator[list[AmbassadorProc]]:
    started: list[AmbassadorProc] = []
    yield started
    for proc in started:
        proc.stop()


def test_postgres_tls_in_prod_plain_in_dev_and_wrong_ca_refused(
    tls_postgres: PostgresCluster,  # noqa: F811 - the imported fixture
    server_ca: trustme.CA,  # noqa: F811
    pg_factory: Callable[[str], PostgresCluster],
    procs: list[AmbassadorProc],
    tmp_path: Path,
) -> None:
    plain = pg_factory("plaindev")
    ca_file = write_ca(server_ca, tmp_path / "ca.pem")
    wrong_ca = write_ca(trustme.CA(), tmp_path / "wrong-ca.pem")
    port, admin = free_port(), free_port()
    config = tmp_path / "ambassador.toml"
    config.write_text(
        f"""
env = "prod"
admin = "127.0.0.1:{admin}"

[[listeners]]
name = "pg"
listen = "127.0.0.1:{port}"
protocol = "postgres"
health_check = {{ type = "tcp", interval = "1s", timeout = "0.5s" }}
[listeners.environments]
dev = ["127.0.0.1:{plain.port}"]
[listeners.environments.prod]
endpoints = ["127.0.0.1:{tls_postgres.port}"]
tls = {{ sslmode = "verify-full", ca_file = "{ca_file}" }}
[listeners.environments.badca]
endpoints = ["127.0.0.1:{tls_postgres.port}"]
tls = {{ sslmode = "verify-full", ca_file = "{wrong_ca}" }}
"""
    )
    # `ambassador check` shows which environment speaks TLS, and how.
    check = subprocess.run(
        [AMBASSADOR, "check", "--config", str(config)], capture_output=True, text=True, check=True
    )
    assert f"    dev -> 127.0.0.1:{plain.port}\n" in check.stdout
    assert (
        f"  * prod -> 127.0.0.1:{tls_postgres.port} [tls sslmode=verify-full ca={ca_file}]"
        in check.stdout
    )
    amb = AmbassadorProc(["--config", str(config)], tmp_path)
    procs.append(amb)
    amb.wait_listening()

    # prod: psql without TLS; the server (hostssl only) sees a TLS session.
    done = psql(port, SSL_OF_MY_SESSION)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "t"
    # The app's own SSLRequest (sslmode=prefer) is answered 'N': still plaintext locally.
    prefer = psql(port, "SHOW cluster_name", sslmode="prefer")
    assert prefer.returncode == 0, prefer.stderr
    assert prefer.stdout.strip() == "pgtls"

    # dev in the same config stays plain.
    assert http("PUT", f"http://127.0.0.1:{admin}/env", b"dev")[0] == 200
    dev = psql(port, f"SELECT current_setting('cluster_name') || ' ' || ({SSL_OF_MY_SESSION})")
    assert dev.returncode == 0, dev.stderr
    assert dev.stdout.strip() == "plaindev false"

    # The wrong CA: refused (the app sees the connection close), logged, counted.
    assert http("PUT", f"http://127.0.0.1:{admin}/env", b"badca")[0] == 200
    refused = psql(port, "SELECT 1")
    assert refused.returncode != 0
    failures = wait_until(lambda: amb.events("connect failed"), what="connect failed log")
    assert all(f["env"] == "badca" for f in failures)
    assert "certificate verify failed" in failures[0]["reason"]
    values = metrics(admin)
    assert (
        sample(
            values,
            "ambassador_connections_total",
            listener="pg",
            env="badca",
            outcome="connect_failed",
        )
        == 1
    )
    line = [x for x in amb.access() if x.get("env") == "badca"][-1]
    assert line["outcome"] == "connect_failed"

    # Back to prod: TLS again, nothing left over from the failure.
    assert http("PUT", f"http://127.0.0.1:{admin}/env", b"prod")[0] == 200
    again = psql(port, SSL_OF_MY_SESSION)
    assert again.stdout.strip() == "t", again.stderr

    def closed(env: str) -> float:
        return sample(
            metrics(admin), "ambassador_connections_total", listener="pg", env=env, outcome="closed"
        )

    # (The last session is counted when its relay ends, just after psql exits.)
    wait_until(lambda: closed("prod") == 3, what="three prod sessions counted")
    assert closed("dev") == 1


# --------------------------------------------------------------------------- HTTP and TCP over TLS


class HttpsUpstream:
    """A threaded HTTPS server with a trustme certificate for 127.0.0.1 that names itself."""

    def __init__(self, ca: trustme.CA) -> None:
        import ssl
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                body = f"tls {self.request.version()} {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_http_listener_originates_tls_and_refuses_a_wrong_ca(
    procs: list[AmbassadorProc], tmp_path: Path
) -> None:
    ca = trustme.CA()
    upstream = HttpsUpstream(ca)
    try:
        ca_file = write_ca(ca, tmp_path / "ca.pem")
        wrong_ca = write_ca(trustme.CA(), tmp_path / "wrong.pem")
        port, admin = free_port(), free_port()
        config = tmp_path / "ambassador.toml"
        config.write_text(
            f"""
env = "prod"
admin = "127.0.0.1:{admin}"
[[listeners]]
name = "api"
listen = "127.0.0.1:{port}"
protocol = "http"
health_check = {{ type = "none" }}
tls = {{ ca_file = "{ca_file}" }}
http = {{ retry = {{ max_retries = 0 }} }}
[listeners.environments]
prod = ["127.0.0.1:{upstream.port}"]
badca = {{ endpoints = ["127.0.0.1:{upstream.port}"], tls = {{ ca_file = "{wrong_ca}" }} }}
"""
        )
        amb = AmbassadorProc(["--config", str(config)], tmp_path)
        procs.append(amb)
        amb.wait_listening()
        curl = require_binary("curl")
        ok = subprocess.run(
            [curl, "-s", f"http://127.0.0.1:{port}/x"], capture_output=True, text=True, check=False
        )
        assert ok.stdout.startswith("tls TLSv1.") and ok.stdout.endswith(" /x"), ok.stdout
        assert http("PUT", f"http://127.0.0.1:{admin}/env", b"badca")[0] == 200
        bad = subprocess.run(
            [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/y"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert bad.stdout == "503"
        line = wait_until(lambda: [x for x in amb.access() if x.get("path") == "/y"])[0]
        assert line["outcome"] == "connect_failed"
        assert "certificate verify failed" in line["reason"]
        assert (
            sample(
                metrics(admin),
                "ambassador_http_upstream_failures_total",
                listener="api",
                env="badca",
                endpoint=f"127.0.0.1:{upstream.port}",
                reason="connect",
            )
            == 1
        )
    finally:
        upstream.close()


def test_tcp_listener_originates_tls(procs: list[AmbassadorProc], tmp_path: Path) -> None:
    """A generic TCP listener with ``tls``: the app's plaintext bytes arrive over TLS."""
    ca = trustme.CA()
    upstream = HttpsUpstream(ca)
    try:
        ca_file = write_ca(ca, tmp_path / "ca.pem")
        port = free_port()
        config = tmp_path / "ambassador.toml"
        config.write_text(
            f"""
[[listeners]]
name = "raw"
listen = "127.0.0.1:{port}"
health_check = {{ type = "none" }}
tls = {{ ca_file = "{ca_file}", server_name = "127.0.0.1" }}
[listeners.environments]
prod = ["127.0.0.1:{upstream.port}"]
"""
        )
        amb = AmbassadorProc(["--config", str(config)], tmp_path)
        procs.append(amb)
        amb.wait_listening()
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b" /raw"), reply
        assert b"tls TLSv1." in reply
        line = amb.wait_access(1)[0]
        assert line["outcome"] == "closed" and line["endpoint"] == f"127.0.0.1:{upstream.port}"
    finally:
        upstream.close()
