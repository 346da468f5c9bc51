"""The tests' free_port: a server's port no outgoing connection can take meanwhile.

The benchmark smoke failed once in CI with "Address already in use": the port
came from bind(0), the kernel's ephemeral range, where clients get their local
ports too. free_port now picks below that range and never repeats itself.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.procs import free_port


def ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_ports_are_bindable_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < port < ephemeral_low() for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # free: nothing kept it


def test_a_port_in_use_is_never_handed_out() -> None:
    # Another server's ports, not handed out by free_port: a sixth of the
    # range, so a pick that did not try the port would land on one often.
    taken = []
    try:
        for port in range(20000, ephemeral_low(), 6):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            taken.append(sock)
        busy = {sock.getsockname()[1] for sock in taken}
        assert len(busy) > 1000
        for _ in range(300):
            assert free_port() not in busy
    finally:
        for sock in taken:
            sock.close()


def test_ipv6_loopback() -> None:
    port = free_port("::1")
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", port))
