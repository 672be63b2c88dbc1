"""The readiness figure: per (method, class) of one (dataset, model), each seed's repaired
test Qual at every evaluated epoch with the epochs the policy chose, the oracle's and the
convergence epoch, and the value the policy watched on its own axis (watched.py).

Kept apart from figures.py because it is drawn only for sweeps with ``training.readiness``
and reads the per-run readiness table rather than the switch points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from orchestrator.analysis.figures import integer_epochs, save
from orchestrator.analysis.readiness import repaired_qual
from orchestrator.analysis.watched import draw_watched, pp_axis

MAX_READINESS_PANELS = 6


def readiness_figure(
    records: pd.DataFrame,
    per_run: pd.DataFrame,
    dataset: str,
    model: str,
    path: Path,
    watched: pd.DataFrame | None = None,
) -> Path:
    """Per (method, class) of one (dataset, model) with a readiness policy: each seed's
    repaired test Qual at every evaluated epoch (at the policy's alpha), with the policy's
    epoch (triangle), the oracle epoch (star) and the convergence epoch (hollow circle);
    with ``watched`` (``Loaded.readiness``), the value the policy watched, on its own axis."""
    d = per_run[(per_run["dataset"] == dataset) & (per_run["model"] == model)]
    units = d[["policy", "method", "repair_class"]].drop_duplicates().head(MAX_READINESS_PANELS)
    n = max(1, len(units))
    fig = Figure(figsize=(min(4.2 * n, 12.6), 3.9))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.3, top=0.8, wspace=0.25)
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)[0])
    rep = records[(records["kind"] == "repaired") & (records["dataset"] == dataset)]
    rep = rep[rep["model"] == model]
    for ax, u in zip(axes, units.itertuples(index=False), strict=False):
        rows = d[
            (d["policy"] == u.policy)
            & (d["method"] == u.method)
            & (d["repair_class"] == u.repair_class)
        ]
        for i, r in enumerate(rows.itertuples(index=False)):
            c = f"C{i % 10}"
            curve = rep[(rep["run"] == r.run) & (rep["method"] == u.method)]
            curve = curve[curve["repair_class"] == u.repair_class].sort_values("epoch")
            qual = 100 * repaired_qual(curve, int(u.repair_class), r.alpha)
            ax.plot(curve["epoch"], qual, "-", color=c, lw=1, label=f"seed {r.seed}")
            for epoch, value, marker, fill in (
                (r.policy_epoch, r.policy_qual, "v", c),
                (r.oracle_epoch, r.oracle_qual, "*", c),
                (r.convergence_epoch, r.convergence_qual, "o", "none"),
            ):
                if not pd.isna(epoch) and not pd.isna(value):
                    ax.plot([epoch], [100 * value], marker, color=c, mfc=fill, ms=8)
        marked = rows[["policy_qual", "oracle_qual", "convergence_qual"]].to_numpy(float)
        pp_axis(ax, 100 * marked.ravel())
        if watched is not None:
            draw_watched(ax, watched, rows, u.method, u.repair_class, u.policy)
        regret = 100 * rows["regret"].mean()
        ax.set_title(
            f"{u.method}, class {u.repair_class} ({u.policy})\nmean regret {regret:.2f} pp",
            fontsize=8,
        )
        integer_epochs(ax)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("repaired test Qual (%)")
    handles = [
        Line2D([], [], marker="v", ls="", color="k", label="policy's epoch"),
        Line2D([], [], marker="*", ls="", color="k", ms=9, label="oracle (best test Qual)"),
        Line2D([], [], marker="o", ls="", color="k", mfc="none", label="convergence"),
        *(
            [Line2D([], [], ls=":", marker="x", color="k", label="watched value (right axis)")]
            if watched is not None
            else []
        ),
    ]
    seeds = axes[0].get_legend_handles_labels()[0]
    fig.legend(handles=[*handles, *seeds], fontsize=7, loc="lower center", ncols=6, frameon=False)
    fig.suptitle(f"Readiness policy - {dataset} / {model}", fontsize=9)
    return save(fig, path)
