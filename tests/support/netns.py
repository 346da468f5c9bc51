"""Linux network namespaces as stand-ins for a pod and the hosts around it.

A "pod" namespace has its own loopback, shared by every process started in it,
exactly as the containers of a pod share localhost. Each "host" namespace
(a database, etcd) is joined to the pod by a veth pair on its own /30 subnet.
All of it is created by the test and deleted afterwards; nothing here touches
the machine's real interfaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

SUBNET_BASE = "10.231"  # only inside namespaces this module creates


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs `ip` from iproute2 (apt-get install -y iproute2)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    """A namespace reached from the pod over a veth pair."""

    ns: str
    address: str  # the host's address, as the pod sees it
    pod_address: str  # the pod's address on that link


@dataclass
class Pod:
    ns: str
    prefix: str
    hosts: dict[str, Host] = field(default_factory=dict)

    def exec_argv(self, argv: list[str], ns: str | None = None) -> list[str]:
        """argv run inside the pod (or another of our namespaces)."""
        return ["ip", "netns", "exec", ns or self.ns, *argv]

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        ns = f"{self.prefix}-{name}"
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        pod_if, host_if = f"p{index}{self.prefix[-4:]}", f"h{index}{self.prefix[-4:]}"
        _ip("link", "add", pod_if, "type", "veth", "peer", "name", host_if)
        _ip("link", "set", pod_if, "netns", self.ns)
        _ip("link", "set", host_if, "netns", ns)
        pod_addr, host_addr = f"{SUBNET_BASE}.{index}.1", f"{SUBNET_BASE}.{index}.2"
        _ip("-n", self.ns, "addr", "add", f"{pod_addr}/30", "dev", pod_if)
        _ip("-n", ns, "addr", "add", f"{host_addr}/30", "dev", host_if)
        _ip("-n", self.ns, "link", "set", pod_if, "up")
        _ip("-n", ns, "link", "set", host_if, "up")
        host = Host(ns=ns, address=host_addr, pod_address=pod_addr)
        self.hosts[name] = host
        return host


@contextmanager
def pod_network() -> Iterator[Pod]:
    """A pod namespace; hosts are added with ``pod.add_host(name)``. Everything is deleted after."""
    reason = netns_unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the pod test must run in CI but {reason}", pytrace=False)
        pytest.skip(reason)
    prefix = f"sc{os.getpid() % 100000}"
    pod = Pod(ns=f"{prefix}-pod", prefix=prefix)
    _ip("netns", "add", pod.ns)
    try:
        _ip("-n", pod.ns, "link", "set", "lo", "up")
        yield pod
    finally:
        for host in pod.hosts.values():
            subprocess.run(["ip", "netns", "delete", host.ns], capture_output=True)
        subprocess.run(["ip", "netns", "delete", pod.ns], capture_output=True)
