"""Starting and stopping real server processes for tests: free ports, PIDs, binaries.

Every server a test needs is a real one, bound to 127.0.0.1 on a free port and
stopped by the PID we started, never by name.
"""

from __future__ import annotations

import contextlib
import os
import random
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


#: Ports this process has handed out: never the same one twice.
_HANDED_OUT: set[int] = set()
#: Where free_port looks: below the kernel's ephemeral range (see free_port).
_LOWEST_PORT = 20000


def _ephemeral_low() -> int:
    """The first port the kernel gives to outgoing connections (bind to port 0 too)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``, not handed out before.

    Picked at random below the kernel's ephemeral range, not by binding to
    port 0: a port from bind(0) is one the kernel also gives to outgoing
    connections, so on a busy run (pgbench -C, wrk, a test's clients) a
    client can take it as its local port between this call and the server's
    bind, and the server fails with "Address already in use". Below that
    range only another server can take it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    high = _ephemeral_low()
    if high > _LOWEST_PORT + 1000:
        for _ in range(500):
            port = random.randrange(_LOWEST_PORT, high)
            if port in _HANDED_OUT:
                continue
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
    _HANDED_OUT.add(port)
    return port


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
    host: str,
    port: int,
    *,
    timeout: float = 15.0,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Block until something accepts on host:port, or raise TimeoutError.

    If ``proc`` exits first, the error says so, with the end of its ``log``
    (where its output went), so a failed start names its cause.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = ""
            if log is not None:
                with contextlib.suppress(OSError):
                    tail = "; its output ends:\n" + log.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"process {proc.pid} exited with {proc.returncode} before listening on {port}"
                + tail
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
