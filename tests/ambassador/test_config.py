"""Config parsing: tables of good and bad configs, each bad one with its exact error line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from ambassador.balancer import POLICIES as CORE_POLICIES
from ambassador.cli import describe
from ambassador.config import (
    POLICIES,
    HealthCheckConfig,
    LimitsConfig,
    from_flags,
    load_config,
    parse_backend,
    parse_config,
    resolve_initial_env,
)
from sidecar_common.errors import ConfigError
from sidecar_common.netaddr import HostPort

BASE = """
[[listeners]]
name = "pg"
listen = "127.0.0.1:5432"
protocol = "postgres"
[listeners.environments]
dev = ["127.0.0.1:6001"]
prod = { endpoints = ["db-0.prod:5432", "db-1.prod:5432"] }
"""


def parse(text: str) -> object:
    return parse_config(tomllib.loads(text))


def test_full_config_is_parsed() -> None:
    cfg = parse_config(
        tomllib.loads(
            """
env = "dev"
env_file = "/etc/ambassador/env"
admin = ":9901"
drain_timeout = "10s"
switch_drain_timeout = "1m"
log_level = "debug"
dns_refresh = 2

[[listeners]]
name = "pg"
listen = "127.0.0.1:5432"
protocol = "postgres"
policy = "least_connections"
allow = ["127.0.0.0/8", "10.1.2.3"]
[listeners.environments]
dev = ["127.0.0.1:6001"]
prod = { endpoints = ["db-0.prod:5432", "[fd00::1]:5432"] }
[listeners.health_check]
type = "postgres"
role = "primary"
interval = "2s"
timeout = "500ms"
healthy-threshold = 1
unhealthy_threshold = 2
user = "app"
database = "app"
[listeners.limits]
max_connections = 100
max_pending = 10
pending_timeout = "250ms"
connect_timeout = 1
connect_attempts = 2
idle_timeout = "1h"
max_per_endpoint = 50
[listeners.outlier]
consecutive_failures = 3
base_ejection = "10s"
max_ejection = "1m"
max_ejection_percent = 50

[[listeners]]
name = "redis"
listen = "0.0.0.0:6379"
bind_public = true
[listeners.environments]
dev = "127.0.0.1:7001"
"""
        )
    )
    assert cfg.env == "dev"
    assert cfg.env_file == Path("/etc/ambassador/env")
    assert cfg.admin == HostPort("127.0.0.1", 9901)
    assert (cfg.drain_timeout, cfg.switch_drain_timeout, cfg.dns_refresh) == (10.0, 60.0, 2.0)
    assert cfg.log_level == "debug"
    assert cfg.environments == ("dev", "prod")
    pg, redis = cfg.listeners
    assert pg.protocol == "postgres" and pg.policy == "least_connections"
    assert pg.environments["prod"].endpoints == (
        HostPort("db-0.prod", 5432),
        HostPort("fd00::1", 5432),
    )
    assert pg.health_check == HealthCheckConfig(
        type="postgres",
        role="primary",
        interval=2.0,
        timeout=0.5,
        healthy_threshold=1,
        unhealthy_threshold=2,
        user="app",
        database="app",
    )
    assert pg.limits == LimitsConfig(
        max_connections=100,
        max_pending=10,
        pending_timeout=0.25,
        connect_timeout=1.0,
        connect_attempts=2,
        idle_timeout=3600.0,
        max_connections_per_endpoint=50,
    )
    assert (pg.outlier.consecutive_failures, pg.outlier.base_ejection) == (3, 10.0)
    assert [str(n) for n in pg.allow] == ["127.0.0.0/8", "10.1.2.3/32"]
    assert redis.bind_public and redis.listen == HostPort("0.0.0.0", 6379)
    assert redis.environments["dev"].endpoints == (HostPort("127.0.0.1", 7001),)
    assert cfg.missing("prod") == ["redis"]


def test_defaults() -> None:
    cfg = parse_config(tomllib.loads(BASE))
    (pg,) = cfg.listeners
    assert pg.health_check.type == "tcp"
    assert pg.policy == "peak_ewma"
    assert pg.limits.max_connections is None
    assert pg.limits.idle_timeout is None
    assert (cfg.env, cfg.admin, cfg.drain_timeout, cfg.switch_drain_timeout) == (
        None,
        None,
        30.0,
        None,
    )


def test_policies_match_the_core() -> None:
    assert set(POLICIES) == set(CORE_POLICIES)


def _with(extra_top: str = "", listener: str = "", env_block: str | None = None) -> str:
    envs = env_block if env_block is not None else 'dev = ["127.0.0.1:6001"]\n'
    return (
        f'{extra_top}\n[[listeners]]\nname = "pg"\nlisten = "127.0.0.1:5432"\n{listener}\n'
        f"[listeners.environments]\n{envs}"
    )


BAD = [
    pytest.param(
        "[[listeners]]\nname='a'\nlisten='127.0.0.1:1'\n",
        "invalid value for listeners[0].environments: None (expected the listener's environments)",
        id="no-environments",
    ),
    pytest.param(
        "",
        "invalid value for listeners: None (expected at least one [[listeners]] table)",
        id="no-listeners",
    ),
    pytest.param(
        _with(env_block='prod = ["db:5432", "db:notaport"]\n'),
        "invalid value for listeners[0].environments.prod[1]: 'db:notaport' "
        "(expected host:port, [ipv6]:port or :port with a port 0-65535)",
        id="bad-endpoint-list",
    ),
    pytest.param(
        _with(env_block='prod = { endpoints = ["db:5432", "db:0"] }\n'),
        "invalid value for listeners[0].environments.prod.endpoints[1]: 'db:0' "
        "(expected host:port with a port between 1 and 65535)",
        id="port-zero-endpoint",
    ),
    pytest.param(
        _with(env_block='prod = ["db:5432", "db:5432"]\n'),
        "invalid value for listeners[0].environments.prod[1]: 'db:5432' "
        "(expected each endpoint once)",
        id="duplicate-endpoint",
    ),
    pytest.param(
        _with(env_block="prod = []\n"),
        "invalid value for listeners[0].environments.prod: [] "
        "(expected a non-empty list of host:port)",
        id="empty-env",
    ),
    pytest.param(
        _with(env_block='"bad name" = ["db:1"]\n'),
        "invalid value for listeners[0].environments.bad name: 'bad name' "
        "(expected a name of letters, digits, '.', '_' or '-')",
        id="bad-env-name",
    ),
    pytest.param(
        _with().replace('listen = "127.0.0.1:5432"', 'listen = "0.0.0.0:5432"'),
        "invalid value for listeners[0].listen: '0.0.0.0:5432' "
        "(expected a loopback address, or bind_public = true)",
        id="public-bind-needs-flag",
    ),
    pytest.param(
        _with(listener='protocol = "mysql"'),
        "invalid value for listeners[0].protocol: 'mysql' (expected one of tcp, postgres, http)",
        id="bad-protocol",
    ),
    pytest.param(
        _with(listener='policy = "random"'),
        "invalid value for listeners[0].policy: 'random' "
        "(expected one of peak_ewma, round_robin, least_connections)",
        id="bad-policy",
    ),
    pytest.param(
        _with(listener="[listeners.limits]\nmax_connections = -1"),
        "invalid value for listeners[0].limits.max_connections: -1 (expected an integer >= 0)",
        id="negative-limit",
    ),
    pytest.param(
        _with(listener='[listeners.limits]\nconnect_timeout = "soon"'),
        "invalid value for listeners[0].limits.connect_timeout: 'soon' "
        "(expected a duration like 2s, 250ms or 1.5 (seconds))",
        id="bad-duration",
    ),
    pytest.param(
        _with(listener="[listeners.limits]\nconnect_timeout = 0"),
        "invalid value for listeners[0].limits.connect_timeout: 0 (expected a positive duration)",
        id="zero-connect-timeout",
    ),
    pytest.param(
        _with(listener="[listeners.limits]\nmax_conections = 5"),
        "invalid value for listeners[0].limits.max_conections: 5 (expected a known key "
        "(connect_attempts, connect_timeout, idle_timeout, max_connections, "
        "max_connections_per_endpoint, max_pending, max_per_endpoint, pending_timeout))",
        id="typo-key",
    ),
    pytest.param(
        _with(listener='[listeners.health_check]\ntype = "tcp"\nrole = "primary"'),
        "invalid value for listeners[0].health_check.role: 'primary' "
        '(expected role only with type = "postgres")',
        id="role-needs-postgres",
    ),
    pytest.param(
        _with(listener='[listeners.health_check]\ninterval = "1s"\ntimeout = "2s"'),
        "invalid value for listeners[0].health_check.timeout: '2s' (expected at most interval)",
        id="timeout-over-interval",
    ),
    pytest.param(
        _with(listener='allow = ["10.0.0.0/33"]'),
        "invalid value for listeners[0].allow: '10.0.0.0/33' "
        "(expected an IP network in CIDR form (10.0.0.0/8, fd00::/8) or an IP address)",
        id="bad-network",
    ),
    pytest.param(
        _with(extra_top='env = "staging"'),
        "invalid value for env: 'staging' (expected one of dev)",
        id="unknown-env",
    ),
    pytest.param(
        _with(extra_top="colour = 1"),
        "invalid value for colour: 1 (expected a known key (admin, dns_refresh, drain_timeout, "
        "env, env_file, listeners, log_level, switch_drain_timeout))",
        id="unknown-top-key",
    ),
    pytest.param(
        _with(extra_top='log_level = "loud"'),
        "invalid value for log_level: 'loud' (expected one of debug, info, warning, error)",
        id="bad-log-level",
    ),
    pytest.param(
        _with() + '\n[[listeners]]\nname = "pg"\nlisten = "127.0.0.1:5433"\n'
        '[listeners.environments]\ndev = ["127.0.0.1:1"]\n',
        "invalid value for listeners[1].name: 'pg' (expected a name no other listener uses)",
        id="duplicate-listener-name",
    ),
    pytest.param(
        _with() + '\n[[listeners]]\nname = "pg2"\nlisten = "127.0.0.1:5432"\n'
        '[listeners.environments]\ndev = ["127.0.0.1:1"]\n',
        "invalid value for listeners[1].listen: '127.0.0.1:5432' "
        "(expected an address no other listener uses)",
        id="duplicate-listen",
    ),
    pytest.param(
        _with(listener="[listeners.outlier]\nbase_ejection = 60\nmax_ejection = 30"),
        "invalid value for listeners[0].outlier.max_ejection: 30 (expected at least base_ejection)",
        id="outlier-cap-below-base",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_config_names_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^invalid value for --config: .*nope\.toml"):
        load_config(tmp_path / "nope.toml")


def test_bad_toml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[listeners]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith("invalid value for --config:")
    assert "valid TOML" in str(info.value)


def test_flag_override_beats_file_and_is_checked() -> None:
    cfg = parse_config(tomllib.loads(_with(extra_top='env = "dev"')), overrides={"env": None})
    assert cfg.env == "dev"
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(_with()), overrides={"env": "qa"})
    assert str(info.value) == "invalid value for --env: 'qa' (expected one of dev)"


@pytest.mark.parametrize(
    ("text", "envs"),
    [
        ("dev=127.0.0.1:1", ("dev", [HostPort("127.0.0.1", 1)])),
        ("prod=a:1,b:2,a:1", ("prod", [HostPort("a", 1), HostPort("b", 2)])),
        (" test = [::1]:5432", ("test", [HostPort("::1", 5432)])),
    ],
)
def test_parse_backend(text: str, envs: tuple[str, list[HostPort]]) -> None:
    env = parse_backend(text)
    assert (env.name, list(env.endpoints)) == envs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"backends": ["dev"]},
            "invalid value for --backend: 'dev' (expected ENV=HOST:PORT[,HOST:PORT...])",
        ),
        (
            {"backends": ["dev=db"]},
            "invalid value for --backend: 'db' "
            "(expected host:port, [ipv6]:port or :port with a port 0-65535)",
        ),
        (
            {"backends": ["dev=a:1", "dev=b:2"]},
            "invalid value for --backend: 'dev=b:2' (expected each environment once)",
        ),
        (
            {"backends": []},
            "invalid value for --backend: None (expected at least one ENV=HOST:PORT)",
        ),
        (
            {"backends": ["dev=a:1"], "env": "prod"},
            "invalid value for --env: 'prod' (expected one of dev)",
        ),
        (
            {"backends": ["dev=a:1"], "listen": "10.0.0.1:5432"},
            "invalid value for --listen: '10.0.0.1:5432' "
            "(expected a loopback address, or --bind-public)",
        ),
        (
            {"backends": ["dev=a:1"], "admin": "nope"},
            "invalid value for --admin: 'nope' "
            "(expected host:port, [ipv6]:port or :port with a port 0-65535)",
        ),
    ],
)
def test_bad_flags_name_the_flag(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"listen": "127.0.0.1:5432", **kwargs}
    with pytest.raises(ConfigError) as info:
        from_flags(**args)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_flags_build_one_listener() -> None:
    cfg = from_flags(
        listen=":15432",
        backends=["dev=127.0.0.1:1", "prod=10.0.0.1:5432,10.0.0.2:5432"],
        env="prod",
        admin=":9901",
    )
    (lst,) = cfg.listeners
    assert lst.listen == HostPort("127.0.0.1", 15432)
    assert list(lst.environments) == ["dev", "prod"]
    assert cfg.env == "prod" and cfg.admin == HostPort("127.0.0.1", 9901)


def test_initial_env_order(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    base = from_flags(listen=":1", backends=["dev=a:1", "prod=b:1"], env="dev", env_file=env_file)
    # File missing: the flag.
    assert resolve_initial_env(base) == ("dev", "start")
    env_file.write_text("prod\n")
    assert resolve_initial_env(base) == ("prod", "env_file")
    # An unknown name in the file does not win.
    env_file.write_text("staging\n")
    assert resolve_initial_env(base) == ("dev", "start")
    none = from_flags(listen=":1", backends=["dev=a:1", "prod=b:1"])
    assert resolve_initial_env(none) == (None, "start")
    single = from_flags(listen=":1", backends=["dev=a:1"])
    assert resolve_initial_env(single) == ("dev", "start")


def test_check_output_marks_current_and_warns_about_gaps() -> None:
    cfg = parse_config(
        tomllib.loads(
            BASE + '\n[[listeners]]\nname = "cache"\nlisten = "127.0.0.1:6379"\n'
            '[listeners.environments]\ndev = ["127.0.0.1:7001"]\n'
        ),
        overrides={"env": "dev"},
    )
    assert describe(cfg) == [
        "environments: dev, prod",
        "current: dev (from start)",
        "listener pg: 127.0.0.1:5432 protocol=postgres policy=peak_ewma health=tcp",
        "  * dev -> 127.0.0.1:6001",
        "    prod -> db-0.prod:5432, db-1.prod:5432",
        "listener cache: 127.0.0.1:6379 protocol=tcp policy=peak_ewma health=tcp",
        "  * dev -> 127.0.0.1:7001",
        "warning: environment prod has no endpoints on listener(s) cache: "
        "they refuse clients while it is current",
    ]


# --------------------------------------------------------------------------- L7, TLS, discovery

L7 = """
[[listeners]]
name = "pg"
listen = "127.0.0.1:5432"
protocol = "postgres"
tls = {{ sslmode = "require" }}
[listeners.environments]
dev = {{ endpoints = ["127.0.0.1:6001"], tls = false }}
test = ["127.0.0.1:6002"]
prod = {{ endpoints = ["127.0.0.1:6003"], tls = {{ sslmode = "verify-full", ca_file = "{ca}" }} }}

[[listeners]]
name = "api"
listen = "127.0.0.1:8080"
protocol = "http"
[listeners.http]
request_timeout = "5s"
upstream_host = "api.internal"
inject_headers = {{ Authorization = "/run/secrets/api-token" }}
retry = {{ max_retries = 1 }}
[listeners.environments]
dev = ["127.0.0.1:9001"]
[listeners.environments.prod.discover]
etcd = "http://127.0.0.1:2379"
prefix = "/services/api"
environment = "prod"
"""


def test_tls_http_and_discover_keys(tmp_path: Path) -> None:
    from ambassador.config import EtcdDiscoveryConfig
    from ambassador.tls import UpstreamTLS

    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here beyond existing\n")
    cfg = parse_config(tomllib.loads(L7.format(ca=ca)), overrides={"env": "prod"})
    pg, api = cfg.listeners
    assert pg.tls == UpstreamTLS(sslmode="require")
    # tls = false turns the listener's TLS off for one environment; no key inherits it.
    assert pg.environments["dev"].tls is None
    assert pg.environments["test"].tls == UpstreamTLS(sslmode="require")
    assert pg.environments["prod"].tls == UpstreamTLS(ca_file=ca, sslmode="verify-full")
    assert api.http.request_timeout == 5.0
    assert api.http.upstream_host == "api.internal"
    assert api.http.inject_headers == (("authorization", Path("/run/secrets/api-token")),)
    assert api.http.retry.max_retries == 1
    assert pg.http.request_timeout == 30.0  # defaults where the table is absent
    prod = api.environments["prod"]
    assert prod.endpoints == ()
    assert prod.discover == EtcdDiscoveryConfig("http://127.0.0.1:2379", "/services/api", "prod")
    assert api.environments["dev"].discover is None
    assert describe(cfg) == [
        "environments: dev, test, prod",
        "current: prod (from start)",
        "listener pg: 127.0.0.1:5432 protocol=postgres policy=peak_ewma health=tcp",
        "    dev -> 127.0.0.1:6001",
        "    test -> 127.0.0.1:6002 [tls sslmode=require]",
        f"  * prod -> 127.0.0.1:6003 [tls sslmode=verify-full ca={ca}]",
        "listener api: 127.0.0.1:8080 protocol=http policy=peak_ewma health=tcp",
        "    http: request_timeout=5s retries=1 on 502,503,504 pool_max_idle=64"
        " upstream_host=api.internal inject authorization from /run/secrets/api-token",
        "    dev -> 127.0.0.1:9001",
        "  * prod -> etcd http://127.0.0.1:2379 prefix /services/api environment=prod",
        "warning: environment test has no endpoints on listener(s) api: "
        "they refuse clients while it is current",
    ]


def _env(spec: str, *, protocol: str = "tcp", listener: str = "") -> str:
    return (
        f'[[listeners]]\nname = "x"\nlisten = "127.0.0.1:1"\nprotocol = "{protocol}"\n'
        f"{listener}\n[listeners.environments]\ndev = {spec}\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            _env(
                '{ endpoints = ["127.0.0.1:2"], discover = { etcd = "http://e:2379", '
                'prefix = "/s" } }'
            ),
            "invalid value for listeners[0].environments.dev.discover: "
            "{'etcd': 'http://e:2379', 'prefix': '/s'} (expected either endpoints or discover, "
            "not both)",
            id="endpoints-and-discover",
        ),
        pytest.param(
            _env('{ discover = { prefix = "/s" } }'),
            "invalid value for listeners[0].environments.dev.discover.etcd: None "
            "(expected an etcd URL like http://127.0.0.1:2379)",
            id="discover-needs-etcd",
        ),
        pytest.param(
            _env('{ discover = { etcd = "127.0.0.1:2379", prefix = "/s" } }'),
            "invalid value for listeners[0].environments.dev.discover.etcd: '127.0.0.1:2379' "
            "(expected an etcd URL like http://127.0.0.1:2379)",
            id="discover-etcd-url",
        ),
        pytest.param(
            _env('{ discover = { etcd = "http://e:2379", prefix = "/" } }'),
            "invalid value for listeners[0].environments.dev.discover.prefix: '/' "
            "(expected a key prefix like /services/api)",
            id="discover-prefix",
        ),
        pytest.param(
            _env('{ discover = { etcd = "http://e:2379", prefix = "/s", env = "prod" } }'),
            "invalid value for listeners[0].environments.dev.discover.env: 'prod' "
            "(expected a known key (environment, etcd, prefix))",
            id="discover-typo",
        ),
        pytest.param(
            _env('{ endpoints = ["127.0.0.1:2"], tsl = true }'),
            "invalid value for listeners[0].environments.dev.tsl: True "
            "(expected a known key (discover, endpoints, tls))",
            id="env-typo",
        ),
        pytest.param(
            _env('["127.0.0.1:2"]', listener='tls = { sslmode = "require" }'),
            "invalid value for listeners[0].tls.sslmode: 'require' "
            '(expected sslmode only with protocol = "postgres")',
            id="sslmode-needs-postgres",
        ),
        pytest.param(
            _env('{ endpoints = ["127.0.0.1:2"], tls = { ca_file = "/nonexistent/ca.pem" } }'),
            "invalid value for listeners[0].environments.dev.tls.ca_file: '/nonexistent/ca.pem' "
            "(expected an existing readable file)",
            id="missing-ca",
        ),
        pytest.param(
            _env('["127.0.0.1:2"]', listener="http = { request_timeout = 5 }"),
            "invalid value for listeners[0].http: {'request_timeout': 5} "
            '(expected an http table only with protocol = "http")',
            id="http-needs-http",
        ),
        pytest.param(
            _env(
                '["127.0.0.1:2"]',
                protocol="http",
                listener="http = { retry = { max_retries = 11 } }",
            ),
            "invalid value for listeners[0].http.retry.max_retries: 11 "
            "(expected an integer between 0 and 10)",
            id="http-retry-range",
        ),
    ],
)
def test_bad_l7_config_names_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value) == message
