"""What is wrong with a results tree, as lines of ``problems.csv`` rather than crashes.

A sweep that is still running, a torn write, a record with an impossible value: each is
one ``Problem`` naming the store key and what to do, left out of every table; only
``--strict`` turns them into bad input (one line, exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from orchestrator.analysis.words import plural
from orchestrator.errors import BadInput
from orchestrator.errors import one_line as errors_one_line

# Problem kinds, in the order the report lists them.
UNREADABLE = "unreadable"  # the store could not return the object
TOO_LARGE = "too-large"  # larger than its kind of object may be (store.limits); not read
NOT_A_FILE = "not-a-file"  # a folder, FIFO, device or outward link where a file should be
REFUSED_KEY = "unsafe-key"  # a listed key that names another object than it seems ('..')
DUPLICATE = "duplicate"  # a record (or a JSON key) seen twice: counted once or not at all
DAMAGED = "damaged"  # not JSON, too deeply nested, or not a valid record (a torn write)
SCHEMA = "schema-version"  # written by an older or newer early-repair
BAD_VALUE = "bad-value"  # a valid record with an impossible number (NaN, accuracy 1.5)
MISPLACED = "misplaced"  # the record's own fields disagree with where it lies
INCONSISTENT = "inconsistent"  # records disagree with train/summary.json
NO_SUMMARY = "missing-summary"  # metrics without the training step's summary
UNFINISHED = "unfinished-run"  # no _SUCCESS: still running, or it failed
INCOMPLETE = "incomplete"  # (run, method, class) the rules cannot compare: not in Table 1
PARTIAL = "partial"  # (run, method, class) compared on fewer checkpoints than it should be
PROBLEM_KINDS = (
    UNREADABLE,
    TOO_LARGE,
    NOT_A_FILE,
    REFUSED_KEY,
    DUPLICATE,
    DAMAGED,
    SCHEMA,
    BAD_VALUE,
    MISPLACED,
    INCONSISTENT,
    NO_SUMMARY,
    UNFINISHED,
    INCOMPLETE,
    PARTIAL,
)
COLUMNS = ["kind", "run", "key", "detail"]


@dataclass(frozen=True)
class Problem:
    """Something in the tree that is damaged, missing or unfinished; one line in the report."""

    kind: str
    key: str  # the store key (or "run/ class c") it concerns
    run: str
    detail: str


def one_line(text: object, limit: int = 2000) -> str:
    """``text`` as one printable line (control characters written out as ``\\x1b``), at
    most ``limit`` characters: store data reaches terminals, CSV files and reports."""
    return errors_one_line(str(text), limit)


def shown_key(key: str, limit: int = 300) -> str:
    """A store key as a problem line shows it: printable, on one line, of bounded length."""
    return errors_one_line(key, limit)


def problems_frame(problems: list[Problem]) -> pd.DataFrame:
    rank = {k: i for i, k in enumerate(PROBLEM_KINDS)}
    ordered = sorted(problems, key=lambda p: (rank.get(p.kind, 99), p.key, p.detail))
    return pd.DataFrame(
        [(p.kind, shown_key(p.run), shown_key(p.key), one_line(p.detail)) for p in ordered],
        columns=COLUMNS,
    )


def counts_text(problems: pd.DataFrame) -> str:
    """ "damaged: 1, partial: 1" in the report's order."""
    counts = problems["kind"].value_counts()
    return ", ".join(f"{k}: {counts[k]}" for k in PROBLEM_KINDS if k in counts)


def raise_if_problems(uri: str, problems: pd.DataFrame) -> None:
    """``--strict``: any incomplete, partial or damaged result is bad input (one line)."""
    if problems.empty:
        return
    first = problems.iloc[0]
    raise BadInput(
        f"{uri}: {plural(len(problems), 'incomplete or damaged result')} ({counts_text(problems)});"
        f" first: {first['key']}: {first['detail']} - fix them, or drop --strict to report them"
    )
