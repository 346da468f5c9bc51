"""A real etcd-server on 127.0.0.1 for the tests (Debian package ``etcd-server``).

Each ``etcd`` fixture starts its own single-member cluster on free client and
peer ports with its data directory in ``tmp_path``, waits until the JSON
gateway answers, and stops it by PID. ``EtcdServer.stop()``/``start()`` let a
test take etcd down and bring it back on the same port and data (etcd down at
start or later must be survived by the watcher).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .procs import free_port, stop_pid

__all__ = ["EtcdServer", "b64", "etcd", "etcd_argv", "free_port", "range_value"]

INSTALL_HINT = "etcd binary not found: apt-get install etcd-server"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def range_value(answer: dict[str, Any]) -> str | None:
    """The first value in a ``/v3/kv/range`` answer of the JSON gateway, or None if absent."""
    kvs = answer.get("kvs", [])
    if not kvs:
        return None
    return base64.b64decode(kvs[0].get("value", "")).decode()


def etcd_argv(binary: str, name: str, data_dir: Path, client_url: str, peer_url: str) -> list[str]:
    """A single-member etcd serving clients at ``client_url`` (the tests' and the pod's)."""
    return [
        binary,
        "--name", name, "--data-dir", str(data_dir),
        "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"{name}={peer_url}", "--initial-cluster-state", "new",
        "--log-level", "warn", "--logger", "zap",
    ]  # fmt: skip


class EtcdServer:
    """One etcd process; ``url`` is the client URL (``http://127.0.0.1:PORT``)."""

    def __init__(self, binary: str, data_dir: Path, log_path: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        args = etcd_argv(
            self.binary, "test", self.data_dir, self.url, f"http://127.0.0.1:{self.peer_port}"
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.call("/v3/kv/range", {"key": b64("probe")}, timeout=1.0)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become ready in {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        """Stop by PID: SIGTERM, then SIGKILL if it lingers."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            stop_pid(proc.pid, proc=proc)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    # Blocking helpers for assertions from tests (urllib; loopback only).

    def call(self, path: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result

    def get(self, key: str) -> str | None:
        """The value at ``key`` as text, or None if absent."""
        return range_value(self.call("/v3/kv/range", {"key": b64(key)}))

    def get_prefix(self, prefix: str) -> dict[str, str]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        kvs = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)}).get("kvs", [])
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in kvs
        }

    def put(self, key: str, value: str) -> None:
        self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def lease_ttl(self, lease_id: int | str) -> int:
        """Remaining TTL of a lease, -1 if it does not exist."""
        out = self.call("/v3/lease/timetolive", {"ID": str(lease_id)})
        return int(out.get("TTL", -1))


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd for one test; ``etcd.url`` is its client URL."""
    binary = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if binary is None:
        pytest.fail(INSTALL_HINT)
    server = EtcdServer(binary, tmp_path / "etcd-data", tmp_path / "etcd.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
