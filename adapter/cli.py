"""Command line of the adapter sidecar: ``adapter run [options] [-- CMD ARGS...]``.

The command only gathers flags, loads and validates the settings (flags >
``ADAPTER_*`` environment > ``--config`` TOML file > defaults), then execs the
serving process ``adapter.serve`` (same PID, without typer, pydantic, rich and
click in memory; see there). It must not read stdin nor start the wrapped
command: both are the serving process's. Every option defaults to None so
that "not given" falls through to the next source.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from sidecar_common.cli import run_app
from sidecar_common.errors import ConfigError

from .config import AdapterSettings, load

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

HELP = {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(AdapterSettings)}


def opt(name: str, *decls: str) -> Any:
    """A flag whose help is the setting's, naming its environment variable too."""
    flags = decls or ("--" + name.replace("_", "-"),)
    return typer.Option(*flags, help=f"{HELP[name]} (env ADAPTER_{name.upper()})")


@app.command(
    context_settings={"allow_interspersed_args": False},
    help="Normalise the log lines of stdin, of a wrapped command (after --) or of tailed files "
    "into ECS or OpenTelemetry JSON, on stdout or to a Fluentd forward collector.",
)
def run(
    command: Annotated[list[str] | None, typer.Argument(help="command to run (after --)")] = None,
    format: Annotated[str | None, opt("format")] = None,
    schema: Annotated[str | None, opt("schema")] = None,
    timezone: Annotated[str | None, opt("timezone")] = None,
    keep_original: Annotated[
        bool | None, opt("keep_original", "--keep-original/--no-keep-original")
    ] = None,
    pattern: Annotated[list[str] | None, opt("pattern")] = None,
    multiline: Annotated[bool | None, opt("multiline", "--multiline/--no-multiline")] = None,
    continuation: Annotated[str | None, opt("continuation")] = None,
    flush_timeout: Annotated[str | None, opt("flush_timeout")] = None,
    field: Annotated[list[str] | None, opt("field")] = None,
    redact: Annotated[list[str] | None, opt("redact")] = None,
    redact_defaults: Annotated[
        bool | None,
        opt("redact_defaults", "--redact-defaults/--no-redact-defaults"),
    ] = None,
    output: Annotated[str | None, opt("output")] = None,
    forward_host: Annotated[str | None, opt("forward_host")] = None,
    forward_port: Annotated[str | None, opt("forward_port")] = None,
    forward_socket: Annotated[str | None, opt("forward_socket")] = None,
    forward_tag: Annotated[str | None, opt("forward_tag")] = None,
    forward_ack_timeout: Annotated[str | None, opt("forward_ack_timeout")] = None,
    forward_retry_max: Annotated[str | None, opt("forward_retry_max")] = None,
    forward_chunk_records: Annotated[str | None, opt("forward_chunk_records")] = None,
    buffer_dir: Annotated[str | None, opt("buffer_dir")] = None,
    buffer_max_bytes: Annotated[str | None, opt("buffer_max_bytes")] = None,
    buffer_memory_bytes: Annotated[str | None, opt("buffer_memory_bytes")] = None,
    drop_policy: Annotated[str | None, opt("drop_policy")] = None,
    tail: Annotated[list[str] | None, opt("tail")] = None,
    checkpoint: Annotated[str | None, opt("checkpoint")] = None,
    tail_interval: Annotated[str | None, opt("tail_interval")] = None,
    max_line_bytes: Annotated[str | None, opt("max_line_bytes")] = None,
    admin: Annotated[str | None, opt("admin")] = None,
    log_level: Annotated[str | None, opt("log_level")] = None,
    drain_timeout: Annotated[str | None, opt("drain_timeout")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML config file (keys: the flag names)")
    ] = None,
) -> None:
    values = dict(locals())
    cmd = list(values.pop("command") or [])
    values.pop("config")
    settings = load(values, config_file=config)
    if cmd and settings.tail:
        raise ConfigError("--tail", ",".join(settings.tail), "either --tail or a command, not both")
    # Valid: become the lean serving process (same PID, stdin unread, the
    # command not started yet). Logging is set up there.
    from .serve import become_server

    become_server(settings, cmd)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo("0.1.0")


def main() -> None:
    run_app(app, "adapter")
