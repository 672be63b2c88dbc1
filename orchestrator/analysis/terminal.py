"""What ``aggregate`` prints: the JSON/YAML summary on stdout and the rich headline and
Table 1 on stderr.

Kept apart from report.py (the files it writes) because only the CLI reads these, and
the terminal has its own constraints: plain JSON- and YAML-safe values, and lines that fit
an 80-column window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis.shown import compared_range


def _table1_rows(agg: ag.Aggregation) -> list[dict[str, Any]]:
    """Table 1's per-dataset rows as plain Python values (JSON- and YAML-safe)."""
    names = ag.pattern_names(agg.rules, agg.after_convergence)
    top = agg.patterns[agg.patterns["scope"] == "dataset"]
    return [
        {"dataset": str(r["dataset"]), "method": str(r["method"]), "alpha": float(r["alpha"])}
        | {n: int(r[n]) for n in (*names, "incomplete", "pre_beyond_noise", "tested")}
        for r in top.to_dict("records")
    ]


def summary(agg: ag.Aggregation, folder: Path) -> dict[str, Any]:
    """What ``aggregate -o json|yaml`` prints: where the report is, the headline, Table 1."""
    return {
        "sweep": agg.sweep,
        "report": str(folder),
        "rules": agg.rules,
        "alphas": [float(a) for a in agg.alphas],
        "after_convergence": agg.after_convergence,
        "problems": len(agg.problems),
        "headline": list(agg.sentences),
        "table1": _table1_rows(agg),
    }


def terminal_summary(agg: ag.Aggregation, max_rows: int = 30) -> list[Any]:
    """What ``aggregate`` prints on stderr (rich renderables): the headline - one sentence
    per dataset and its table - then Table 1."""
    from rich.table import Table
    from rich.text import Text

    out: list[Any] = [Text(f"Headline - sweep {agg.sweep} (rules: {agg.rules})", style="bold")]
    out += [Text(f"• {s}") for s in agg.sentences] or [Text("No unit could be compared yet.")]
    head = agg.headline
    if len(head):
        several = head["method"].nunique() > 1
        ref = "conv." if agg.rules == "text" else "last"
        table = Table(title=f"per group: earlier repair vs repair at {agg.reference_name}")
        cols = ("group", "α", "won", "beyond noise", "hurt", "gain pp", "per seed pp", "p (n)")
        for col in (*cols, f"best−{ref}"):
            table.add_column(col, justify="left" if col == "group" else "right", overflow="fold")
        for r in head.head(max_rows).itertuples(index=False):
            group = f"{r.dataset}/{r.model}{'/' + r.method if several else ''} c{r.repair_class}"
            gain = f"{100 * r.mean_gain:+.2f}" if not pd.isna(r.mean_gain) else ""
            if not pd.isna(r.seed_ci_low):
                gain += f" [{100 * r.seed_ci_low:+.2f}, {100 * r.seed_ci_high:+.2f}]"
            spread = (
                "" if pd.isna(r.seed_min) else f"{100 * r.seed_min:+.2f}…{100 * r.seed_max:+.2f}"
            )
            p = "" if pd.isna(r.wilcoxon_p) else f"{r.wilcoxon_p:.2g} ({r.wilcoxon_n})"
            off = "" if pd.isna(r.mean_offset) else f"{r.mean_offset:+.1f}"
            noise = f"{r.k_beyond_noise}/{r.k}" if r.n_tested else "n/a"
            row = (f"{r.alpha:g}", f"{r.k}/{r.n}", noise, str(r.harm_wins), gain, spread, p, off)
            table.add_row(group, *row)
        out.append(table)
        if len(head) > max_rows:
            out.append(Text(f"(first {max_rows} of {len(head)} groups; see headline.csv)"))
    # Table 1 as one line per (dataset, method, alpha): a table of nine columns would cut
    # its headers short on an 80-column terminal.
    names = ag.pattern_names(agg.rules, agg.after_convergence)
    out.append(Text(f"Table 1 - sweep {agg.sweep} (runs x classes per pattern)", style="bold"))
    top = agg.patterns[agg.patterns["scope"] == "dataset"]
    for r in top.to_dict("records"):
        noise = (
            f" ({r['pre_beyond_noise']} beyond noise)"
            if r["tested"]
            else " (not testable: no predictions)"
        )
        counts = ", ".join(f"{n} {r[n]}{noise if n == names[0] else ''}" for n in names)
        out.append(
            Text(
                f"  {r['dataset']} / {r['method']}, α={r['alpha']:g}: {counts};"
                f" compared {r['compared']} ({compared_range(r)} checkpoints each),"
                f" incomplete {r['incomplete']}"
            )
        )
    return out


def _text(v: Any) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:g}"
    return str(v)
