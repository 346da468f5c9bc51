"""Starting and stopping real server processes for tests: free ports, PIDs, binaries.

Every server a test needs is a real one, bound to 127.0.0.1 on a free port and
stopped by the PID we started, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

#: Debian package that provides each server binary, for the failure message.
INSTALL_HINTS = {
    "postgres": "postgresql",
    "initdb": "postgresql",
    "psql": "postgresql-client",
    "pgbench": "postgresql-contrib",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "nginx": "nginx-light",
    "curl": "curl",
    "ip": "iproute2",
    "haproxy": "haproxy",
    "wrk": "wrk",
    "iperf3": "iperf3",
    "java": "default-jdk-headless",
    "javac": "default-jdk-headless",
    "syslog-ng": "syslog-ng-core",
}


def require_binary(name: str, *, search: Sequence[str] = ()) -> str:
    """Return the path of ``name`` or fail the test saying how to install it.

    Missing servers fail rather than skip: in CI a skipped test is a test that
    silently stopped running.
    """
    for directory in search:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        package = INSTALL_HINTS.get(name, name)
        pytest.fail(
            f"{name} is not installed; install it with `apt-get install -y {package}` "
            f"(scripts/test.sh does this when run as root)",
            pytrace=False,
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def refused_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port where connections are refused for as long as the block runs.

    The port is bound but not listening, so no other process can take it in the
    meantime (a bare free_port() may be reused by a busy machine's next server).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, *, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something accepts on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.pid} exited with {proc.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def stop_pid(
    pid: int,
    *,
    sig: int = signal.SIGTERM,
    timeout: float = 10.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Stop the process ``pid`` with ``sig``, then SIGKILL after ``timeout``."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait(timeout=5)
