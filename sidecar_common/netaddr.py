"""Host/port pairs and network allow-lists, parsed from user input.

Addresses reach the sidecars as flags, environment variables and config keys,
so every parser here raises ``ConfigError`` naming the setting the text came
from; nothing in this module does I/O (no DNS lookups: a hostname is checked
for shape only and resolved later, by whoever connects).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import ConfigError

__all__ = [
    "HostPort",
    "IPNetwork",
    "address_allowed",
    "is_loopback",
    "parse_host_port",
    "parse_networks",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_EXPECTED_HOST_PORT = "host:port, [ipv6]:port or :port with a port 0-65535"
# RFC 1123 labels; underscores are tolerated because Kubernetes SRV-style and
# docker-compose names use them and a resolver will reject what is really wrong.
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


@dataclass(frozen=True)
class HostPort:
    """A host (name, IPv4 or IPv6 literal without brackets) and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        # An IPv6 literal needs brackets, or the last colon would be ambiguous.
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _valid_hostname(host: str) -> bool:
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        return False
    return all(_LABEL.match(label) for label in host.split("."))


def parse_host_port(text: str, *, setting: str, default_host: str | None = None) -> HostPort:
    """Parse ``host:port``, ``[v6]:port`` or ``:port`` (which needs ``default_host``).

    An unbracketed IPv6 literal is refused rather than guessed at: in ``::1:80``
    the port cannot be told from the address.
    """
    raw = text
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ConfigError(setting, raw, _EXPECTED_HOST_PORT)
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ConfigError(setting, raw, "a valid IPv6 address inside [ ]") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(setting, raw, _EXPECTED_HOST_PORT)
        if not host:
            if default_host is None:
                raise ConfigError(setting, raw, "host:port (a host is required)")
            host = default_host
        elif not _valid_hostname(host):
            raise ConfigError(setting, raw, "a valid hostname or IP address before the port")
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(setting, raw, _EXPECTED_HOST_PORT)
    port = int(port_text)
    if port > 65535:
        raise ConfigError(setting, raw, "a port between 0 and 65535")
    return HostPort(host, port)


def _parse_ip(text: str) -> _IPAddress | None:
    """An address without brackets or zone, IPv4-mapped IPv6 unwrapped; None if not an IP."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also IPv4-mapped) and the name ``localhost``.

    Other names are not resolved: they are treated as not loopback, the safe answer.
    """
    if host.strip().rstrip(".").lower() == "localhost":
        return True
    addr = _parse_ip(host)
    return addr is not None and addr.is_loopback


def parse_networks(items: Iterable[str], *, setting: str) -> list[IPNetwork]:
    """Parse CIDRs (``10.0.0.0/8``, ``::1/128``) or bare addresses (one host).

    Host bits are tolerated (``10.1.2.3/8`` means ``10.0.0.0/8``): people paste
    an interface address with its prefix, and what they mean is unambiguous.
    """
    networks: list[IPNetwork] = []
    for item in items:
        text = item.strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(
                setting, item, "an IP network in CIDR form (10.0.0.0/8, fd00::/8) or an IP address"
            ) from None
    return networks


def address_allowed(addr: str, networks: Sequence[IPNetwork]) -> bool:
    """Whether the peer address ``addr`` falls in one of ``networks``.

    An empty list allows everyone (no allow-list configured). A peer address
    that is not an IP (e.g. a Unix socket path) is refused when a list is set.
    """
    if not networks:
        return True
    ip = _parse_ip(addr)
    if ip is None:
        return False
    return any(ip.version == net.version and ip in net for net in networks)
