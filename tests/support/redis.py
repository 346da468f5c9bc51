"""Real Redis servers for tests: redis-server on 127.0.0.1 and a free port, stopped by PID.

Each server gets a ``name`` stored under the key ``server:name`` so that a test
going through the ambassador can ask ``GET server:name`` and know which backend
it reached, the way the PostgreSQL fixtures use ``cluster_name``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .procs import free_port, require_binary, stop_pid, wait_for_port


@dataclass
class RedisServer:
    """One redis-server process started by a test."""

    name: str
    port: int
    workdir: Path
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self, *, timeout: float = 15.0) -> None:
        if self.pid is not None:
            return
        server = require_binary("redis-server")
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                server,
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for_port(self.host, self.port, timeout=timeout, proc=self.proc)
        deadline = time.monotonic() + timeout
        while self.cli("PING", check=False) != "PONG":
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis {self.name} on port {self.port} does not answer PING")
            time.sleep(0.05)
        self.cli("SET", "server:name", self.name)

    def stop(self) -> None:
        """Stop by the PID we started (SIGTERM, then SIGKILL after a timeout)."""
        if self.proc is None:
            return
        stop_pid(self.proc.pid, timeout=10.0, proc=self.proc)
        self.proc = None

    def cli(self, *args: str, port: int | None = None, check: bool = True) -> str:
        """Run the real redis-cli against this server (or another ``port``, e.g. a proxy)."""
        return redis_cli(*args, port=port or self.port, host=self.host, check=check)


def redis_cli(*args: str, port: int, host: str = "127.0.0.1", check: bool = True) -> str:
    """``redis-cli -h host -p port args...``; its output, stripped."""
    res = subprocess.run(
        [require_binary("redis-cli"), "-h", host, "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout.strip()


@pytest.fixture
def redis_factory() -> Iterator[Callable[[str], RedisServer]]:
    """Start Redis servers by name for one test; each is stopped by PID afterwards."""
    require_binary("redis-server")
    require_binary("redis-cli")
    root = Path(tempfile.mkdtemp(prefix="sidecars-redis-"))
    started: list[RedisServer] = []

    def make(name: str) -> RedisServer:
        workdir = root / name
        workdir.mkdir()
        server = RedisServer(name=name, port=free_port(), workdir=workdir)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()
    shutil.rmtree(root, ignore_errors=True)
