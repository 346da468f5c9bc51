"""netaddr: host:port parsing, loopback detection and allow-lists, as tables."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar_common.errors import ConfigError
from sidecar_common.netaddr import (
    HostPort,
    address_allowed,
    is_loopback,
    parse_host_port,
    parse_networks,
)


@pytest.mark.parametrize(
    ("text", "default_host", "expected"),
    [
        ("127.0.0.1:8080", None, HostPort("127.0.0.1", 8080)),
        ("localhost:0", None, HostPort("localhost", 0)),
        ("db.default.svc.cluster.local:5432", None, HostPort("db.default.svc.cluster.local", 5432)),
        ("[::1]:9000", None, HostPort("::1", 9000)),
        ("[fe80::1%eth0]:80", None, HostPort("fe80::1%eth0", 80)),
        (":9090", "127.0.0.1", HostPort("127.0.0.1", 9090)),
        (":9090", "::", HostPort("::", 9090)),
        ("  10.0.0.1:65535 ", None, HostPort("10.0.0.1", 65535)),
        ("my_svc:1", None, HostPort("my_svc", 1)),
    ],
)
def test_parse_host_port_accepts(text: str, default_host: str | None, expected: HostPort) -> None:
    assert parse_host_port(text, setting="--listen", default_host=default_host) == expected


@pytest.mark.parametrize(
    ("text", "expected_fragment"),
    [
        ("8080", "host:port"),
        ("localhost", "host:port"),
        ("localhost:", "host:port"),
        ("localhost:http", "host:port"),
        ("localhost:-1", "host:port"),
        ("localhost:65536", "a port between 0 and 65535"),
        ("localhost:99999999999", "a port between 0 and 65535"),
        ("::1:80", "host:port"),
        ("[::1]80", "host:port"),
        ("[::1", "host:port"),
        ("[not-v6]:80", "a valid IPv6 address"),
        (":80", "a host is required"),
        ("bad host:80", "a valid hostname"),
        ("-leading.dash:80", "a valid hostname"),
        ("a..b:80", "a valid hostname"),
        ("localhost:\uff18\uff10", "host:port"),  # full-width digits: isdigit() but not ASCII
    ],
)
def test_parse_host_port_rejects_naming_setting_and_value(
    text: str, expected_fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_host_port(text, setting="AMBASSADOR_LISTEN")
    err = info.value
    assert err.setting == "AMBASSADOR_LISTEN"
    assert err.value == text
    assert expected_fragment in err.expected
    assert str(err).startswith(f"invalid value for AMBASSADOR_LISTEN: {text!r} (expected ")
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("hp", "text"),
    [
        (HostPort("127.0.0.1", 80), "127.0.0.1:80"),
        (HostPort("::1", 80), "[::1]:80"),
        (HostPort("example.com", 443), "example.com:443"),
    ],
)
def test_hostport_str(hp: HostPort, text: str) -> None:
    assert str(hp) == text


@given(
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9](\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True),
    ),
    port=st.integers(0, 65535),
)
def test_str_and_parse_round_trip(host: str, port: int) -> None:
    hp = HostPort(host, port)
    assert parse_host_port(str(hp), setting="--x") == hp


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("128.0.0.1", False),
        ("localhost.example.com", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_parse_networks_accepts_cidrs_addresses_and_host_bits() -> None:
    nets = parse_networks(
        ["10.0.0.0/8", " 192.168.1.7 ", "10.1.2.3/16", "fd00::/8", "::1"], setting="--allow"
    )
    assert nets == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("::1/128"),
    ]


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "nonsense", "", "10.0.0.0/8/8", "1.2.3"])
def test_parse_networks_rejects_naming_the_item(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_networks(["10.0.0.0/8", bad], setting="ADAPTER_ALLOW")
    assert info.value.setting == "ADAPTER_ALLOW"
    assert info.value.value == bad
    assert "CIDR" in info.value.expected


NETS = parse_networks(["10.0.0.0/8", "127.0.0.1", "fd00::/8"], setting="--allow")


@pytest.mark.parametrize(
    ("addr", "allowed"),
    [
        ("10.200.3.4", True),
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("11.0.0.1", False),
        ("fd12::1", True),
        ("[fd12::1]", True),
        ("fe80::1%eth0", False),
        ("::ffff:10.0.0.1", True),  # dual-stack socket reporting an IPv4 peer
        ("::1", False),
        ("/run/app.sock", False),
        ("", False),
    ],
)
def test_address_allowed(addr: str, allowed: bool) -> None:
    assert address_allowed(addr, NETS) is allowed


@pytest.mark.parametrize("addr", ["1.2.3.4", "::1", "not-an-address"])
def test_empty_allow_list_allows_everyone(addr: str) -> None:
    assert address_allowed(addr, [])


@given(st.text(max_size=80))
def test_parse_host_port_only_ever_raises_config_error(text: str) -> None:
    try:
        hp = parse_host_port(text, setting="--x", default_host="127.0.0.1")
    except ConfigError as err:
        assert err.value == text
    else:
        assert 0 <= hp.port <= 65535 and hp.host


@given(st.lists(st.text(max_size=40), max_size=3))
def test_parse_networks_only_ever_raises_config_error(items: list[str]) -> None:
    try:
        nets = parse_networks(items, setting="--allow")
    except ConfigError as err:
        assert err.value in items
    else:
        assert len(nets) == len(items)
