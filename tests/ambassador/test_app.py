"""The shell's state outside the sockets: switch bookkeeping, readiness, reload, PUT /env bodies."""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Iterator

import pytest
import trio

from ambassador.admin_routes import EnvRequestError, parse_env_body
from ambassador.app import Ambassador
from ambassador.config import AmbassadorConfig, parse_config
from sidecar_common.lifecycle import Lifecycle
from sidecar_common.metrics import parse_text


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"prod", None, "prod"),
        (b"  prod\n", "text/plain", "prod"),
        (b'{"env": "test"}', "application/json", "test"),
        (b'{"env": " test "}', None, "test"),
        (b'"dev"', None, "dev"),
    ],
)
def test_put_body_names_an_environment(
    body: bytes, content_type: str | None, expected: str
) -> None:
    assert parse_env_body(body, content_type) == expected


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"", None, "empty environment name"),
        (b"   ", None, "empty environment name"),
        (b"\xff\xfe", None, "body is not UTF-8"),
        (b"{nope", None, 'body is not valid JSON; send {"env": "<name>"}'),
        (b'{"name": "prod"}', "application/json", 'JSON body must be {"env": "<name>"}'),
        (b"[1]", "application/json", 'JSON body must be {"env": "<name>"}'),
        (b"a\nb", None, "not an environment name"),
    ],
)
def test_put_body_errors(body: bytes, content_type: str | None, reason: str) -> None:
    with pytest.raises(EnvRequestError) as info:
        parse_env_body(body, content_type)
    assert str(info.value) == reason


CONFIG = """
switch_drain_timeout = "5s"
[[listeners]]
name = "pg"
listen = "127.0.0.1:0"
[listeners.environments]
dev = ["127.0.0.1:6001"]
prod = ["127.0.0.1:6002", "127.0.0.1:6003"]
[listeners.health_check]
type = "none"
"""


def config(text: str, **overrides: object) -> AmbassadorConfig:
    return parse_config(tomllib.loads(text), overrides=overrides)


@pytest.fixture
def sockets() -> Iterator[dict[str, list[socket.socket]]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield {"pg": [sock]}
    sock.close()


def values(amb: Ambassador) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse_text(amb.registry.render())


async def test_switch_is_counted_by_result_and_source(
    sockets: dict[str, list[socket.socket]],
) -> None:
    amb = Ambassador(config(CONFIG, env="dev"), sockets)
    assert amb.apply_switch("prod", "admin").changed
    assert amb.apply_switch("prod", "env_file").result == "unchanged"
    assert amb.apply_switch("qa", "env_file").refused
    v = values(amb)
    key = "ambassador_env_switches_total"
    assert v[(key, frozenset({("result", "switched"), ("source", "admin")}))] == 1
    assert v[(key, frozenset({("result", "unchanged"), ("source", "env_file")}))] == 1
    assert v[(key, frozenset({("result", "refused"), ("source", "env_file")}))] == 1
    assert v[("ambassador_current_env", frozenset({("env", "prod")}))] == 1
    assert v[("ambassador_current_env", frozenset({("env", "dev")}))] == 0


async def test_readiness_reasons(sockets: dict[str, list[socket.socket]]) -> None:
    amb = Ambassador(config(CONFIG), sockets)
    assert amb.ready() == (False, "no environment selected")
    amb.apply_switch("prod", "admin")
    assert amb.ready() == (True, "env prod")
    cluster = amb.runtimes["pg"].clusters["prod"]
    for ep in cluster.endpoints:
        cluster.health_result(ep, False, trio.current_time())
    assert amb.ready() == (False, "listener pg: no healthy endpoint in prod")
    amb.lifecycle = Lifecycle(name="ambassador")
    amb.lifecycle.start_drain("SIGTERM")
    assert amb.ready() == (False, "draining")


async def test_reload_applies_endpoints_and_environments_and_switches(
    sockets: dict[str, list[socket.socket]], nursery: trio.Nursery
) -> None:
    amb = Ambassador(config(CONFIG, env="dev"), sockets)
    amb._background = nursery  # the reload restarts per-cluster tasks there
    prod_before = amb.runtimes["pg"].clusters["prod"]
    new_text = (
        CONFIG.replace('"127.0.0.1:6002", "127.0.0.1:6003"', '"127.0.0.1:6003", "127.0.0.1:6004"')
        .replace('dev = ["127.0.0.1:6001"]', 'dev = ["127.0.0.1:6001"]\ntest = ["127.0.0.1:6005"]')
        .replace('switch_drain_timeout = "5s"', 'switch_drain_timeout = "5s"\nenv = "test"')
    )
    new_text += '\n[[listeners]]\nname = "late"\nlisten = "127.0.0.1:1"\n'
    new_text += '[listeners.environments]\ndev = ["127.0.0.1:7001"]\n'
    amb.reload(config(new_text))
    rt = amb.runtimes["pg"]
    # Same cluster object (endpoint state kept), new address set.
    assert rt.clusters["prod"] is prod_before
    assert [ep.name for ep in prod_before.endpoints] == ["127.0.0.1:6003", "127.0.0.1:6004"]
    assert set(rt.clusters) == {"dev", "prod", "test"}
    # The file's env changed: that is a switch from the "config" source.
    assert amb.switch.current == "test"
    assert amb.switch.environments == ("dev", "test", "prod")
    # A new listener needs a restart: not started, and not part of the running config.
    assert "late" not in amb.runtimes
    assert [lst.name for lst in amb.cfg.listeners] == ["pg"]
    v = values(amb)
    assert v[("ambassador_env_switches_total",
              frozenset({("result", "switched"), ("source", "config")}))] == 1  # fmt: skip


DISCOVER = """
env = "prod"
[[listeners]]
name = "api"
listen = "127.0.0.1:0"
protocol = "http"
health_check = {{ type = "none" }}
http = {{ request_timeout = "{timeout}" }}
[listeners.environments]
dev = ["127.0.0.1:6001"]
[listeners.environments.prod.discover]
etcd = "http://127.0.0.1:1"
prefix = "{prefix}"
"""


async def test_reload_keeps_discovered_endpoints_and_the_running_http_settings(
    nursery: trio.Nursery,
) -> None:
    cfg = config(DISCOVER.format(timeout="5s", prefix="/services/api"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        amb = Ambassador(cfg, {"api": [sock]})
        amb._background = nursery
        rt = amb.runtimes["api"]
        prod = rt.clusters["prod"]
        # A discovered environment starts empty: discovery fills it.
        assert prod.endpoints == []
        assert amb.ready() == (False, "listener api: no healthy endpoint in prod")
        prod.set_addresses([("10.0.0.7", 8080)], trio.current_time())
        proxy = rt.http_proxy
        assert proxy is not None and proxy.settings.request_timeout == 5.0
        # Same discovery, another http table: addresses stay, the proxy keeps its settings.
        amb.reload(config(DISCOVER.format(timeout="9s", prefix="/services/api")))
        assert rt.clusters["prod"] is prod
        assert [ep.address for ep in prod.endpoints] == [("10.0.0.7", 8080)]
        assert rt.http_proxy is proxy and rt.config.http.request_timeout == 5.0
        # prod becomes a static list: the discovered addresses give way to it.
        static = DISCOVER.format(timeout="5s", prefix="/x").replace(
            '[listeners.environments.prod.discover]\netcd = "http://127.0.0.1:1"\nprefix = "/x"',
            'prod = ["127.0.0.1:6009"]',
        )
        amb.reload(config(static))
        assert [ep.address for ep in rt.clusters["prod"].endpoints] == [("127.0.0.1", 6009)]
    finally:
        sock.close()


async def test_clusters_report_shows_what_the_balancer_knows(
    sockets: dict[str, list[socket.socket]],
) -> None:
    outlier = "[listeners.outlier]\nconsecutive_failures = 1\n"
    text = CONFIG.replace("[listeners.health_check]", outlier + "[listeners.health_check]")
    amb = Ambassador(config(text, env="prod"), sockets)
    now = trio.current_time()
    prod = amb.runtimes["pg"].clusters["prod"]
    first, second = prod.endpoints
    prod.connect_started(first)
    prod.connect_succeeded(first, 0.002, now)  # one open connection, 2 ms to connect
    prod.connect_started(second)
    assert prod.connect_failed(second, now)  # one failure ejects (consecutive_failures = 1)
    report = amb.clusters_report()
    assert report["env"] == "prod"
    (listener,) = report["listeners"]
    assert {k: listener[k] for k in ("name", "protocol", "policy", "open_connections")} == {
        "name": "pg",
        "protocol": "tcp",
        "policy": "peak_ewma",
        "open_connections": 0,
    }
    assert listener["listen"].startswith("127.0.0.1:")
    envs = listener["environments"]
    assert (envs["dev"]["current"], envs["prod"]["current"]) == (False, True)
    up, ejected = envs["prod"]["endpoints"]
    assert up == {
        "address": "127.0.0.1:6002",
        "usable": True,
        "healthy": True,
        "ejected": False,
        "ejected_for_seconds": None,
        "times_ejected": 0,
        "active_connections": 1,
        "latency_ewma_seconds": pytest.approx(0.002),
        "connects_total": 1,
        "connect_failures_total": 0,
    }
    assert ejected["address"] == "127.0.0.1:6003"
    assert (ejected["usable"], ejected["healthy"], ejected["ejected"]) == (False, True, True)
    assert 0 < ejected["ejected_for_seconds"] <= 30.0  # the base ejection time, running
    assert (ejected["times_ejected"], ejected["connect_failures_total"]) == (1, 1)
    # A failure counts as the cluster's penalty latency (peak EWMA shuns it).
    assert ejected["latency_ewma_seconds"] == pytest.approx(prod.failure_latency)
    assert envs["dev"]["endpoints"][0]["connects_total"] == 0
    assert envs["dev"]["endpoints"][0]["latency_ewma_seconds"] is None  # nothing measured yet
