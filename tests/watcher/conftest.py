"""Real parts for the watcher tests: an app that counts SIGHUPs, a reload HTTP server,
and a way to run ``.venv/bin/watcher`` as a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import free_port, stop_pid
from tests.support.wait import wait_until

HUP_COUNTER = Path(__file__).with_name("hup_counter.py")
WATCHER_BIN = Path(sys.executable).with_name("watcher")
# The stand-in app's argv[0]: what --process-name matches.
APP_NAME = "hupcounter-app"


# ---------------------------------------------------------------------------
# The app that counts SIGHUPs.


@dataclass
class HupApp:
    proc: subprocess.Popen[bytes]
    count_file: Path
    pid_file: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def hups(self) -> int:
        try:
            return int(self.count_file.read_text() or "0")
        except (OSError, ValueError):
            return 0


def start_hup_app(directory: Path) -> HupApp:
    count_file = directory / "hups"
    pid_file = directory / "app.pid"
    proc = subprocess.Popen(
        [APP_NAME, str(HUP_COUNTER), str(count_file), str(pid_file)],
        executable=sys.executable,
    )
    app = HupApp(proc, count_file, pid_file)
    wait_until(pid_file.exists)
    return app


@pytest.fixture
def hup_app(tmp_path: Path) -> Iterator[HupApp]:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    app = start_hup_app(app_dir)
    try:
        yield app
    finally:
        stop_pid(app.pid, proc=app.proc)


# ---------------------------------------------------------------------------
# A reload HTTP server that counts requests (and can fail the first N).


@dataclass
class ReloadServer:
    port: int
    fail_first: int = 0
    fail_status: int = 500
    healthy: bool = True
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reloads(self, path: str = "/-/reload") -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]


def _handler(state: ReloadServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path == "/healthz":
                status = 200 if state.healthy else 503
            else:
                with state.lock:
                    n = len([r for r in state.requests if r["path"] == self.path])
                    state.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": dict(self.headers.items()),
                            "body": body,
                        }
                    )
                status = state.fail_status if n < state.fail_first else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = do_PUT = _serve

    return Handler


@pytest.fixture
def reload_server() -> Iterator[ReloadServer]:
    state = ReloadServer(port=0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    state.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------
# The watcher as a real subprocess.


@dataclass
class WatcherProc:
    proc: subprocess.Popen[bytes]
    admin_port: int
    log_path: Path

    def admin_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}{path}", timeout=5
            ) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"message": line})
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs() if e.get("event") == name]


@pytest.fixture
def run_watcher(tmp_path: Path) -> Iterator[Callable[..., WatcherProc]]:
    """Start ``watcher run ARGS`` (admin on a free port); stopped by PID at the end."""
    started: list[WatcherProc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WatcherProc:
        port = free_port()
        log_path = tmp_path / f"watcher-{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(WATCHER_BIN), "run", "--admin", f"127.0.0.1:{port}", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        w = WatcherProc(proc, port, log_path)
        started.append(w)
        wait_until(lambda: proc.poll() is not None or w.events("started"), timeout=15)
        if proc.poll() is not None:
            raise AssertionError(f"watcher exited early: {log_path.read_text()}")
        return w

    yield start
    for w in started:
        stop_pid(w.proc.pid, sig=signal.SIGKILL, proc=w.proc)
