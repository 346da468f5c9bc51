"""Running a typer app the way a sidecar must be run.

click prints a usage box and typer a rich traceback; a sidecar must instead
print exactly one line naming the bad flag or setting and exit with status 2,
so that ``kubectl logs`` shows the cause at a glance.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

import typer
import typer.main
from typer._click import exceptions as click_exc

from .errors import ConfigError

USAGE_ERROR = 2


def fail(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` on stderr and exit with status 2."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(USAGE_ERROR)


def run_app(app: typer.Typer, prog: str, argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``app`` and turn every user error into one line and exit status 2.

    ``ConfigError`` raised anywhere while the app starts (settings validation)
    is reported the same way; other exceptions are bugs and keep their traceback.
    """
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = command.main(args=args, prog_name=prog, standalone_mode=False)
    except click_exc.NoArgsIsHelpError:
        # typer has already printed the help; no arguments is still a usage error.
        raise SystemExit(USAGE_ERROR) from None
    except click_exc.UsageError as exc:
        fail(prog, " ".join(exc.format_message().split()))
    except click_exc.ClickException as exc:
        fail(prog, " ".join(exc.format_message().split()))
    except ConfigError as exc:
        fail(prog, str(exc))
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        raise SystemExit(130) from None
    raise SystemExit(rv if isinstance(rv, int) else 0)
