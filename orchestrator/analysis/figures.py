"""The report's figures, drawn with matplotlib's object API (``Figure`` + Agg).

Never pyplot: no global state, no GUI backend. Conventions a reader can rely on: epochs
on the x axis are integers; legends sit outside the axes (below them), so they cover no
curve, marker or label; Qual and accuracies are shown in percent.

* ``seeds_figure``: per (dataset, model, class), one panel per alpha: mean Qual over the
  seeds of every repair method and of the unrepaired model, with a 95% bootstrap band,
  each seed's convergence epoch as a tick on the axis.
* ``effect_figure``: the same panels for delta Qual (repaired - unrepaired, percentage
  points) per checkpoint, each seed a dot, the ones below zero (repair made it worse) red.
* ``overview``: each seed's switch epoch against its convergence epoch, one marker shape
  per seed; ``table1_figure``: Table 1 as stacked bars.

The paper's Fig. 3 and Fig. 4 per run are in run_figures.py, the readiness figure in
readiness_figures.py; both draw with ``save`` and ``integer_epochs`` from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from orchestrator.analysis import formats, stats
from orchestrator.analysis.problems import INCOMPLETE
from orchestrator.analysis.tables import AFTER, AT_LAST, BEFORE_LAST, POST, PRE
from orchestrator.analysis.words import plural

DPI = 90
MAX_OVERVIEW_GROUPS = 40
PATTERN_COLOURS = {
    PRE: "#1f77b4",
    POST: "#ff7f0e",
    AFTER: "#2ca02c",
    BEFORE_LAST: "#1f77b4",
    AT_LAST: "#ff7f0e",
}
INCOMPLETE_COLOUR = "#bbbbbb"
UNREPAIRED_COLOUR = "#555555"
HARM_COLOUR = "#d62728"
METHOD_COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
SEED_MARKERS = ["o", "^", "s", "D", "v", "P", "X", "<", ">", "h"]


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    formats.save_siblings(fig, path, DPI)  # PDF/SVG beside the PNG, as --formats asks
    return path


def integer_epochs(ax: Any) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def method_colours(methods: list[str]) -> dict[str, str]:
    return {m: METHOD_COLOURS[i % len(METHOD_COLOURS)] for i, m in enumerate(sorted(methods))}


def _convergence_rug(ax: Any, epochs: Any) -> None:
    """Each seed's convergence epoch as a tick on the bottom edge of the axes."""
    for e in sorted({int(e) for e in epochs if not pd.isna(e)}):
        ax.plot(
            [e],
            [0.0],
            marker="|",
            markersize=12,
            color="#333",
            clip_on=False,
            transform=ax.get_xaxis_transform(),
            zorder=6,
        )


# --- seed-aggregated figures, per (dataset, model, class) -------------------------------


def _bands(d: pd.DataFrame, value: str, by: list[str], seed: int, x: str = "epoch") -> pd.DataFrame:
    """Mean and 95% bootstrap band over seeds of ``value`` per ``by`` (+ ``x``); the band
    only where at least ``stats.MIN_SEEDS_FOR_CI`` seeds are averaged."""
    groups = list(d.groupby([*by, x], sort=True, dropna=False))
    cis = stats.mean_cis([g[value].to_numpy(dtype=float) for _, g in groups], seed)
    rows = [(*k, len(g), *ci) for (k, g), ci in zip(groups, cis, strict=True)]
    out = pd.DataFrame(rows, columns=[*by, "epoch", "n", "mean", "low", "high"])
    thin = out["n"] < stats.MIN_SEEDS_FOR_CI
    out.loc[thin, ["low", "high"]] = np.nan
    return out


def _band(ax: Any, b: pd.DataFrame, colour: str, label: str, style: str = "-") -> None:
    """The mean over seeds as a line where it averages two or more; a point of one seed
    alone is drawn hollow and unjoined (it is no mean)."""
    b = b.sort_values("epoch")
    many = b[b["n"] >= 2]
    ax.plot(many["epoch"], many["mean"], style, marker="o", ms=3.5, color=colour, label=label)
    one = b[b["n"] < 2]
    if len(one):
        ax.plot(one["epoch"], one["mean"], "o", ms=4, mfc="none", color=colour, linestyle="")
    ok = b["low"].notna()
    ax.fill_between(
        b["epoch"][ok], b["low"][ok], b["high"][ok], color=colour, alpha=0.18, linewidth=0
    )


def _panels(alphas: list[float], title: str, rows: int = 1) -> tuple[Figure, np.ndarray]:
    """One column per alpha (``rows`` rows, each sharing its y axis); room below for the
    legend, so that it covers nothing."""
    n = max(len(alphas), 1)
    height = 3.6 + 2.3 * (rows - 1)
    fig = Figure(figsize=(3.3 * n + 0.6, height))
    bottom = 1.05 / height
    fig.subplots_adjust(
        left=0.2 / n + 0.04,
        right=0.99,
        bottom=bottom,
        top=1 - 0.55 / height,
        wspace=0.25,
        hspace=0.45,
    )
    axes = fig.subplots(rows, n, sharey="row", squeeze=False)
    fig.suptitle(title, fontsize=10)
    return fig, axes if rows > 1 else axes[0]


def seeds_figure(
    q: pd.DataFrame, dataset: str, model: str, cls: int, path: Path, seed: int = 0
) -> Path:
    """Mean Qual over seeds (95% bootstrap band) per alpha: each method and unrepaired."""
    d = q[(q["dataset"] == dataset) & (q["model"] == model) & (q["repair_class"] == cls)]
    d = d[d["qual"].notna()].assign(pct=lambda x: 100 * x["qual"])
    alphas = sorted(d["alpha"].unique())
    methods = sorted(d["method"].dropna().unique())
    colours = method_colours(methods)
    n_seeds = d["seed"].nunique()
    title = f"{dataset} / {model}, class {cls}: Qual over epochs, mean of {plural(n_seeds, 'seed')}"
    fig, grid = _panels(alphas, title, rows=2)
    rep = _bands(d[d["kind"] == "repaired"], "pct", ["method", "alpha"], seed)
    base = _bands(d[d["kind"] == "base"], "pct", ["alpha"], seed)
    convs = d.drop_duplicates("run")["convergence_epoch"]
    # The second row zooms on the converged range, where repaired and unrepaired differ by
    # a point or two: from the lowest mean after the first checkpoint up.
    later = pd.concat([rep, base])
    later = later[later["epoch"] > later["epoch"].min()]
    low = np.nanmin(later["mean"]) if len(later) else np.nan
    high = np.nanmax(pd.concat([later["mean"], later["high"]])) if len(later) else np.nan
    for row, axes in enumerate(grid):
        for ax, alpha in zip(axes, alphas, strict=False):
            _band(ax, base[base["alpha"] == alpha], UNREPAIRED_COLOUR, "unrepaired", "--")
            for m in methods:
                part = rep[(rep["method"] == m) & (rep["alpha"] == alpha)]
                _band(ax, part, colours[m], f"repaired ({m})")
            _convergence_rug(ax, convs)
            integer_epochs(ax)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"α = {alpha:g}", fontsize=9)
            else:
                ax.set_xlabel("checkpoint epoch")
                if np.isfinite(low) and np.isfinite(high):
                    pad = max(0.3, 0.1 * (high - low))
                    ax.set_ylim(low - pad, high + pad)
        axes[0].set_ylabel(f"Qual(α, {cls}) (%)" if row == 0 else "zoom (%)")
    handles, _ = grid[0][0].get_legend_handles_labels()
    handles += [
        Patch(color="#888", alpha=0.3, label=f"95% CI over seeds (n ≥ {stats.MIN_SEEDS_FOR_CI})"),
        Line2D(
            [],
            [],
            marker="|",
            linestyle="",
            color="#333",
            markersize=10,
            label="a seed's convergence epoch",
        ),
    ]
    fig.legend(
        handles=handles, fontsize=7, loc="lower center", ncols=min(len(handles), 4), frameon=False
    )
    return save(fig, path)


def aligned_figure(
    q: pd.DataFrame, dataset: str, model: str, cls: int, path: Path, seed: int = 0
) -> Path:
    """Mean Qual over seeds per alpha with every seed's epochs shifted so that its own
    convergence epoch is 0 (x = epoch - convergence): seeds converge at different epochs, so
    "two epochs before convergence" is a different checkpoint epoch per seed. The number of
    seeds behind each point is printed under it; a point of one seed is drawn hollow."""
    d = q[(q["dataset"] == dataset) & (q["model"] == model) & (q["repair_class"] == cls)]
    d = d[d["qual"].notna() & d["convergence_epoch"].notna()]
    d = d.assign(
        pct=100 * d["qual"],
        rel=d["epoch"].astype("int64") - d["convergence_epoch"].astype("int64"),
    )
    alphas = sorted(d["alpha"].unique())
    methods = sorted(d["method"].dropna().unique())
    colours = method_colours(methods)
    title = (
        f"{dataset} / {model}, class {cls}: Qual against epochs from each seed's convergence,"
        f" mean of {plural(d['seed'].nunique(), 'seed')}"
    )
    fig, axes = _panels(alphas, title)
    rep = _bands(d[d["kind"] == "repaired"], "pct", ["method", "alpha"], seed, x="rel")
    base = _bands(d[d["kind"] == "base"], "pct", ["alpha"], seed, x="rel")
    for ax, alpha in zip(axes, alphas, strict=False):
        _band(ax, base[base["alpha"] == alpha], UNREPAIRED_COLOUR, "unrepaired", "--")
        for m in methods:
            _band(ax, rep[(rep["method"] == m) & (rep["alpha"] == alpha)], colours[m], m)
        ax.axvline(0, color="#333", linewidth=0.8, linestyle=":")
        counts = rep[rep["alpha"] == alpha].groupby("epoch")["n"].max()
        for x, n in counts.items():
            ax.annotate(
                f"{n}",
                (x, 0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                fontsize=6,
                color="#555",
            )
        integer_epochs(ax)
        ax.grid(alpha=0.3)
        ax.set_title(f"α = {alpha:g}", fontsize=9)
        ax.set_xlabel("epochs from own convergence", fontsize=8)
    axes[0].set_ylabel(f"Qual(α, {cls}) (%)")
    handles, _ = axes[0].get_legend_handles_labels()
    handles += [
        Patch(color="#888", alpha=0.3, label=f"95% CI over seeds (n ≥ {stats.MIN_SEEDS_FOR_CI})"),
        Line2D([], [], marker="o", mfc="none", linestyle="", color="#333", label="one seed"),
        Line2D([], [], linestyle="", label="small numbers: seeds per point"),
    ]
    fig.legend(
        handles=handles, fontsize=7, loc="lower center", ncols=min(len(handles), 4), frameon=False
    )
    return save(fig, path)


def effect_figure(
    eff: pd.DataFrame, dataset: str, model: str, cls: int, path: Path, seed: int = 0
) -> Path:
    """Delta Qual (repaired - unrepaired) per checkpoint: each seed a dot, mean and band per
    method; below zero the repair made the model worse."""
    d = eff[(eff["dataset"] == dataset) & (eff["model"] == model) & (eff["repair_class"] == cls)]
    d = d[d["delta_qual"].notna()].assign(pp=lambda x: 100 * x["delta_qual"])
    alphas = sorted(d["alpha"].unique())
    methods = sorted(d["method"].unique())
    colours = method_colours(methods)
    title = f"{dataset} / {model}, class {cls}: effect of repair on Qual (repaired - unrepaired)"
    fig, axes = _panels(alphas, title)
    bands = _bands(d, "pp", ["method", "alpha"], seed)
    offsets = {m: (i - (len(methods) - 1) / 2) * 0.25 for i, m in enumerate(methods)}
    convs = d.drop_duplicates("run")["convergence_epoch"]
    for ax, alpha in zip(axes, alphas, strict=False):
        ax.axhline(0, color="#333", linewidth=0.8)
        for m in methods:
            _band(
                ax,
                bands[(bands["method"] == m) & (bands["alpha"] == alpha)],
                colours[m],
                f"mean ({m})",
            )
            pts = d[(d["method"] == m) & (d["alpha"] == alpha)]
            worse = pts["harmed"].fillna(False).to_numpy(bool)
            x = pts["epoch"].to_numpy(dtype=float) + offsets[m]
            ax.scatter(x[~worse], pts["pp"][~worse], s=14, color=colours[m], alpha=0.6, zorder=4)
            ax.scatter(x[worse], pts["pp"][worse], s=18, color=HARM_COLOUR, marker="v", zorder=5)
        _convergence_rug(ax, convs)
        integer_epochs(ax)
        ax.set_title(f"α = {alpha:g}", fontsize=9)
        ax.set_xlabel("checkpoint epoch")
        ax.grid(alpha=0.3)
    for ax in axes:
        # symmetric log: the +50 pp of an early checkpoint and the -1 pp of a converged one
        # both stay readable
        ax.set_yscale("symlog", linthresh=1.0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].set_ylabel("Δ Qual (pp, symmetric log scale)")
    handles, _ = axes[0].get_legend_handles_labels()
    handles += [
        Line2D([], [], marker="o", linestyle="", color="#888", label="one seed"),
        Line2D([], [], marker="v", linestyle="", color=HARM_COLOUR, label="repair made it worse"),
        Line2D(
            [],
            [],
            marker="|",
            linestyle="",
            color="#333",
            markersize=10,
            label="a seed's convergence epoch",
        ),
    ]
    fig.legend(
        handles=handles, fontsize=7, loc="lower center", ncols=min(len(handles), 5), frameon=False
    )
    return save(fig, path)


# --- across the sweep --------------------------------------------------------------------


def overview(sp: pd.DataFrame, path: Path) -> tuple[Path, int]:
    """Best switch epoch vs convergence epoch, one row per (dataset, model, method, class)
    and one panel per alpha; each seed has its own marker shape, named in the legend.

    Drawn with one collection per artist kind (not one Line2D per point) so that a sweep of
    a thousand units still draws in well under a second.
    """
    gcols = ["dataset", "model", "method", "repair_class"]
    groups = sp[gcols].drop_duplicates().reset_index(drop=True)
    shown = groups.head(MAX_OVERVIEW_GROUPS).assign(_y=lambda d: np.arange(len(d)))
    several = sp["method"].nunique() > 1
    labels = [
        f"{r.dataset}/{r.model}{'/' + r.method if several else ''}/c{r.repair_class}"
        for r in shown.itertuples()
    ]
    d = sp.merge(shown, on=gcols).sort_values([*gcols, "alpha", "seed", "run"])
    # Seeds of one group share its band, spread evenly around the group's row.
    j = d.groupby([*gcols, "alpha"]).cumcount().to_numpy()
    n = d.groupby([*gcols, "alpha"])["run"].transform("size").to_numpy()
    d = d.assign(_yy=d["_y"].to_numpy() + (j - (n - 1) / 2) * (0.6 / np.maximum(n, 1)))
    size = 36 * min(1.0, 8 / max(int(n.max()) if len(n) else 1, 1))  # many seeds, smaller dots
    seeds = sorted(int(s) for s in sp["seed"].dropna().unique())
    marker = {s: SEED_MARKERS[i % len(SEED_MARKERS)] for i, s in enumerate(seeds)}
    alphas = sorted(sp["alpha"].unique())
    height = min(2.4 + 0.45 * len(shown), 20)
    fig = Figure(figsize=(3.6 * max(len(alphas), 1) + 1.8, height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(alphas), 1), sharey=True, squeeze=False)[0])
    for ax, alpha in zip(axes, alphas, strict=False):
        a = d[d["alpha"] == alpha]
        done = a[(a["status"] != INCOMPLETE) & a["best_epoch"].notna()]
        x0 = done["reference_epoch"].astype(float).to_numpy()
        x1 = done["best_epoch"].astype(float).to_numpy()
        y = done["_yy"].to_numpy()
        segments = np.stack([np.column_stack([x0, y]), np.column_stack([x1, y])], axis=1)
        ax.add_collection(LineCollection(segments, colors="#aaa", linewidths=1, zorder=2))
        # One scatter per marker shape, not per seed: each scatter rescales the axes over
        # every collection drawn so far, which made a sweep of 2,500 seeds take minutes.
        for shape in dict.fromkeys(marker.values()):
            alike = [s for s in seeds if marker[s] == shape]
            mine = a[a["seed"].isin(alike)]
            ref = mine[mine["reference_epoch"].notna()]
            ax.scatter(
                ref["reference_epoch"].astype(float),
                ref["_yy"],
                s=size,
                marker=shape,
                facecolors="none",
                edgecolors="#444",
                linewidths=1,
                zorder=3,
            )
            ok = done[done["seed"].isin(alike)]
            ax.scatter(
                ok["best_epoch"].astype(float),
                ok["_yy"],
                s=size,
                marker=shape,
                c=ok["pattern"].map(PATTERN_COLOURS).fillna("#000").tolist(),
                zorder=4,
            )
        ax.set_title(f"α = {alpha:g}", fontsize=10)
        ax.set_xlabel("epoch")
        integer_epochs(ax)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0].set_ylim(len(labels) - 0.5, -0.5)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=c, label=p)
        for p, c in PATTERN_COLOURS.items()
        if p in set(sp["pattern"])
    ] + [
        Line2D(
            [], [], marker="o", mfc="none", linestyle="", color="#444", label="reference (hollow)"
        )
    ]
    if len(seeds) <= 2 * len(SEED_MARKERS):
        handles += [
            Line2D([], [], marker=marker[s], linestyle="", color="#444", label=f"seed {s}")
            for s in seeds
        ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8)
    fig.suptitle(
        "Best repaired checkpoint (filled) per seed; within a row seeds go top to bottom in"
        " ascending order",
        fontsize=10,
    )
    return save(fig, path), len(groups)


def table1_figure(pt: pd.DataFrame, names: list[str], path: Path) -> Path:
    """Table 1 as stacked bars: (run, class) units per pattern for each dataset and alpha."""
    top = pt[pt["scope"] == "dataset"].reset_index(drop=True)
    several = top["method"].nunique() > 1
    labels = [
        f"{r.dataset}{chr(10) + r.method if several else ''}\nα={r.alpha:g}"
        for r in top.itertuples()
    ]
    fig = Figure(figsize=(max(4.5, 1.0 * len(top) + 2), 3.4), layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(len(top))
    x = np.arange(len(top))
    for name in names:
        ax.bar(x, top[name], bottom=bottom, color=PATTERN_COLOURS[name], label=name)
        bottom += top[name].to_numpy()
    ax.bar(
        x, top["incomplete"], bottom=bottom, color=INCOMPLETE_COLOUR, hatch="//", label="incomplete"
    )
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("runs × classes")
    ax.set_title("Table 1: runs per pattern", fontsize=10)
    fig.legend(fontsize=7, loc="outside right upper")
    ax.yaxis.get_major_locator().set_params(integer=True)
    return save(fig, path)
