"""The ambassador's configuration: one listener from flags, or many from a TOML file.

Everything a user can get wrong is checked here, before a socket is opened, and
reported as one ``ConfigError`` naming the key the way the user wrote it
(``listeners[0].environments.prod.endpoints[1]``), so that ``ambassador check``
and a crash-looping pod both point at the exact line to fix. The result is a tree
of frozen dataclasses the shell reads and never mutates; a reload builds a new one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from sidecar_common.errors import ConfigError
from sidecar_common.netaddr import (
    HostPort,
    IPNetwork,
    is_loopback,
    parse_host_port,
    parse_networks,
)
from sidecar_common.settings import parse_duration, read_toml

from .http.settings import HttpSettings, parse_http_settings
from .tls import UpstreamTLS, parse_upstream_tls

__all__ = [
    "HEALTH_TYPES",
    "LOG_LEVELS",
    "POLICIES",
    "PROTOCOLS",
    "ROLES",
    "AmbassadorConfig",
    "EnvironmentConfig",
    "EtcdDiscoveryConfig",
    "HealthCheckConfig",
    "LimitsConfig",
    "ListenerConfig",
    "OutlierSettings",
    "from_flags",
    "load_config",
    "parse_backend",
    "parse_config",
    "resolve_initial_env",
]

Protocol = Literal["tcp", "postgres", "http"]
HealthType = Literal["none", "tcp", "postgres", "http"]
Role = Literal["primary", "replica", "any"]

PROTOCOLS: tuple[str, ...] = ("tcp", "postgres", "http")
HEALTH_TYPES: tuple[str, ...] = ("none", "tcp", "postgres", "http")
ROLES: tuple[str, ...] = ("primary", "replica", "any")
# Kept here rather than imported from the balancer so that validating a config
# never depends on the routing core being importable; a test pins them equal.
POLICIES: tuple[str, ...] = ("peak_ewma", "round_robin", "least_connections")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")

# An environment name ends up in metric labels, log fields and file contents:
# keep it to a shape that needs no escaping anywhere.
_ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LISTENER_NAME = _ENV_NAME


@dataclass(frozen=True)
class HealthCheckConfig:
    """Active health check of every endpoint of a listener.

    ``type="none"`` disables active checks (endpoints stay healthy; passive
    outlier detection still ejects the ones that refuse connections).
    """

    type: HealthType = "tcp"
    role: Role = "any"
    interval: float = 5.0
    timeout: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    user: str = "postgres"
    password: str | None = None
    database: str = "postgres"
    path: str = "/"
    expect_status: int = 200
    host: str | None = None


@dataclass(frozen=True)
class LimitsConfig:
    """Admission and timing limits of a listener (circuit breaking, as Envoy names them)."""

    max_connections: int | None = None
    max_pending: int = 0
    pending_timeout: float = 1.0
    connect_timeout: float = 2.0
    connect_attempts: int = 3
    idle_timeout: float | None = None
    max_connections_per_endpoint: int | None = None


@dataclass(frozen=True)
class OutlierSettings:
    """Passive outlier detection (Envoy semantics: consecutive connect failures eject)."""

    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: int = 10


@dataclass(frozen=True)
class EtcdDiscoveryConfig:
    """``discover = { etcd = URL, prefix = P, environment = E }``: endpoints from etcd.

    The environment's endpoints are the healthy instances the watchers register
    under ``prefix`` (``<prefix>/<instance>`` with a ``ServiceInstance`` JSON
    value), of ``environment`` only when it is set (None: any environment).
    """

    etcd: str
    prefix: str
    environment: str | None = None


@dataclass(frozen=True)
class EnvironmentConfig:
    """The endpoints one listener routes to while this environment is current.

    ``endpoints`` is empty when ``discover`` names an etcd prefix instead (the
    cluster then starts empty and follows what discovery finds). ``tls`` is
    the resolved upstream TLS: the environment's own ``tls`` key if it has
    one (``false`` turns it off), else the listener's.
    """

    name: str
    endpoints: tuple[HostPort, ...]
    tls: UpstreamTLS | None = None
    discover: EtcdDiscoveryConfig | None = None


@dataclass(frozen=True)
class ListenerConfig:
    """One local port the app connects to, and where each environment sends it."""

    name: str
    listen: HostPort
    environments: Mapping[str, EnvironmentConfig]
    protocol: Protocol = "tcp"
    policy: str = "peak_ewma"
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    outlier: OutlierSettings = field(default_factory=OutlierSettings)
    allow: tuple[IPNetwork, ...] = ()
    bind_public: bool = False
    #: The listener's own ``tls`` key (environments inherit it unless they set theirs).
    tls: UpstreamTLS | None = None
    #: The ``http`` table (``protocol = "http"`` only; defaults otherwise unused).
    http: HttpSettings = field(default_factory=HttpSettings)


@dataclass(frozen=True)
class AmbassadorConfig:
    """The whole process: listeners plus the global switch, admin and shutdown settings."""

    listeners: tuple[ListenerConfig, ...]
    env: str | None = None
    env_file: Path | None = None
    admin: HostPort | None = None
    drain_timeout: float = 30.0
    switch_drain_timeout: float | None = None
    log_level: str = "info"
    dns_refresh: float = 5.0
    config_file: Path | None = None

    @property
    def environments(self) -> tuple[str, ...]:
        """Every environment some listener knows, in first-seen order (the switch's choices)."""
        seen: dict[str, None] = {}
        for listener in self.listeners:
            for name in listener.environments:
                seen.setdefault(name, None)
        return tuple(seen)

    def missing(self, env: str) -> list[str]:
        """Names of the listeners that have no endpoints for ``env`` (they refuse clients)."""
        return [lst.name for lst in self.listeners if env not in lst.environments]


# --------------------------------------------------------------------------- helpers

_TOP_KEYS = (
    "listeners",
    "env",
    "env_file",
    "admin",
    "drain_timeout",
    "switch_drain_timeout",
    "log_level",
    "dns_refresh",
)
_LISTENER_KEYS = (
    "name",
    "listen",
    "protocol",
    "policy",
    "environments",
    "health_check",
    "limits",
    "outlier",
    "allow",
    "bind_public",
    "tls",
    "http",
)
_ENV_KEYS = ("endpoints", "tls", "discover")
_DISCOVER_KEYS = ("etcd", "prefix", "environment")
_HEALTH_KEYS = tuple(HealthCheckConfig.__dataclass_fields__)
_LIMIT_KEYS = (*LimitsConfig.__dataclass_fields__, "max_per_endpoint")
_OUTLIER_KEYS = tuple(OutlierSettings.__dataclass_fields__)


def _norm_keys(table: Mapping[str, Any]) -> dict[str, Any]:
    """TOML keys may use dashes or underscores (``max-connections``): one spelling inside."""
    return {str(k).replace("-", "_"): v for k, v in table.items()}


def _check_keys(table: Mapping[str, Any], known: Sequence[str], path: str) -> None:
    for key in table:
        if key not in known:
            where = f"{path}.{key}" if path else key
            raise ConfigError(where, table[key], f"a known key ({', '.join(sorted(known))})")


def _table(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, value, "a table")
    return _norm_keys(value)


def _str(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, value, "a non-empty string")
    return value.strip()


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, value, "true or false")
    return value


def _int(value: object, path: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, value, "an integer")
    if value < minimum or (maximum is not None and value > maximum):
        span = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(path, value, f"an integer {span}")
    return value


def _duration(value: object, path: str, *, allow_zero: bool = False) -> float:
    """A duration as seconds: a TOML number, or a string like ``250ms``, ``2s``, ``1m``."""
    expected = "a duration like 2s, 250ms or 1.5 (seconds)"
    if isinstance(value, bool):
        raise ConfigError(path, value, expected)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except (ConfigError, ValueError):
            raise ConfigError(path, value, expected) from None
    else:
        raise ConfigError(path, value, expected)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ConfigError(path, value, expected)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigError(path, value, "a positive duration")
    return seconds


def _optional_duration(value: object, path: str) -> float | None:
    """A duration where 0 (or "0s") means "no limit"."""
    seconds = _duration(value, path, allow_zero=True)
    return None if seconds == 0 else seconds


def _choice(value: object, path: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(path, value, f"one of {', '.join(choices)}")
    return value


def _env_name(value: object, path: str) -> str:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ConfigError(path, value, "a name of letters, digits, '.', '_' or '-'")
    return value


def _endpoint(value: object, path: str) -> HostPort:
    if not isinstance(value, str):
        raise ConfigError(path, value, "host:port")
    hp = parse_host_port(value, setting=path)
    if hp.port == 0:
        raise ConfigError(path, value, "host:port with a port between 1 and 65535")
    return hp


# --------------------------------------------------------------------------- sections


def _health(value: object, path: str) -> HealthCheckConfig:
    table = _table(value, path)
    _check_keys(table, _HEALTH_KEYS, path)
    d = HealthCheckConfig()
    kwargs: dict[str, Any] = {}
    if "type" in table:
        kwargs["type"] = _choice(table["type"], f"{path}.type", HEALTH_TYPES)
    if "role" in table:
        kwargs["role"] = _choice(table["role"], f"{path}.role", ROLES)
    for key in ("interval", "timeout"):
        if key in table:
            kwargs[key] = _duration(table[key], f"{path}.{key}")
    for key in ("healthy_threshold", "unhealthy_threshold"):
        if key in table:
            kwargs[key] = _int(table[key], f"{path}.{key}", minimum=1, maximum=100)
    for key in ("user", "database", "path", "host"):
        if key in table:
            kwargs[key] = _str(table[key], f"{path}.{key}")
    if "password" in table:
        if not isinstance(table["password"], str):
            raise ConfigError(f"{path}.password", "<hidden>", "a string")
        kwargs["password"] = table["password"]
    if "expect_status" in table:
        kwargs["expect_status"] = _int(
            table["expect_status"], f"{path}.expect_status", minimum=100, maximum=599
        )
    hc = HealthCheckConfig(**{**d.__dict__, **kwargs})
    if hc.timeout > hc.interval:
        raise ConfigError(f"{path}.timeout", table.get("timeout", hc.timeout), "at most interval")
    if "role" in kwargs and hc.type != "postgres" and hc.role != "any":
        raise ConfigError(f"{path}.role", hc.role, 'role only with type = "postgres"')
    if hc.path and not hc.path.startswith("/"):
        raise ConfigError(f"{path}.path", hc.path, "an absolute path starting with /")
    return hc


def _limits(value: object, path: str) -> LimitsConfig:
    table = _table(value, path)
    _check_keys(table, _LIMIT_KEYS, path)
    if "max_per_endpoint" in table:
        if "max_connections_per_endpoint" in table:
            raise ConfigError(
                f"{path}.max_per_endpoint",
                table["max_per_endpoint"],
                "only one of max_per_endpoint and max_connections_per_endpoint",
            )
        table["max_connections_per_endpoint"] = table.pop("max_per_endpoint")
    kwargs: dict[str, Any] = {}
    for key in ("max_connections", "max_connections_per_endpoint"):
        if key in table:
            n = _int(table[key], f"{path}.{key}", minimum=0)
            kwargs[key] = None if n == 0 else n
    if "max_pending" in table:
        kwargs["max_pending"] = _int(table["max_pending"], f"{path}.max_pending", minimum=0)
    for key in ("pending_timeout", "connect_timeout"):
        if key in table:
            kwargs[key] = _duration(table[key], f"{path}.{key}")
    if "connect_attempts" in table:
        kwargs["connect_attempts"] = _int(
            table["connect_attempts"], f"{path}.connect_attempts", minimum=1, maximum=100
        )
    if "idle_timeout" in table:
        kwargs["idle_timeout"] = _optional_duration(table["idle_timeout"], f"{path}.idle_timeout")
    return LimitsConfig(**kwargs)


def _outlier(value: object, path: str) -> OutlierSettings:
    table = _table(value, path)
    _check_keys(table, _OUTLIER_KEYS, path)
    kwargs: dict[str, Any] = {}
    if "consecutive_failures" in table:
        kwargs["consecutive_failures"] = _int(
            table["consecutive_failures"], f"{path}.consecutive_failures", minimum=1
        )
    for key in ("base_ejection", "max_ejection"):
        if key in table:
            kwargs[key] = _duration(table[key], f"{path}.{key}")
    if "max_ejection_percent" in table:
        kwargs["max_ejection_percent"] = _int(
            table["max_ejection_percent"], f"{path}.max_ejection_percent", minimum=0, maximum=100
        )
    out = OutlierSettings(**kwargs)
    if out.max_ejection < out.base_ejection:
        raise ConfigError(
            f"{path}.max_ejection", table.get("max_ejection"), "at least base_ejection"
        )
    return out


def _discover(value: object, path: str) -> EtcdDiscoveryConfig:
    """``{ etcd = "http://127.0.0.1:2379", prefix = "/services/api", environment = "prod" }``."""
    table = _table(value, path)
    _check_keys(table, _DISCOVER_KEYS, path)
    for required, expected in (
        ("etcd", "an etcd URL like http://127.0.0.1:2379"),
        ("prefix", "a key prefix like /services/api"),
    ):
        if required not in table:
            raise ConfigError(f"{path}.{required}", None, expected)
    url = _str(table["etcd"], f"{path}.etcd")
    scheme, sep, rest = url.partition("://")
    if scheme not in ("http", "https") or not sep or not rest.strip("/"):
        raise ConfigError(f"{path}.etcd", url, "an etcd URL like http://127.0.0.1:2379")
    prefix = _str(table["prefix"], f"{path}.prefix")
    if not prefix.strip("/"):
        raise ConfigError(f"{path}.prefix", prefix, "a key prefix like /services/api")
    environment = (
        _env_name(table["environment"], f"{path}.environment") if "environment" in table else None
    )
    return EtcdDiscoveryConfig(url.rstrip("/"), prefix, environment)


def _environments(
    value: object,
    path: str,
    *,
    protocol: str = "tcp",
    listener_tls: UpstreamTLS | None = None,
) -> dict[str, EnvironmentConfig]:
    """Each environment name maps to a list of endpoints or to a table.

    The table form: ``{endpoints = [...], tls = ...}`` or ``{discover = {...}, tls = ...}``
    (endpoints and discover are mutually exclusive).
    """
    table = _table(value, path)
    if not table:
        raise ConfigError(path, value, "at least one environment")
    envs: dict[str, EnvironmentConfig] = {}
    for name, spec in table.items():
        env_path = f"{path}.{name}"
        _env_name(name, env_path)
        tls = listener_tls
        discover: EtcdDiscoveryConfig | None = None
        if isinstance(spec, Mapping):
            spec_table = _norm_keys(spec)
            _check_keys(spec_table, _ENV_KEYS, env_path)
            if "tls" in spec_table:
                tls = parse_upstream_tls(spec_table["tls"], f"{env_path}.tls", protocol=protocol)
            if "discover" in spec_table:
                if "endpoints" in spec_table:
                    raise ConfigError(
                        f"{env_path}.discover",
                        spec_table["discover"],
                        "either endpoints or discover, not both",
                    )
                discover = _discover(spec_table["discover"], f"{env_path}.discover")
                envs[name] = EnvironmentConfig(name, (), tls=tls, discover=discover)
                continue
            if "endpoints" not in spec_table:
                raise ConfigError(
                    f"{env_path}.endpoints", None, "a list of host:port (or a discover table)"
                )
            items = spec_table["endpoints"]
            items_path = f"{env_path}.endpoints"
        else:
            items = spec
            items_path = env_path
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not items:
            raise ConfigError(items_path, items, "a non-empty list of host:port")
        endpoints: list[HostPort] = []
        for i, item in enumerate(items):
            hp = _endpoint(item, f"{items_path}[{i}]")
            if hp in endpoints:
                raise ConfigError(f"{items_path}[{i}]", item, "each endpoint once")
            endpoints.append(hp)
        envs[name] = EnvironmentConfig(name, tuple(endpoints), tls=tls)
    return envs


def _listener(value: object, path: str) -> ListenerConfig:
    table = _table(value, path)
    _check_keys(table, _LISTENER_KEYS, path)
    for required in ("name", "listen", "environments"):
        if required not in table:
            raise ConfigError(f"{path}.{required}", None, f"the listener's {required}")
    name = table["name"]
    if not isinstance(name, str) or not _LISTENER_NAME.match(name):
        raise ConfigError(f"{path}.name", name, "a name of letters, digits, '.', '_' or '-'")
    if not isinstance(table["listen"], str):
        raise ConfigError(f"{path}.listen", table["listen"], "host:port")
    listen = parse_host_port(table["listen"], setting=f"{path}.listen", default_host="127.0.0.1")
    bind_public = _bool(table.get("bind_public", False), f"{path}.bind_public")
    if not bind_public and not is_loopback(listen.host):
        raise ConfigError(
            f"{path}.listen", table["listen"], "a loopback address, or bind_public = true"
        )
    protocol = cast(Protocol, _choice(table.get("protocol", "tcp"), f"{path}.protocol", PROTOCOLS))
    policy = _choice(table.get("policy", "peak_ewma"), f"{path}.policy", POLICIES)
    health = (
        _health(table["health_check"], f"{path}.health_check")
        if "health_check" in table
        else HealthCheckConfig()
    )
    allow_raw = table.get("allow", [])
    if isinstance(allow_raw, str):
        allow_raw = [allow_raw]
    if not isinstance(allow_raw, list) or not all(isinstance(a, str) for a in allow_raw):
        raise ConfigError(f"{path}.allow", allow_raw, "a list of networks (CIDR)")
    allow = tuple(parse_networks(allow_raw, setting=f"{path}.allow"))
    listener_tls = (
        parse_upstream_tls(table["tls"], f"{path}.tls", protocol=protocol)
        if "tls" in table
        else None
    )
    if "http" in table and protocol != "http":
        raise ConfigError(
            f"{path}.http", table["http"], 'an http table only with protocol = "http"'
        )
    http = parse_http_settings(table["http"], f"{path}.http") if "http" in table else HttpSettings()
    return ListenerConfig(
        name=name,
        listen=listen,
        environments=_environments(
            table["environments"],
            f"{path}.environments",
            protocol=protocol,
            listener_tls=listener_tls,
        ),
        protocol=protocol,
        policy=policy,
        health_check=health,
        limits=_limits(table.get("limits", {}), f"{path}.limits"),
        outlier=_outlier(table.get("outlier", {}), f"{path}.outlier"),
        allow=allow,
        bind_public=bind_public,
        tls=listener_tls,
        http=http,
    )


def _check_listeners(listeners: Sequence[ListenerConfig], path: str) -> None:
    names: set[str] = set()
    addresses: set[HostPort] = set()
    for i, lst in enumerate(listeners):
        if lst.name in names:
            raise ConfigError(f"{path}[{i}].name", lst.name, "a name no other listener uses")
        names.add(lst.name)
        if lst.listen.port != 0 and lst.listen in addresses:
            raise ConfigError(
                f"{path}[{i}].listen", str(lst.listen), "an address no other listener uses"
            )
        addresses.add(lst.listen)


def parse_config(
    data: Mapping[str, Any],
    *,
    config_file: Path | None = None,
    overrides: Mapping[str, object] | None = None,
) -> AmbassadorConfig:
    """Build the config from a parsed TOML document, then apply flag/env ``overrides``.

    ``overrides`` holds already validated values keyed by field name (``env``,
    ``env_file``, ``admin``, ``log_level``, ``drain_timeout``); a value of None
    leaves the file's value.
    """
    top = _norm_keys(data)
    _check_keys(top, _TOP_KEYS, "")
    raw_listeners = top.get("listeners")
    if not isinstance(raw_listeners, list) or not raw_listeners:
        raise ConfigError("listeners", raw_listeners, "at least one [[listeners]] table")
    listeners = [_listener(item, f"listeners[{i}]") for i, item in enumerate(raw_listeners)]
    _check_listeners(listeners, "listeners")
    kwargs: dict[str, Any] = {"listeners": tuple(listeners), "config_file": config_file}
    if "env" in top:
        kwargs["env"] = _env_name(top["env"], "env")
    if "env_file" in top:
        kwargs["env_file"] = Path(_str(top["env_file"], "env_file"))
    if "admin" in top:
        kwargs["admin"] = _admin(top["admin"], "admin")
    if "drain_timeout" in top:
        kwargs["drain_timeout"] = _duration(top["drain_timeout"], "drain_timeout", allow_zero=True)
    if "switch_drain_timeout" in top:
        kwargs["switch_drain_timeout"] = _optional_duration(
            top["switch_drain_timeout"], "switch_drain_timeout"
        )
    if "log_level" in top:
        kwargs["log_level"] = _choice(top["log_level"], "log_level", LOG_LEVELS)
    if "dns_refresh" in top:
        kwargs["dns_refresh"] = _duration(top["dns_refresh"], "dns_refresh")
    for key, value in (overrides or {}).items():
        if value is not None:
            kwargs[key] = value
    cfg = AmbassadorConfig(**kwargs)
    if cfg.env is not None and cfg.env not in cfg.environments:
        where = "--env" if (overrides or {}).get("env") is not None else "env"
        raise ConfigError(where, cfg.env, f"one of {', '.join(cfg.environments)}")
    return cfg


def _admin(value: object, setting: str) -> HostPort:
    if not isinstance(value, str):
        raise ConfigError(setting, value, "host:port")
    return parse_host_port(value, setting=setting, default_host="127.0.0.1")


def load_config(path: Path, *, overrides: Mapping[str, object] | None = None) -> AmbassadorConfig:
    """Read and validate a TOML config file (``ambassador run/check --config``)."""
    data = read_toml(path, setting="--config")
    return parse_config(data, config_file=path, overrides=overrides)


def parse_backend(text: str, *, setting: str = "--backend") -> EnvironmentConfig:
    """``ENV=HOST:PORT[,HOST:PORT...]`` from the command line."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise ConfigError(setting, text, "ENV=HOST:PORT[,HOST:PORT...]")
    _env_name(name, setting)
    endpoints: list[HostPort] = []
    for item in rest.split(","):
        hp = parse_host_port(item, setting=setting)
        if hp.port == 0:
            raise ConfigError(setting, text, "ENV=HOST:PORT with ports between 1 and 65535")
        if hp not in endpoints:
            endpoints.append(hp)
    return EnvironmentConfig(name, tuple(endpoints))


def from_flags(
    *,
    listen: str,
    backends: Sequence[str],
    env: str | None = None,
    env_file: Path | None = None,
    admin: str | None = None,
    bind_public: bool = False,
    protocol: str = "tcp",
    policy: str = "peak_ewma",
    health_check: str = "tcp",
    log_level: str = "info",
    drain_timeout: float | None = None,
    name: str = "default",
) -> AmbassadorConfig:
    """One listener from ``ambassador run --listen ... --backend ...``; errors name the flag."""
    listen_hp = parse_host_port(listen, setting="--listen", default_host="127.0.0.1")
    if not bind_public and not is_loopback(listen_hp.host):
        raise ConfigError("--listen", listen, "a loopback address, or --bind-public")
    if not backends:
        raise ConfigError("--backend", None, "at least one ENV=HOST:PORT")
    envs: dict[str, EnvironmentConfig] = {}
    for text in backends:
        env_cfg = parse_backend(text)
        if env_cfg.name in envs:
            raise ConfigError("--backend", text, "each environment once")
        envs[env_cfg.name] = env_cfg
    if env is not None:
        _env_name(env, "--env")
        if env not in envs:
            raise ConfigError("--env", env, f"one of {', '.join(envs)}")
    listener = ListenerConfig(
        name=name,
        listen=listen_hp,
        environments=envs,
        protocol=cast(Protocol, _choice(protocol, "--protocol", PROTOCOLS)),
        policy=_choice(policy, "--policy", POLICIES),
        health_check=HealthCheckConfig(
            type=cast(HealthType, _choice(health_check, "--health-check", HEALTH_TYPES))
        ),
        bind_public=bind_public,
    )
    return AmbassadorConfig(
        listeners=(listener,),
        env=env,
        env_file=env_file,
        admin=_admin(admin, "--admin") if admin is not None else None,
        drain_timeout=30.0 if drain_timeout is None else drain_timeout,
        log_level=_choice(log_level, "--log-level", LOG_LEVELS),
    )


def read_env_file(path: Path) -> str | None:
    """The environment named by an env file (stripped content); None if missing or empty.

    The file is usually a ConfigMap key: a symlink into ``..data``; ``Path.read_text``
    follows it, so the swap Kubernetes does is read atomically.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None


def resolve_initial_env(cfg: AmbassadorConfig) -> tuple[str | None, str]:
    """The environment at start and where it came from.

    Order: the env file when it exists and names a known environment (it is the
    runtime switch, so it must win over a stale flag), then ``--env`` /
    ``$AMBASSADOR_ENV`` / the file's ``env``, then the only environment if there is
    just one. None means no environment: the listeners refuse clients and /readyz
    says why until one is set.
    """
    if cfg.env_file is not None:
        from_file = read_env_file(cfg.env_file)
        if from_file is not None and from_file in cfg.environments:
            return from_file, "env_file"
    if cfg.env is not None:
        return cfg.env, "start"
    if len(cfg.environments) == 1:
        return cfg.environments[0], "start"
    return None, "start"


def env_from_environ(environ: Mapping[str, str] | None = None) -> str | None:
    """``$AMBASSADOR_ENV``, stripped; empty counts as unset."""
    value = (os.environ if environ is None else environ).get("AMBASSADOR_ENV", "").strip()
    return value or None
