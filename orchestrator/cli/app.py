"""The Typer app, its shared argument types and the one place errors become exit codes.

Machine-readable output goes to stdout, logs and progress to stderr. Our errors become one
line on stderr and their exit code (0 ok, 1 a run failed, 2 bad input); heavy modules
(torch, boto3, kubernetes) are imported inside the commands that need them so that
``early-repair --help`` stays fast and torch-free.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from orchestrator.errors import EXIT_BAD_INPUT, EarlyRepairError

app = typer.Typer(
    name="early-repair",
    help="Train, checkpoint, repair (Arachne) and compare - locally or as Kubernetes Jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Keeps every command a sub-command, even while only one exists."""


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


SpecArg = Annotated[
    Path,
    typer.Argument(help="Sweep spec (YAML), e.g. settings/quickstart.yaml.", show_default=False),
]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app and map our errors to one line and an exit code."""
    try:
        rv = app(args=argv, prog_name="early-repair", standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except TyperException as e:  # usage errors: unknown flag, bad value, missing argument
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx else ""
        err(f"error: {e.format_message()}{hint}")
        sys.exit(EXIT_BAD_INPUT if e.exit_code == 2 else e.exit_code)
    except typer.Abort:
        err("aborted")
        sys.exit(130)
    except EarlyRepairError as e:
        err(f"error: {e}")
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
