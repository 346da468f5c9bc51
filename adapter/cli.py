"""Command line of the adapter sidecar: ``adapter run [options] [-- CMD ARGS...]``.

The command only gathers flags, loads the settings (flags > ``ADAPTER_*``
environment > ``--config`` TOML file > defaults) and calls ``app.run``. Every
option defaults to None so that "not given" falls through to the next source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sidecar_common.cli import run_app
from sidecar_common.errors import ConfigError
from sidecar_common.jsonlog import setup_logging

from . import app as adapter_app
from .config import load

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

Opt = typer.Option


@app.command(
    context_settings={"allow_interspersed_args": False},
    help="Normalise the log lines of stdin, of a wrapped command (after --) or of tailed files "
    "into ECS or OpenTelemetry JSON, on stdout or to a Fluentd forward collector.",
)
def run(
    command: Annotated[list[str] | None, typer.Argument(help="command to run (after --)")] = None,
    format: Annotated[str | None, Opt("--format", help="auto or a format name")] = None,
    schema: Annotated[str | None, Opt("--schema", help="ecs or otel")] = None,
    timezone: Annotated[str | None, Opt("--timezone", help="zone of naive timestamps")] = None,
    keep_original: Annotated[
        bool | None, Opt("--keep-original/--no-keep-original", help="add event.original")
    ] = None,
    pattern: Annotated[
        list[str] | None, Opt("--pattern", help="custom regex with named groups (repeatable)")
    ] = None,
    multiline: Annotated[
        bool | None, Opt("--multiline/--no-multiline", help="join stack traces")
    ] = None,
    continuation: Annotated[
        str | None, Opt("--continuation", help="regex of lines continuing a record")
    ] = None,
    flush_timeout: Annotated[
        str | None, Opt("--flush-timeout", help="multiline wait, e.g. 500ms")
    ] = None,
    field: Annotated[list[str] | None, Opt("--field", help="KEY=VALUE (repeatable)")] = None,
    redact: Annotated[
        list[str] | None, Opt("--redact", help="redaction regex (repeatable)")
    ] = None,
    redact_defaults: Annotated[
        bool | None,
        Opt("--redact-defaults/--no-redact-defaults", help="passwords, tokens, card numbers"),
    ] = None,
    output: Annotated[str | None, Opt("--output", help="stdout or forward")] = None,
    forward_host: Annotated[str | None, Opt("--forward-host")] = None,
    forward_port: Annotated[str | None, Opt("--forward-port")] = None,
    forward_socket: Annotated[str | None, Opt("--forward-socket")] = None,
    forward_tag: Annotated[str | None, Opt("--forward-tag")] = None,
    forward_ack_timeout: Annotated[str | None, Opt("--forward-ack-timeout")] = None,
    forward_retry_max: Annotated[str | None, Opt("--forward-retry-max")] = None,
    forward_chunk_records: Annotated[str | None, Opt("--forward-chunk-records")] = None,
    buffer_dir: Annotated[str | None, Opt("--buffer-dir")] = None,
    buffer_max_bytes: Annotated[str | None, Opt("--buffer-max-bytes")] = None,
    buffer_memory_bytes: Annotated[str | None, Opt("--buffer-memory-bytes")] = None,
    drop_policy: Annotated[
        str | None, Opt("--drop-policy", help="block, drop-newest or drop-oldest")
    ] = None,
    tail: Annotated[list[str] | None, Opt("--tail", help="glob of files to tail")] = None,
    checkpoint: Annotated[str | None, Opt("--checkpoint", help="tail checkpoint file")] = None,
    tail_interval: Annotated[str | None, Opt("--tail-interval")] = None,
    max_line_bytes: Annotated[str | None, Opt("--max-line-bytes")] = None,
    admin: Annotated[
        str | None, Opt("--admin", help="HOST:PORT of /healthz /readyz /metrics")
    ] = None,
    log_level: Annotated[str | None, Opt("--log-level")] = None,
    drain_timeout: Annotated[str | None, Opt("--drain-timeout")] = None,
    config: Annotated[Path | None, Opt("--config", help="TOML config file")] = None,
) -> None:
    values = dict(locals())
    cmd = list(values.pop("command") or [])
    values.pop("config")
    settings = load(values, config_file=config)
    if cmd and settings.tail:
        raise ConfigError("--tail", ",".join(settings.tail), "either --tail or a command, not both")
    setup_logging(settings.log_level)
    raise typer.Exit(adapter_app.run(settings, cmd))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo("0.1.0")


def main() -> None:
    run_app(app, "adapter")
