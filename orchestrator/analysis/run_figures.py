"""The paper's Fig. 3 and Fig. 4 for one (run, method, class), sized to sit side by side.

Fig. 3: Acc_c and Acc_total before and after repair over the checkpoint epochs; Fig. 4:
Qual per alpha with the switch point starred, the whole range next to a zoom on the best.
Kept apart from figures.py (the seed-aggregated and sweep-wide figures) because these are
drawn once per run, up to ``--max-figures`` of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from orchestrator.analysis.figures import integer_epochs, save

# Fig. 3 and Fig. 4 side by side fill the report's 1,100 px column at DPI.
FIG3_SIZE = (5.0, 3.9)
FIG4_SIZE = (7.2, 3.9)


def _convergence_line(ax: Any, conv: Any) -> None:
    if conv is not None and not pd.isna(conv):
        ax.axvline(int(conv), color="#555", linestyle=":", linewidth=1.2)
        ax.annotate(
            "convergence",
            (int(conv), 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(-10, 4),
            textcoords="offset points",
            fontsize=7,
            color="#555",
            rotation=90,
            va="bottom",
        )


def fig3(q: pd.DataFrame, run: str, method: str, cls: int, path: Path) -> Path:
    """Paper's Fig. 3: Acc_c and Acc_total before and after repair over epochs."""
    d = q[(q["run"] == run) & (q["repair_class"] == cls)]
    d = d[d["alpha"] == d["alpha"].min()]
    d = d[(d["kind"] == "base") | (d["method"] == method)]
    fig = Figure(figsize=FIG3_SIZE)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.33, top=0.9)
    ax = fig.subplots()
    for kind, style in (("base", "--"), ("repaired", "-")):
        part = d[d["kind"] == kind].sort_values("epoch")
        label = "before repair" if kind == "base" else "after repair"
        ax.plot(
            part["epoch"],
            100 * part["acc_class"],
            style,
            marker="o",
            color="C0",
            label=f"Acc_{cls} {label}",
        )
        ax.plot(
            part["epoch"],
            100 * part["accuracy"],
            style,
            marker="s",
            color="C3",
            label=f"Acc_total {label}",
        )
    _convergence_line(ax, d["convergence_epoch"].iloc[0] if len(d) else None)
    integer_epochs(ax)
    ax.set_xlabel("checkpoint epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fig. 3 - {run}, class {cls}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="lower center", ncols=2, frameon=False)
    return save(fig, path)


def fig4(
    q: pd.DataFrame,
    sp: pd.DataFrame,
    run: str,
    method: str,
    cls: int,
    compared_up_to_convergence: bool,
    path: Path,
) -> Path:
    """Paper's Fig. 4: Qual over epochs for each alpha, the chosen switch point marked.

    Left the whole range; right the same curves zoomed on the top, where the switch points
    and the convergence checkpoint usually lie within a few percentage points.
    """
    d = q[(q["run"] == run) & (q["repair_class"] == cls)]
    d = d[(d["kind"] == "base") | (d["method"] == method)]
    unit = sp[(sp["run"] == run) & (sp["repair_class"] == cls) & (sp["method"] == method)]
    best = unit.set_index("alpha")
    fig = Figure(figsize=FIG4_SIZE)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.3, top=0.9, wspace=0.22)
    full, zoom = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    conv = d["convergence_epoch"].iloc[0] if len(d) else None
    top: list[float] = []
    for ax in (full, zoom):
        for i, (alpha, g) in enumerate(d.groupby("alpha")):
            colour = f"C{i}"
            rep = g[g["kind"] == "repaired"].sort_values("epoch")
            base = g[g["kind"] == "base"].sort_values("epoch")
            ax.plot(
                rep["epoch"],
                100 * rep["qual"],
                "-o",
                ms=4,
                color=colour,
                label=f"α={alpha:g} repaired",
            )
            ax.plot(base["epoch"], 100 * base["qual"], ":", color=colour, alpha=0.6, lw=1)
            b = best.loc[alpha] if alpha in best.index else None
            if b is not None and not pd.isna(b["best_epoch"]):
                ax.plot(
                    int(b["best_epoch"]),
                    100 * b["best_qual"],
                    "*",
                    color=colour,
                    markersize=15,
                    markeredgecolor="black",
                    zorder=5,
                )
                top += [100 * b["best_qual"], 100 * b["reference_qual"]]
        if compared_up_to_convergence and conv is not None and not pd.isna(conv):
            right = d["epoch"].max()
            if right > conv:
                ax.axvspan(int(conv), right + 0.5, color="#999", alpha=0.12, linewidth=0)
        _convergence_line(ax, conv)
        integer_epochs(ax)
        ax.set_xlabel("checkpoint epoch")
        ax.grid(alpha=0.3)
    top = [t for t in top if not pd.isna(t)]
    if top:
        lo, hi = min(top), max(top)
        pad = max(0.5, 0.4 * (hi - lo))
        zoom.set_ylim(lo - 2 * pad, hi + pad)
    zoom.set_title("zoom on the best", fontsize=9)
    full.set_ylabel(f"Qual(α, {cls}) (%)")
    full.set_title(f"Fig. 4 - {run}, class {cls}: quality", fontsize=9)
    handles, _ = full.get_legend_handles_labels()
    handles += [
        Line2D([], [], linestyle=":", color="#666", label="before repair"),
        Line2D(
            [],
            [],
            marker="*",
            linestyle="",
            color="#666",
            markeredgecolor="black",
            markersize=11,
            label="best (switch point)",
        ),
    ]
    if compared_up_to_convergence:
        handles.append(Patch(color="#999", alpha=0.25, label="not compared"))
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncols=3, frameon=False)
    return save(fig, path)
