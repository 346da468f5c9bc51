"""A stand-in application that knows nothing about sidecars.

It only ever connects to localhost (its database port), prints log lines in the
mixed formats real apps print (JSON, logfmt, Python logging, a traceback), and
re-reads its config file on SIGHUP. The sidecars around it do the rest.

Environment:
  APP_DB=127.0.0.1:5432   where it believes its database is (the ambassador)
  APP_DB_KIND=line|postgres   `line`: the demo's built-in backends (send WHO, read a line);
                              `postgres`: ask `SHOW cluster_name` with psql
  APP_CONFIG=path         a config file (`greeting = ...`), re-read on SIGHUP
  APP_PID_FILE=path       where it writes its pid (for the watcher's --pid-file)
  APP_INTERVAL=0.3        seconds between queries
  APP_HTTP=127.0.0.1:8080 optional: serve GET /healthz there (what the watcher probes)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

log = logging.getLogger("demo.app")
reload_requested = False
stop_requested = False


def on_hup(signum: int, frame: FrameType | None) -> None:
    global reload_requested
    reload_requested = True


def on_term(signum: int, frame: FrameType | None) -> None:
    global stop_requested
    stop_requested = True


def read_config(path: str) -> str:
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition("=")
                if key.strip() == "greeting":
                    return value.strip().strip('"')
    except OSError:
        pass
    return "hello"


class _Health(BaseHTTPRequestHandler):
    """GET /healthz answers 200 while the app runs: a liveness endpoint to probe."""

    def do_GET(self) -> None:
        status, body = (200, b"ok\n") if self.path == "/healthz" else (404, b"not found\n")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # probes every second would drown the app's own lines


def serve_health(address: str) -> None:
    host, _, port = address.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), _Health)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()


def ask_backend(db: str, kind: str) -> str:
    host, _, port = db.rpartition(":")
    if kind == "postgres":
        res = subprocess.run(
            [
                "psql",
                "-X",
                "-Atc",
                "SHOW cluster_name",
                "-h",
                host,
                "-p",
                port,
                "-U",
                "postgres",
                "postgres",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if res.returncode != 0:
            raise ConnectionError(res.stderr.strip() or "psql failed")
        return res.stdout.strip()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"WHO\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
    answer = data.decode().strip()
    if not answer:
        raise ConnectionError("backend closed the connection")
    return answer


def main() -> int:
    global reload_requested
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s",
    )
    db = os.environ.get("APP_DB", "127.0.0.1:5432")
    kind = os.environ.get("APP_DB_KIND", "line")
    config = os.environ.get("APP_CONFIG", "")
    interval = float(os.environ.get("APP_INTERVAL", "0.3"))
    if pid_file := os.environ.get("APP_PID_FILE"):
        with open(pid_file, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    if http := os.environ.get("APP_HTTP"):
        serve_health(http)
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    greeting = read_config(config)
    log.info("starting, greeting=%s, database at %s", greeting, db)
    n = 0
    while not stop_requested:
        if reload_requested:
            reload_requested = False
            greeting = read_config(config)
            log.warning("config reloaded, greeting=%s", greeting)
        n += 1
        try:
            backend = ask_backend(db, kind)
            print(
                json.dumps(
                    {
                        "level": "info",
                        "msg": "query ok",
                        "backend": backend,
                        "greeting": greeting,
                        "n": n,
                    }
                ),
                flush=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            print(f'level=error msg="query failed" error="{exc}" n={n}', flush=True)
        if n % 10 == 0:
            try:
                raise ValueError(f"demo error number {n // 10}")
            except ValueError:
                log.exception("something went wrong (on purpose)")
        time.sleep(interval)
    log.info("stopping after %d queries", n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
