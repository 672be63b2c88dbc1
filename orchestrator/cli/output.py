"""How every command prints its answer: ``-o/--output json|yaml|table``, one helper for all.

kubectl's convention: a command's answer goes to stdout in one format, and messages go to
stderr. Without ``-o`` the answer is a table on a terminal and JSON anywhere else (a pipe, a
file, a test), so a person gets something readable and a script gets something parseable
without asking. Commands whose answer is a location (``run``, ``aggregate``, ``prepare``)
print just that location without ``-o``, so ``$(early-repair run ...)`` keeps working, and
their summary goes to stderr; ``-o`` then asks for the whole answer on stdout.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import RenderableType


class Output(StrEnum):
    json = "json"
    yaml = "yaml"
    table = "table"


OutputOpt = Annotated[
    Output | None,
    typer.Option(
        "--output",
        "-o",
        help="Answer format on stdout: json, yaml or table (default: table on a terminal,"
        " json otherwise).",
        metavar="FORMAT",
        case_sensitive=False,
    ),
]
LocationOutputOpt = Annotated[
    Output | None,
    typer.Option(
        "--output",
        "-o",
        help="Print the whole answer on stdout as json, yaml or table (default: only the"
        " location; the summary goes to stderr).",
        metavar="FORMAT",
        case_sensitive=False,
    ),
]


def chosen(output: Output | None) -> Output:
    """The format an unset ``-o`` means here: a table for a person, JSON for a program."""
    if output is not None:
        return output
    return Output.table if sys.stdout.isatty() else Output.json


def dumps(data: Any, output: Output, *, stream: bool = False) -> str:
    """``data`` as JSON or YAML text; ``stream``: one compact line / one ``---`` document."""
    if output is Output.yaml:
        import yaml

        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, explicit_start=stream)
    if stream:
        return json.dumps(data, ensure_ascii=False) + "\n"
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render(
    data: Any,
    output: Output | None,
    table: Callable[[], RenderableType],
    *,
    location: str | None = None,
    table_to_stderr: bool = False,
    stream: bool = False,
) -> None:
    """Print a command's answer on stdout.

    ``table`` builds the human form; ``location`` is what a location command prints when no
    ``-o`` is given. ``table_to_stderr``: the table also goes to stderr whenever stdout does
    not get it (commands that always showed it there, for the person watching a pipe).
    """
    if output is None and location is not None:
        if table_to_stderr:
            safe_console(stderr=True).print(table())
        print(printable(location), flush=True)
        return
    fmt = chosen(output)
    if fmt is Output.table:
        safe_console().print(table())
        return
    if table_to_stderr:
        safe_console(stderr=True).print(table())
    sys.stdout.write(dumps(data, fmt, stream=stream))
    sys.stdout.flush()


def only(output: Output | None, allowed: tuple[Output, ...], command: str) -> None:
    """Refuse a format a command has no use for, as bad input naming the choices."""
    from orchestrator.errors import BadInput

    if output is not None and output not in allowed:
        names = " or ".join(o.value for o in allowed)
        raise BadInput(f"--output: {command} prints {names}, not {output.value}")


def json_alias(output: Output | None, as_json: bool) -> Output | None:
    """``--json``, kept from before ``-o`` existed, is ``-o json``."""
    from orchestrator.errors import BadInput

    if not as_json:
        return output
    if output not in (None, Output.json):
        raise BadInput(f"--json means -o json: give one of --json and -o {output.value}")
    return Output.json


def printable(text: str) -> str:
    """``text`` with every control character (ESC, OSC, BEL, CR, bidi overrides...) but
    newline and tab written out visibly: strings from a results store are data, and must
    not move the cursor, retitle the window or hide text on the reader's terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in "\n\t" else ascii(ch)[1:-1] for ch in text)


def safe_console(**options: Any) -> Any:
    """A rich ``Console`` whose text segments are ``printable`` before rich styles them:
    its own colours stay, escape sequences that came with the data do not."""
    from rich.console import Console
    from rich.segment import Segment

    class SafeConsole(Console):
        def render(self, renderable: Any, options: Any = None) -> Any:
            for segment in super().render(renderable, options):
                if segment.control is None and not segment.text.isprintable():
                    yield Segment(printable(segment.text), segment.style)
                else:
                    yield segment

    return SafeConsole(**options)


def printable_warnings() -> None:
    """Warnings (Python's, matplotlib's "Glyph 27 missing from font") go to stderr as
    ``printable`` text: they may quote strings from a results store."""
    import warnings

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        with contextlib.suppress(OSError):  # as warnings' own: a closed stderr is no failure
            (file or sys.stderr).write(printable(text))

    warnings.showwarning = show
