"""Command line of the ambassador sidecar: ``ambassador run`` and ``ambassador check``.

The commands only build an ``AmbassadorConfig`` (every user error becomes one
``ConfigError`` line and exit status 2 through ``run_app``); ``run`` then hands
it to ``workers.exec_run``, which becomes a lean process (same PID, without
typer and pydantic) that binds and serves, one process or ``--workers N``.
No routing logic lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sidecar_common.cli import run_app
from sidecar_common.errors import ConfigError
from sidecar_common.netaddr import parse_host_port

from .config import (
    LOG_LEVELS,
    AmbassadorConfig,
    from_flags,
    load_config,
    resolve_initial_env,
)
from .http.settings import HttpSettings
from .tls import UpstreamTLS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

#: Grace after ``drain_timeout`` before the lifecycle cancels what is left:
#: the ambassador closes lingering connections itself first, and logs them.
DRAIN_GRACE = 1.0


def _overrides(
    env: str | None, env_file: Path | None, admin: str | None, log_level: str | None
) -> dict[str, object]:
    """Flag/env values that override a config file's keys (validated here, naming the flag)."""
    out: dict[str, object] = {}
    if env is not None and env.strip():
        out["env"] = env.strip()
    if env_file is not None:
        out["env_file"] = env_file
    if admin is not None:
        out["admin"] = parse_host_port(admin, setting="--admin", default_host="127.0.0.1")
    if log_level is not None:
        if log_level not in LOG_LEVELS:
            raise ConfigError("--log-level", log_level, f"one of {', '.join(LOG_LEVELS)}")
        out["log_level"] = log_level
    return out


EnvOpt = Annotated[
    str | None,
    typer.Option(
        "--env",
        envvar="AMBASSADOR_ENV",
        help="Environment at start (default $AMBASSADOR_ENV).",
    ),
]
EnvFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--env-file",
        envvar="AMBASSADOR_ENV_FILE",
        help="File naming the environment (a ConfigMap key); watched for changes.",
    ),
]
AdminOpt = Annotated[
    str | None,
    typer.Option(
        "--admin",
        envvar="AMBASSADOR_ADMIN",
        help="Admin server HOST:PORT (/healthz, /readyz, /metrics, /env).",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", envvar="AMBASSADOR_CONFIG", help="TOML file with listeners."),
]
LogLevelOpt = Annotated[
    str | None,
    typer.Option("--log-level", envvar="AMBASSADOR_LOG_LEVEL", help="debug, info, warning, error."),
]


def build_config(
    *,
    config: Path | None,
    listen: str | None,
    backend: list[str] | None,
    env: str | None,
    env_file: Path | None,
    admin: str | None,
    log_level: str | None,
    bind_public: bool = False,
    protocol: str = "tcp",
    policy: str = "peak_ewma",
    health_check: str = "tcp",
    drain_timeout: float | None = None,
) -> tuple[AmbassadorConfig, dict[str, object]]:
    """The config of ``run``/``check`` from either ``--config`` or ``--listen/--backend``."""
    overrides = _overrides(env, env_file, admin, log_level)
    if config is not None:
        if listen is not None or backend:
            raise ConfigError("--config", str(config), "either --config or --listen/--backend")
        if drain_timeout is not None:
            overrides["drain_timeout"] = drain_timeout
        return load_config(config, overrides=overrides), overrides
    if listen is None:
        raise ConfigError("--listen", None, "HOST:PORT (or --config FILE)")
    env_value = overrides.get("env")
    cfg = from_flags(
        listen=listen,
        backends=backend or [],
        env=env_value if isinstance(env_value, str) else None,
        env_file=env_file,
        admin=admin,
        bind_public=bind_public,
        protocol=protocol,
        policy=policy,
        health_check=health_check,
        log_level=log_level or "info",
        drain_timeout=drain_timeout,
    )
    return cfg, overrides


@app.command()
def run(
    config: ConfigOpt = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="Local HOST:PORT to accept clients on.")
    ] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option("--backend", help="ENV=HOST:PORT[,HOST:PORT...]; repeat per environment."),
    ] = None,
    env: EnvOpt = None,
    env_file: EnvFileOpt = None,
    admin: AdminOpt = None,
    log_level: LogLevelOpt = None,
    bind_public: Annotated[
        bool, typer.Option("--bind-public", help="Allow a non-loopback --listen address.")
    ] = False,
    protocol: Annotated[str, typer.Option("--protocol", help="tcp, postgres or http.")] = "tcp",
    policy: Annotated[
        str, typer.Option("--policy", help="peak_ewma, round_robin or least_connections.")
    ] = "peak_ewma",
    health_check: Annotated[
        str, typer.Option("--health-check", help="Active check: tcp, postgres, http or none.")
    ] = "tcp",
    drain_timeout: Annotated[
        float | None,
        typer.Option("--drain-timeout", min=0, help="Seconds connections get after SIGTERM."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            envvar="AMBASSADOR_WORKERS",
            min=1,
            help="Processes sharing each listen port (SO_REUSEPORT).",
        ),
    ] = 1,
) -> None:
    """Forward local ports to the current environment's backends."""
    cfg, overrides = build_config(
        config=config,
        listen=listen,
        backend=backend,
        env=env,
        env_file=env_file,
        admin=admin,
        log_level=log_level,
        bind_public=bind_public,
        protocol=protocol,
        policy=policy,
        health_check=health_check,
        drain_timeout=drain_timeout,
    )
    # Serving needs none of the CLI's imports (typer, click, pydantic: ~12 MB):
    # become a lean process with the same PID that binds and serves.
    from .workers import exec_run

    exec_run(cfg, overrides, workers=workers, drain_grace=DRAIN_GRACE)


@app.command()
def check(
    config: ConfigOpt = None,
    listen: Annotated[str | None, typer.Option("--listen")] = None,
    backend: Annotated[list[str] | None, typer.Option("--backend")] = None,
    env: EnvOpt = None,
    env_file: EnvFileOpt = None,
    admin: AdminOpt = None,
) -> None:
    """Validate a config and print what each listener would route to, without serving."""
    cfg, _ = build_config(
        config=config,
        listen=listen,
        backend=backend,
        env=env,
        env_file=env_file,
        admin=admin,
        log_level=None,
    )
    for line in describe(cfg):
        typer.echo(line)


def describe(cfg: AmbassadorConfig) -> list[str]:
    """Human-readable routing table of a config (the output of ``ambassador check``)."""
    current, source = resolve_initial_env(cfg)
    lines = [
        f"environments: {', '.join(cfg.environments)}",
        f"current: {current or '(none: connections refused until one is set)'}"
        + (f" (from {source})" if current else ""),
    ]
    for lst in cfg.listeners:
        hc = lst.health_check
        check_text = hc.type if hc.type != "postgres" else f"postgres role={hc.role}"
        lines.append(
            f"listener {lst.name}: {lst.listen} protocol={lst.protocol} policy={lst.policy}"
            f" health={check_text}"
        )
        if lst.protocol == "http":
            lines.append(f"    http: {_describe_http(lst.http)}")
        for env_name, env_cfg in lst.environments.items():
            mark = "*" if env_name == current else " "
            if env_cfg.discover is not None:
                d = env_cfg.discover
                target = f"etcd {d.etcd} prefix {d.prefix}" + (
                    f" environment={d.environment}" if d.environment else ""
                )
            else:
                target = ", ".join(str(e) for e in env_cfg.endpoints)
            lines.append(
                f"  {mark} {env_name} -> {target}{_describe_tls(env_cfg.tls, lst.protocol)}"
            )
    for env_name in cfg.environments:
        missing = cfg.missing(env_name)
        if missing:
            lines.append(
                f"warning: environment {env_name} has no endpoints on listener(s)"
                f" {', '.join(missing)}: they refuse clients while it is current"
            )
    return lines


def _describe_tls(tls: UpstreamTLS | None, protocol: str) -> str:
    """`` tls=...`` for an environment's line of ``ambassador check`` (empty when plain)."""
    if tls is None:
        return ""
    parts = [f"sslmode={tls.sslmode}"] if protocol == "postgres" else []
    if protocol != "postgres":
        parts.append("verify" if tls.verify else "no-verify")
    if tls.ca_file is not None:
        parts.append(f"ca={tls.ca_file}")
    if tls.server_name is not None:
        parts.append(f"server_name={tls.server_name}")
    if tls.cert_file is not None:
        parts.append(f"client_cert={tls.cert_file}")
    return f" [tls {' '.join(parts)}]"


def _describe_http(http: HttpSettings) -> str:
    r = http.retry
    parts = [
        f"request_timeout={http.request_timeout:g}s",
        f"retries={r.max_retries} on {','.join(str(s) for s in r.on_status)}",
        f"pool_max_idle={http.pool_max_idle}",
    ]
    if http.upstream_host:
        parts.append(f"upstream_host={http.upstream_host}")
    if http.inject_headers:
        injected = ", ".join(f"{name} from {path}" for name, path in http.inject_headers)
        parts.append(f"inject {injected}")
    return " ".join(parts)


def main() -> None:
    run_app(app, "ambassador")
