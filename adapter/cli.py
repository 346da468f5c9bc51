"""Command line of the adapter sidecar (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from sidecar_common.cli import run_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo("0.1.0")


def main() -> None:
    run_app(app, "adapter")
