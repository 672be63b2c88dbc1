"""The Typer app, its shared argument types and the one place errors become exit codes.

Machine-readable output goes to stdout, logs and progress to stderr. Our errors become one
line on stderr and their exit code (0 ok, 1 a run failed, 2 bad input, 69 storage failing
after retries, 130 Ctrl-C; see ``orchestrator.errors``); heavy modules
(torch, boto3, kubernetes) are imported inside the commands that need them so that
``early-repair --help`` stays fast and torch-free. Commands are grouped in the help by
where they act (the ``*_PANEL`` names); ``Command`` keeps option help readable at 80
columns.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.exceptions import TyperException

from orchestrator.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EarlyRepairError, one_line

LOCAL_PANEL = "Local"
CLUSTER_PANEL = "Cluster (also --local)"
ANALYSIS_PANEL = "Analysis"
DATA_PANEL = "Data and specs"

# Typer's labels for a value's type, as click (and most CLIs) write them.
_METAVARS = {"str": "TEXT", "int": "INT", "float": "FLOAT", "path": "PATH"}


def _metavar(param: Any, ctx: Any) -> str:
    """``PATH``/``TEXT``/``INT`` after an option, nothing after a flag, SPEC for an argument."""
    if isinstance(param, TyperArgument):
        return (param.name or "arg").upper()
    if getattr(param, "is_flag", False):
        return ""
    if not isinstance(param, TyperOption):
        return param.metavar or ""
    label = param.display_type(ctx).strip("<>")
    label = label.removeprefix("list[").removesuffix("]").removesuffix(" range")
    if "|" in label:
        return f"[{label}]"
    return _METAVARS.get(label, label.upper())


def _no_type(ctx: Any) -> None:
    return None


class _PlainHelp:
    """Help that reads like click's: ``SPEC`` not ``{spec}``, ``PATH`` not ``<path>``, no
    ``<bool>`` after a flag - shorter columns, so that option help is not squeezed into
    one-word lines at 80 columns."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if param.metavar is None:
                param.metavar = _metavar(param, ctx)
            if isinstance(param, TyperArgument):
                # The argument's name already says what it is; Typer would add "<path>".
                param.display_type_rich = _no_type
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        # Typer writes a required argument as {SPEC}; click and man pages write SPEC.
        return [re.sub(r"^\{(.+)\}$", r"\1", piece) for piece in pieces]


class Command(_PlainHelp, TyperCommand):
    """Every command of the app (``App.command`` makes them so)."""


class Group(_PlainHelp, TyperGroup):
    """The app itself: the same plain help for its own options."""


class App(typer.Typer):
    """``typer.Typer`` whose commands are ``Command`` unless they say otherwise."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


app = App(
    name="early-repair",
    cls=Group,
    help="Train, checkpoint, repair (Arachne) and compare - locally or as Kubernetes Jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _version(value: bool) -> None:
    if value:
        from orchestrator import __version__

        print(f"early-repair {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Train, checkpoint, repair (Arachne) and compare - locally or as Kubernetes Jobs."""


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
        err(f"error: {one_line(e.format_message())}{hint}")
        sys.exit(EXIT_BAD_INPUT if e.exit_code == 2 else e.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # typer turns most Ctrl-Cs into Exit(130) itself
        err("aborted")
        sys.exit(EXIT_INTERRUPTED)
    except EarlyRepairError as e:
        err(f"error: {one_line(str(e))}")
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
