"""Helpers of the ambassador's end-to-end tests: the real binary as a subprocess, real peers.

``AmbassadorProc`` runs ``.venv/bin/ambassador run ...`` and reads back what it
wrote (JSON lines on stderr) and what it serves (/metrics); ``EchoServer`` is a
plain TCP backend written here, with an exact, scriptable behaviour: it echoes
each chunk, and on EOF sends a trailer and half-closes, so a test can see that
a half-close crossed the proxy in both directions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sidecar_common.metrics import parse_text
from tests.support.procs import free_port, stop_pid

AMBASSADOR = str(Path(sys.executable).parent / "ambassador")
TRAILER = b"<eof seen>"
RESET = b"RESET"


def wait_until(predicate: Callable[[], object], *, timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)


class AmbassadorProc:
    """The real ambassador started with ``args``; its stderr goes to a file we parse."""

    def __init__(self, args: Sequence[str], workdir: Path, *, env: dict[str, str] | None = None):
        self.args = list(args)
        self.log_path = workdir / f"ambassador-{free_port()}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AMBASSADOR_")}
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [AMBASSADOR, "run", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )

    def wait_listening(self, count: int = 1, *, timeout: float = 20.0) -> None:
        """Wait for ``count`` "listening" events (all listeners bound and accepting)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ambassador exited {self.proc.returncode}: {self.log_path.read_text()}"
                )
            return len(self.events("listening")) >= count

        wait_until(ready, timeout=timeout, what="ambassador listening")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                out.append({"message": "<not json>", "raw": raw})
        return out

    def events(self, message: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("message") == message]

    def access(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("logger") == "ambassador.access"]

    def wait_access(self, count: int, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            lines = self.access()
            return lines if len(lines) >= count else None

        result: list[dict[str, Any]] = wait_until(
            enough, timeout=timeout, what=f"{count} access-log lines"
        )
        return result

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_pid(self.proc.pid, sig=signal.SIGKILL, timeout=10.0, proc=self.proc)
        self._log.close()


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metrics(admin_port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = http("GET", f"http://127.0.0.1:{admin_port}/metrics")
    assert status == 200
    return parse_text(body.decode())


def sample(
    values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value (0.0 when absent, as Prometheus treats a missing counter)."""
    return values.get((name, frozenset(labels.items())), 0.0)


class EchoServer:
    """A threaded TCP backend: echoes chunks; on EOF sends ``TRAILER`` and half-closes.

    A chunk containing ``RESET`` makes it reset that connection (SO_LINGER 0)
    instead of answering. (Triggered by content, not by "the next connection":
    the ambassador's TCP health checks connect too.)
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = False
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    conn.sendall(TRAILER)
                    conn.shutdown(socket.SHUT_WR)
                    return
                if RESET in data:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()
                    return
                conn.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


def recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)
