"""Command line of the watcher sidecar.

``watcher run`` only gathers what was given on the command line, lets
``sidecar_common.settings`` merge it with ``WATCHER_*`` variables and the TOML
file, validates, and execs the serving process ``watcher.serve`` (same PID,
without this module's libraries; see there). Every option is typed ``str``
here on purpose: conversion happens once, in the settings layer, so a bad
value is reported the same way whichever source it came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from sidecar_common.cli import run_app
from sidecar_common.settings import load_settings, read_toml

from . import __version__
from .config import PREFIX, WatcherSettings, validate

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

Opt = typer.Option


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def run(
    watch: Annotated[
        list[str] | None,
        Opt("--watch", metavar="PATH", help="File or directory to watch (repeatable)."),
    ] = None,
    debounce: Annotated[
        str | None, Opt(help="Seconds a change must be stable (default 0.5).")
    ] = None,
    poll_interval: Annotated[str | None, Opt(help="Seconds between polls (default 0.25).")] = None,
    webhook: Annotated[str | None, Opt(help="Reload URL (http://).")] = None,
    webhook_method: Annotated[str | None, Opt(help="Reload request method (default POST).")] = None,
    webhook_status: Annotated[str | None, Opt(help="Expected reload status (default 200).")] = None,
    webhook_header: Annotated[
        list[str] | None,
        Opt(
            "--webhook-header",
            metavar="HEADER",
            help="Name: value header on the reload request (repeatable).",
        ),
    ] = None,
    webhook_timeout: Annotated[
        str | None, Opt(help="Seconds per reload request (default 5).")
    ] = None,
    signal: Annotated[
        str | None, Opt("--signal", help="Signal sent on change (default HUP).")
    ] = None,
    pid_file: Annotated[str | None, Opt(help="File holding the app pid.")] = None,
    process_name: Annotated[
        str | None, Opt(help="The app process name (shared process namespace).")
    ] = None,
    exec_: Annotated[str | None, Opt("--exec", help="Command run on change (sh -c).")] = None,
    exec_timeout: Annotated[
        str | None, Opt(help="Seconds a reload command may run (default 60).")
    ] = None,
    retries: Annotated[str | None, Opt(help="Attempts per reload action (default 5).")] = None,
    retry_deadline: Annotated[
        str | None, Opt(help="Seconds per reload action with retries (default 30).")
    ] = None,
    probe: Annotated[
        str | None, Opt(help="App probe: http://..., tcp://HOST:PORT or exec:CMD.")
    ] = None,
    probe_period: Annotated[str | None, Opt(help="Seconds between probes (default 10).")] = None,
    probe_timeout: Annotated[str | None, Opt(help="Seconds a probe may take (default 1).")] = None,
    probe_initial_delay: Annotated[
        str | None, Opt(help="Seconds before the first probe (default 0).")
    ] = None,
    probe_success_threshold: Annotated[
        str | None, Opt(help="Successes to become healthy (default 1).")
    ] = None,
    probe_failure_threshold: Annotated[
        str | None, Opt(help="Failures to become unhealthy (default 3).")
    ] = None,
    probe_status: Annotated[
        str | None, Opt(help="Expected HTTP probe status (default 200-399).")
    ] = None,
    etcd: Annotated[str | None, Opt(help="etcd client URL, e.g. http://127.0.0.1:2379.")] = None,
    service: Annotated[str | None, Opt(help="Service name to register.")] = None,
    instance: Annotated[str | None, Opt(help="Instance id (default: host name).")] = None,
    address: Annotated[str | None, Opt(help="The app HOST:PORT to publish.")] = None,
    ttl: Annotated[str | None, Opt(help="Lease TTL in seconds (default 10).")] = None,
    prefix: Annotated[str | None, Opt(help="etcd key prefix (default /services).")] = None,
    environment: Annotated[
        str | None, Opt(help="Environment published (default: default).")
    ] = None,
    app_version: Annotated[str | None, Opt(help="Version published.")] = None,
    on_unhealthy: Annotated[
        str | None, Opt(help="mark or remove an unhealthy app (default mark).")
    ] = None,
    admin: Annotated[str | None, Opt(help="Admin HTTP HOST:PORT (default 127.0.0.1:9103).")] = None,
    log_level: Annotated[
        str | None, Opt(help="debug, info, warning, error (default info).")
    ] = None,
    drain_deadline: Annotated[
        str | None, Opt(help="Seconds to finish on SIGTERM (default 10).")
    ] = None,
    config: Annotated[
        str | None, Opt("--config", help="TOML config file (env WATCHER_CONFIG).")
    ] = None,
) -> None:
    """Watch files and reload the app, probe it, and register it in etcd."""
    cli = dict(locals())
    cli.pop("config")
    cli["exec"] = cli.pop("exec_")
    config_path = config or os.environ.get(f"{PREFIX}_CONFIG") or None
    config_setting = "--config" if config else f"{PREFIX}_CONFIG"
    config_file = Path(config_path) if config_path else None
    section = None
    if config_file is not None:
        # One file may configure all three sidecars ([watcher] table) or only
        # this one (top-level keys).
        data = read_toml(config_file, setting=config_setting)
        section = "watcher" if isinstance(data.get("watcher"), dict) else None
    settings = load_settings(
        WatcherSettings,
        prefix=PREFIX,
        cli=cli,
        config_file=config_file,
        section=section,
        config_setting=config_setting,
    )
    validated = validate(settings)
    # Valid: become the lean serving process (same PID, without typer and
    # pydantic in memory). The admin port is bound there; in use, it is still
    # one `watcher: error:` line and status 2.
    from .serve import become_server

    become_server(validated)


def main() -> None:
    run_app(app, "watcher")
