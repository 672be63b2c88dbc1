"""Parts of the readiness figure: the value a policy watched, on its own axis, and a
percentage axis fine enough that a 1 pp difference is visible.

Kept apart from readiness_figures.py so that the readiness figure only calls them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MultipleLocator


def pp_axis(ax: Any, keep: Any = None, room: float = 2.0) -> None:
    """A percentage axis on which 1 pp differences are visible. With ``keep`` (the values
    that matter: the marked epochs' Quals) the axis is zoomed to them and the curves above,
    with ``room`` pp below; early epochs far below are cut (said on the axis). Then a tick
    every percentage point when the span allows, else a minor grid line every point."""
    values = np.asarray([] if keep is None else keep, dtype=float)
    values = values[np.isfinite(values)]
    lo, hi = ax.get_ylim()
    if len(values):
        new_lo = max(lo, float(values.min()) - room)
        if new_lo > lo:
            ax.set_ylim(new_lo, hi)
            ax.text(
                0.01, 0.01, "axis cut: earlier epochs lower", transform=ax.transAxes,
                fontsize=6, color="0.4", va="bottom",
            )  # fmt: skip
            lo = new_lo
    if hi - lo <= 15:
        ax.yaxis.set_major_locator(MultipleLocator(1))
        ax.grid(which="major", axis="y", alpha=0.25)
    else:
        ax.yaxis.set_minor_locator(MultipleLocator(1))
        ax.grid(which="minor", axis="y", alpha=0.12)


def draw_watched(
    ax: Any, watched: pd.DataFrame, rows: pd.DataFrame, method: str, cls: int, policy: str
) -> None:
    """Each seed's watched value per epoch (the policy's score: validation Qual, or minus
    the validation loss) on a right-hand axis, its firing epoch marked with a cross."""
    right = None
    keep: list[float] = []
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
        ready = r.policy_epoch
        keep += [v for e, v in zip(epochs, values, strict=True) if pd.isna(ready) or e >= ready]
        fired = w["fired_epoch"].iloc[0]
        if not pd.isna(fired) and int(fired) in epochs:
            right.plot([int(fired)], [values[epochs.index(int(fired))]], "x", color=c, ms=7)
    if right is not None:
        label = "watched: val Qual (%)" if policy == "repaired-val-qual" else "watched: −val loss"
        right.set_ylabel(label, fontsize=7)
        right.tick_params(labelsize=7)
        if policy == "repaired-val-qual":
            pp_axis(right, keep)
