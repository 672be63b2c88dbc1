"""The report's headline and Table 1 as LaTeX tables a paper can ``\\input``.

``table1.tex`` and ``headline.tex`` hold one ``table`` float each (booktabs rules, a
caption, a label ``tab:table1`` / ``tab:headline``), written by pandas' ``Styler.to_latex``
from the very frames the report shows - Table 1's per-dataset rows and
``shown.headline_table`` - so the paper and the report cannot disagree. The preamble
needs ``\\usepackage{booktabs}``. Cell text is escaped for LaTeX; the few non-ASCII symbols
the tables use (alpha, minus, ellipsis, ...) become LaTeX commands, so the files are plain
ASCII and compile with pdflatex as well as lualatex.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from orchestrator.analysis.aggregate import Aggregation

# After LaTeX escaping: symbols the report's column names and cells use.
SYMBOLS = {
    "α": r"$\alpha$",
    "−": r"$-$",
    "–": "--",
    "—": "---",
    "…": r"\ldots{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "→": r"$\to$",
    "⚠": r"(!)",
    "’": "'",
}


def cell(value: Any) -> str:
    """A cell as text: empty for missing, integers without a point, at most 4 decimals."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        if math.isfinite(value) and value == int(value):
            return str(int(value))
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def symbols(text: str) -> str:
    for char, latex in SYMBOLS.items():
        text = text.replace(char, latex)
    return text


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """``df`` as a booktabs ``table`` float: text columns left, numbers right."""
    numeric = [
        (pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]))
        # numbers written as text ("3", a range "2-3") align as numbers too
        or (len(df) > 0 and all(re.fullmatch(r"[-+0-9.]+", str(v)) for v in df[c]))
        for c in df.columns
    ]
    styler = (
        df.style.hide(axis="index")
        .format(cell, escape="latex")
        .format_index(escape="latex", axis=1)
    )
    tex = styler.to_latex(
        hrules=True,  # \toprule, \midrule, \bottomrule
        environment="table",
        position="htbp",
        position_float="centering",
        column_format="".join("r" if n else "l" for n in numeric),
        caption=caption,
        label=label,
    )
    return symbols(tex)


def table1_frame(agg: Aggregation) -> pd.DataFrame:
    """Table 1's per-dataset rows, as the report shows them."""
    from orchestrator.analysis.shown import table1_shown

    pt = agg.patterns
    top = pt[pt["scope"] == "dataset"].drop(columns=["scope", "model", "repair_class"])
    return _single_valued_dropped(table1_shown(top), ["method"])


def headline_frame(agg: Aggregation) -> pd.DataFrame:
    """The headline's columns that fit a page: what was compared, the paper's count beside
    the wins beyond noise, the mean gain with its per-seed range and the Wilcoxon p."""
    from orchestrator.analysis.shown import headline_table

    shown = headline_table(agg.headline, agg.reference_name)
    keep = [c for c in shown.columns if not c.startswith(("…with", "95% CI", "seeds for", "best"))]
    return _single_valued_dropped(shown[keep], ["model", "method"])


def _single_valued_dropped(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Without the ``columns`` that hold one value only (said in the caption instead)."""
    return df.drop(columns=[c for c in columns if c in df and df[c].nunique() <= 1])


def write_tables(agg: Aggregation, out: Path) -> list[Path]:
    """``table1.tex`` and ``headline.tex`` in ``out``; returns the files written."""
    ref = agg.reference_name
    tables = {
        "table1.tex": to_latex(
            table1_frame(agg),
            f"Table 1 of sweep {agg.sweep}: (run, repair class) units per pattern"
            f" (rules: {agg.rules}).",
            "tab:table1",
        ),
        "headline.tex": to_latex(
            headline_frame(agg),
            f"Headline of sweep {agg.sweep}: repairing before the {ref} checkpoint against"
            " repairing at it, per (dataset, model, method, class, alpha).",
            "tab:headline",
        ),
    }
    written = []
    for name, text in tables.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
