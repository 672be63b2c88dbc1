"""Parts of the readiness figure: the value a policy watched, on its own axis, and a
percentage axis fine enough that a 1 pp difference is visible.

Kept apart from figures.py (already long) so that the readiness figure only calls them.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.ticker import MultipleLocator


def pp_axis(ax: Any) -> None:
    """A percentage axis on which 1 pp differences are visible: a tick (or a minor grid
    line) every percentage point."""
    lo, hi = ax.get_ylim()
    if hi - lo <= 12:
        ax.yaxis.set_major_locator(MultipleLocator(1))
    else:
        ax.yaxis.set_minor_locator(MultipleLocator(1))
        ax.grid(which="minor", axis="y", alpha=0.12)


def draw_watched(
    ax: Any, watched: pd.DataFrame, rows: pd.DataFrame, method: str, cls: int, policy: str
) -> None:
    """Each seed's watched value per epoch (the policy's score: validation Qual, or minus
    the validation loss) on a right-hand axis, its firing epoch marked with a cross."""
    right = None
    for i, r in enumerate(rows.itertuples(index=False)):
        w = watched[watched["run"] == r.run]
        own = w[(w["method"] == method) & (w["repair_class"] == cls)]
        w = own if len(own) else w[w["method"].isna()]
        if w.empty or not len(w["scores"].iloc[0]):
            continue
        points = [(e, v) for e, v in w["scores"].iloc[0] if v is not None]
        if not points:
            continue
        right = right if right is not None else ax.twinx()
        scale = 100.0 if policy == "repaired-val-qual" else 1.0
        epochs = [e for e, _ in points]
        values = [scale * v for _, v in points]
        c = f"C{i % 10}"
        right.plot(epochs, values, ":", color=c, lw=1, alpha=0.8)
        fired = w["fired_epoch"].iloc[0]
        if not pd.isna(fired) and int(fired) in epochs:
            right.plot([int(fired)], [values[epochs.index(int(fired))]], "x", color=c, ms=7)
    if right is not None:
        label = "watched: val Qual (%)" if policy == "repaired-val-qual" else "watched: −val loss"
        right.set_ylabel(label, fontsize=7)
        right.tick_params(labelsize=7)
        if policy == "repaired-val-qual":
            pp_axis(right)
