"""etcd discovery through the real ambassador: real etcd, real ``watcher run`` registrations.

The apps are threaded TCP servers that say their name and close; each gets a
real watcher process that probes it and registers it under ``/services/api``.
The ambassador's ``prod`` environment is ``discover = { etcd, prefix, environment }``:
connections through it reach the instances as they register and stop reaching
them when they leave (SIGTERM revokes the lease at once).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.etcd import EtcdServer
from tests.support.procs import free_port

from .e2e import AMBASSADOR, AmbassadorProc, http, metrics, sample, wait_until
from .test_discovery_etcd import Watchers

pytestmark = pytest.mark.slow


class NamedApp:
    """A TCP server that sends its name to each client, then closes."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.name)

    def close(self) -> None:
        self.sock.close()


def answer(port: int) -> bytes:
    """What a connection through the ambassador reads (b"" when it is refused at once)."""
    chunks = []
    try:
        # The reset of a refused client may arrive while connect() is still completing.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            while data := conn.recv(1024):
                chunks.append(data)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


@pytest.fixture
def watchers(tmp_path: Path, etcd: EtcdServer) -> Iterator[Watchers]:
    w = Watchers(tmp_path, etcd.url)
    try:
        yield w
    finally:
        w.stop_all()


@pytest.fixture
def apps() -> Iterator[dict[bytes, NamedApp]]:
    made = {name: NamedApp(name) for name in (b"A", b"B")}
    yield made
    for app in made.values():
        app.close()


def test_ambassador_follows_watcher_registrations(
    etcd: EtcdServer,
    watchers: Watchers,
    apps: dict[bytes, NamedApp],
    tmp_path: Path,
) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "ambassador.toml"
    config.write_text(
        f"""
env = "prod"
admin = "127.0.0.1:{admin}"
[[listeners]]
name = "api"
listen = "127.0.0.1:{port}"
health_check = {{ type = "none" }}
# Round robin: both discovered instances are reached in turn (peak EWMA would
# rightly keep choosing whichever connected faster; this test is about discovery).
policy = "round_robin"
[listeners.environments.prod.discover]
etcd = "{etcd.url}"
prefix = "/services/api"
environment = "prod"
"""
    )
    check = subprocess.run(
        [AMBASSADOR, "check", "--config", str(config)], capture_output=True, text=True, check=True
    )
    assert f"  * prod -> etcd {etcd.url} prefix /services/api environment=prod" in check.stdout, (
        check.stdout
    )
    amb = AmbassadorProc(["--config", str(config)], tmp_path)
    try:
        amb.wait_listening()
        # Nothing registered yet: refused at once (fail fast), not left hanging.
        assert answer(port) == b""
        assert http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 503

        proc_a = watchers.start("pod-a", apps[b"A"].port, "--ttl", "5")
        # A python process starting on a busy machine, then its first probe: generous.
        wait_until(lambda: answer(port) == b"A", timeout=30, what="A reachable")
        assert http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 200

        watchers.start("pod-b", apps[b"B"].port, "--ttl", "5")
        wait_until(
            lambda: sample(metrics(admin), "ambassador_endpoint_healthy", listener="api",
                           env="prod", endpoint=f"127.0.0.1:{apps[b'B'].port}") == 1,
            timeout=30,
            what="B discovered",
        )  # fmt: skip
        seen = {answer(port) for _ in range(12)}
        assert seen == {b"A", b"B"}

        # A's watcher leaves (SIGTERM revokes its lease): A is no longer reached.
        os.kill(proc_a.pid, signal.SIGTERM)
        assert proc_a.wait(15) == 0
        wait_until(
            lambda: {answer(port) for _ in range(6)} == {b"B"}, timeout=5, what="only B reached"
        )
        changes = amb.events("endpoints changed")
        assert [c["endpoints"] for c in changes] == [
            [f"127.0.0.1:{apps[b'A'].port}"],
            [f"127.0.0.1:{apps[b'A'].port}", f"127.0.0.1:{apps[b'B'].port}"],  # key order
            [f"127.0.0.1:{apps[b'B'].port}"],
        ]
        assert all(c["source"] == "etcd" and c["cluster"] == "api/prod" for c in changes)
        endpoints = {line.get("endpoint") for line in amb.access() if line["outcome"] == "closed"}
        assert endpoints == {f"127.0.0.1:{apps[b'A'].port}", f"127.0.0.1:{apps[b'B'].port}"}
    finally:
        amb.stop()
