"""A tiny sidecar-shaped typer app for test_settings: settings in, JSON out.

Run as ``python tests/common/settings_app.py [--listen ...] [--workers ...]``;
prints the loaded settings as one JSON object on stdout, or fails the way a
real sidecar does (one line on stderr, exit status 2).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import typer

from sidecar_common.cli import run_app
from sidecar_common.netaddr import HostPort
from sidecar_common.settings import load_settings


@dataclass
class DemoSettings:
    listen: HostPort = field(default=HostPort("127.0.0.1", 8080))
    workers: int = field(default=4, metadata={"min": 1, "max": 64})
    verbose: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    drain_deadline: float = field(default=30.0, metadata={"duration": True})


app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False)


@app.command()
def run(
    listen: Annotated[str | None, typer.Option(help="host:port to listen on")] = None,
    workers: Annotated[str | None, typer.Option(help="worker count")] = None,
    verbose: Annotated[bool | None, typer.Option("--verbose/--quiet")] = None,
    log_level: Annotated[str | None, typer.Option()] = None,
    drain_deadline: Annotated[str | None, typer.Option()] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file")] = None,
) -> None:
    settings = load_settings(
        DemoSettings,
        prefix="AMBASSADOR",
        cli={
            "listen": listen,
            "workers": workers,
            "verbose": verbose,
            "log_level": log_level,
            "drain_deadline": drain_deadline,
        },
        config_file=config,
    )
    values = asdict(settings)
    values["listen"] = str(settings.listen)
    typer.echo(json.dumps(values, sort_keys=True))


if __name__ == "__main__":
    run_app(app, "settings_app")
