"""Listeners added, moved and removed by a config reload, through the real binary.

What an Envoy user gets from LDS, with a file: the ambassador watches its
``--config`` and applies a changed listener set while serving. Real sockets,
real echo backends, the file rewritten as a ConfigMap update would.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ambassador.e2e import (
    AmbassadorProc,
    EchoServer,
    free_ports,
    http,
    metrics,
    sample,
    wait_until,
)

LISTENER = """
[[listeners]]
name = "{name}"
listen = "127.0.0.1:{port}"
health_check = {{ type = "none" }}
[listeners.environments]
dev = ["127.0.0.1:{backend}"]
"""


def config(admin: int, *listeners: tuple[str, int, int]) -> str:
    head = f'env = "dev"\nadmin = "127.0.0.1:{admin}"\ndrain_timeout = "30s"\n'
    return head + "".join(
        LISTENER.format(name=name, port=port, backend=backend) for name, port, backend in listeners
    )


@pytest.fixture
def backends() -> Iterator[tuple[EchoServer, EchoServer]]:
    one, two = EchoServer(), EchoServer()
    yield one, two
    one.close()
    two.close()


def echo(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(data)
        return client.recv(65536)


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def test_listeners_are_added_moved_and_removed_while_connections_carry_on(
    backends: tuple[EchoServer, EchoServer], tmp_path: Path
) -> None:
    one, two = backends
    admin, port_a, port_a2, port_b = free_ports(4)
    path = tmp_path / "ambassador.toml"
    path.write_text(config(admin, ("a", port_a, one.port)))
    amb = AmbassadorProc(["--config", str(path)], tmp_path)
    try:
        amb.wait_listening(1)
        held = socket.create_connection(("127.0.0.1", port_a), timeout=10)
        held.sendall(b"first")
        assert held.recv(65536) == b"first"

        # "b" is new, "a" moves: both happen without a restart (same PID).
        path.write_text(config(admin, ("a", port_a2, one.port), ("b", port_b, two.port)))
        wait_until(lambda: amb.events("listener moved"), timeout=20, what="the move")
        (moved,) = amb.events("listener moved")
        assert (moved["listener"], moved["old"], moved["new"]) == (
            "a",
            f"127.0.0.1:{port_a}",
            f"127.0.0.1:{port_a2}",
        )
        wait_until(lambda: len(amb.events("listening")) == 3, what="b and the moved a listening")
        assert refused(port_a)  # the old address is closed...
        assert echo(port_a2, b"moved") == b"moved"  # ...the new one serves a's backend,
        assert echo(port_b, b"added") == b"added"  # b serves its own,
        assert two.connections == 1
        held.sendall(b"still")  # and a's open connection was not touched.
        assert held.recv(65536) == b"still"
        assert amb.proc.poll() is None

        # "a" is removed: it stops accepting at once, its open connection drains.
        path.write_text(config(admin, ("b", port_b, two.port)))
        wait_until(lambda: amb.events("listener removed; draining its connections"), timeout=20)
        (removed,) = amb.events("listener removed; draining its connections")
        assert removed["listener"] == "a" and removed["open_connections"] == 1
        assert refused(port_a2)
        held.sendall(b"draining")
        assert held.recv(65536) == b"draining"
        v = metrics(admin)
        assert sample(v, "ambassador_active_connections", listener="a", env="dev") == 1
        assert not amb.events("listener drained")
        held.close()  # the last connection ends: the listener is released with its metrics
        wait_until(lambda: amb.events("listener drained"), what="a drained")
        v = metrics(admin)
        assert ("ambassador_active_connections",
                frozenset({("listener", "a"), ("env", "dev")})) not in v  # fmt: skip
        # b's one connection so far ("added") is counted, whatever way the client ended it.
        b_total = sum(
            value
            for (name, labels), value in v.items()
            if name == "ambassador_connections_total" and ("listener", "b") in labels
        )
        assert b_total == 1
        assert echo(port_b, b"after") == b"after"
        assert http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 200

        # An address that cannot be bound: logged, nothing else changes.
        path.write_text(config(admin, ("b", port_b, two.port), ("c", one.port, two.port)))
        wait_until(lambda: amb.events("cannot listen; listener change not applied"), timeout=20)
        (failed,) = amb.events("cannot listen; listener change not applied")
        assert failed["listener"] == "c" and failed["address"] == f"127.0.0.1:{one.port}"
        assert failed["level"] == "error"
        assert echo(port_b, b"alive") == b"alive"
        assert amb.proc.poll() is None

        # A rename at the same address: "b" goes (its socket closes first), "c" takes the port.
        path.write_text(config(admin, ("c", port_b, two.port)))
        wait_until(lambda: any(e["listener"] == "c" for e in amb.events("listening")),
                   timeout=20, what="c listening")  # fmt: skip
        assert echo(port_b, b"renamed") == b"renamed"
        removed_names = amb.events("listener removed; draining its connections")
        assert [e["listener"] for e in removed_names] == ["a", "b"]
    finally:
        amb.stop()


def test_a_listener_added_back_or_rebuilt_lets_its_old_connections_drain(
    backends: tuple[EchoServer, EchoServer], tmp_path: Path
) -> None:
    one, two = backends
    admin, port_a, port_b = free_ports(3)
    keep = ("b", port_b, two.port)  # a config has at least one listener
    path = tmp_path / "ambassador.toml"
    path.write_text(config(admin, ("a", port_a, one.port), keep))
    amb = AmbassadorProc(["--config", str(path)], tmp_path)
    try:
        amb.wait_listening(2)
        held = socket.create_connection(("127.0.0.1", port_a), timeout=10)
        held.sendall(b"first")
        assert held.recv(65536) == b"first"
        path.write_text(config(admin, keep))
        wait_until(lambda: amb.events("listener removed; draining its connections"), timeout=20)
        assert refused(port_a)

        # Back under the same name while the old runtime drains: both count under "a".
        path.write_text(config(admin, ("a", port_a, one.port), keep))
        wait_until(lambda: len(amb.events("listening")) == 3, timeout=20, what="a again")
        assert echo(port_a, b"again") == b"again"
        held.sendall(b"old")
        assert held.recv(65536) == b"old"

        def received_a() -> float:
            return sample(
                metrics(admin), "ambassador_received_bytes_total", listener="a", env="dev"
            )

        # "again" is counted once its connection is over; "first" + "old" live on the old one.
        wait_until(lambda: received_a() == len(b"firstoldagain"), what="both runtimes summed")

        # A protocol change: a new runtime takes the socket over, no client is refused,
        # the old one keeps its connections until they end.
        path.write_text(config(admin, ("a", port_a, one.port), keep).replace(
            'name = "a"', 'name = "a"\nprotocol = "http"'))  # fmt: skip
        wait_until(lambda: amb.events("listener replaced; the old one drains its connections"),
                   timeout=20)  # fmt: skip
        (replaced,) = amb.events("listener replaced; the old one drains its connections")
        assert replaced["listener"] == "a" and replaced["protocol"] == "http"
        with socket.create_connection(("127.0.0.1", port_a), timeout=10) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            # The HTTP listener answers (the echo backend's "response" is no HTTP: 502);
            # the TCP one would have echoed the request.
            assert client.recv(65536).startswith(b"HTTP/1.1 502 ")
        held.sendall(b"tcp")
        assert held.recv(65536) == b"tcp"
        held.close()
        wait_until(lambda: len(amb.events("listener drained")) == 2, what="both old ones drained")
        # The byte counter never went back: the drained runtimes' totals passed on.
        assert received_a() >= len(b"firstoldagaintcp")
        assert not amb.events("listener changes need a restart; kept the running listeners")
    finally:
        amb.stop()
