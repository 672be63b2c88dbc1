"""Counted nouns in the report and on the terminal: "1 seed", "3 seeds", never "3 seed(s)"."""

from __future__ import annotations

_IRREGULAR = {"class": "classes"}


def plural(n: int, one: str, many: str | None = None) -> str:
    """``n`` and the noun in the number it takes: plural(1, "run") == "1 run"."""
    return f"{n} {one if n == 1 else (many or _IRREGULAR.get(one, one + 's'))}"


def noun(n: int, one: str, many: str | None = None) -> str:
    """The noun alone, in the number ``n`` takes: noun(2, "epoch") == "epochs"."""
    return plural(n, one, many).split(" ", 1)[1]
