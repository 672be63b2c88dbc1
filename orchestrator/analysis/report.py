"""Figures and a readable report (report.md, self-contained report.html) from an Aggregation.

The CSV tables are for programs; this is for the person who ran the sweep and wants the
answer at a glance: the paper's Table 1, its Fig. 3 (Acc_c and Acc_total before and after
repair over epochs) and Fig. 4 (Qual over epochs per alpha, best marked), an overview of
the best switch epoch across seeds, and every incomplete or damaged result. Markdown and
HTML are rendered from one list of blocks so they cannot say different things; the HTML
embeds its figures as base64 PNG so it can be mailed or archived as one file.

Figures use matplotlib's object API (``Figure`` + Agg), never pyplot, so no global state or
GUI backend is touched. Per-(run, class) figures are capped (``max_figures`` pairs, spread
round-robin over every dataset, model and class) so big sweeps stay readable; the overview
figure draws at most ``MAX_OVERVIEW_GROUPS`` (dataset, model, class) rows.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from rich.table import Table

from orchestrator.analysis import tables as ag
from orchestrator.errors import BadInput

DEFAULT_MAX_FIGURES = 24
MAX_OVERVIEW_GROUPS = 40
MAX_TABLE_ROWS = 200
DPI = 90
PATTERN_COLOURS = {ag.PRE: "#1f77b4", ag.POST: "#ff7f0e", ag.AFTER: "#2ca02c"}
INCOMPLETE_COLOUR = "#bbbbbb"
FIGURE_NAME = re.compile(r"^(fig3_.+|fig4_.+|overview|table1)\.png$")


# --- one document, two renderings ------------------------------------------------------


@dataclass
class Doc:
    """A list of blocks rendered to Markdown (relative image links) and to HTML (embedded)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, lines: list[str]) -> None:
        self.blocks.append(("ul", lines))

    def table(self, df: pd.DataFrame, note: str = "") -> None:
        self.blocks.append(("table", (df, note)))

    def images(self, paths: list[tuple[Path, str]]) -> None:
        self.blocks.append(("img", paths))

    def markdown(self, root: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h":
                out += [f"## {value}", ""]
            elif kind == "p":
                out += [value, ""]
            elif kind == "ul":
                out += [f"- {line}" for line in value] + [""]
            elif kind == "table":
                df, note = value
                out += [_md_table(df), ""] + ([note, ""] if note else [])
            elif kind == "img":
                for path, alt in value:
                    out += [f"![{alt}]({path.relative_to(root).as_posix()})", ""]
        return "\n".join(out)

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h2>{html.escape(value)}</h2>")
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(v)}</li>" for v in value) + "</ul>")
            elif kind == "table":
                df, note = value
                body.append(_html_table(df))
                if note:
                    body.append(f'<p class="note">{_inline(note)}</p>')
            elif kind == "img":
                figs = []
                for path, alt in value:
                    data = base64.b64encode(path.read_bytes()).decode("ascii")
                    figs.append(
                        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,'
                        f'{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'
                    )
                body.append('<div class="figs">' + "".join(figs) + "</div>")
        return _PAGE.format(title=html.escape(self.title), body="\n".join(body))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px;
       padding: 0 1em; color: #222; line-height: 1.4; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.25em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: .5em 0; font-size: .9em; }}
th, td {{ border: 1px solid #ccc; padding: .2em .5em; text-align: left; }}
th {{ background: #f3f3f3; }} td.n {{ text-align: right; }}
code {{ background: #f3f3f3; padding: 0 .2em; }}
.figs {{ display: flex; flex-wrap: wrap; gap: .5em; }}
figure {{ margin: 0; }} figure img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ font-size: .8em; color: #555; }} .note {{ font-size: .85em; color: #555; }}
</style></head>
<body>
{body}
</body></html>
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code> (the only inline markup we use)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _cell(v: Any) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4f}".rstrip("0").rstrip(".") if v != int(v) else f"{int(v)}"
    return str(v)


def _md_table(df: pd.DataFrame) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    lines = [row([str(c) for c in df.columns]), row(["---"] * len(df.columns))]
    lines += [row([_cell(v) for v in r]) for r in df.itertuples(index=False)]
    return "\n".join(lines)


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)

    def td(v: Any) -> str:
        numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        return f'<td class="n">{_cell(v)}</td>' if numeric else f"<td>{html.escape(_cell(v))}</td>"

    rows = "".join("<tr>" + "".join(td(v) for v in r) + "</tr>" for r in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


# --- figures ------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _convergence_line(ax: Any, conv: Any) -> None:
    if not pd.isna(conv):
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


def _pair_axes() -> tuple[Figure, Any]:
    # Fixed margins instead of a layout engine: these figures all look alike, and
    # constrained layout would triple the drawing time of big sweeps.
    fig = Figure(figsize=(6.4, 3.6))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.13, top=0.92)
    return fig, fig.subplots()


def fig3(q: pd.DataFrame, run: str, cls: int, path: Path) -> Path:
    """Paper's Fig. 3: Acc_c and Acc_total before and after repair over epochs."""
    first = q[(q["run"] == run) & (q["repair_class"] == cls)]
    first = first[first["alpha"] == first["alpha"].min()]
    fig, ax = _pair_axes()
    for kind, style in (("base", "--"), ("repaired", "-")):
        d = first[first["kind"] == kind].sort_values("epoch")
        label = "before repair" if kind == "base" else "after repair"
        ax.plot(
            d["epoch"],
            100 * d["acc_class"],
            style,
            marker="o",
            color="C0",
            label=f"Acc_{cls} {label}",
        )
        ax.plot(
            d["epoch"],
            100 * d["accuracy"],
            style,
            marker="s",
            color="C3",
            label=f"Acc_total {label}",
        )
    _convergence_line(ax, first["convergence_epoch"].iloc[0] if len(first) else None)
    ax.set_xlabel("checkpoint epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{run}, class {cls}: accuracy before and after repair", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", framealpha=0.8)
    return _save(fig, path)


def fig4(
    q: pd.DataFrame,
    sp: pd.DataFrame,
    run: str,
    cls: int,
    after_convergence: str,
    path: Path,
) -> Path:
    """Paper's Fig. 4: Qual over epochs for each alpha, the chosen switch point marked.

    Left the whole range; right the same curves zoomed on the top, where the switch points
    and the convergence checkpoint usually lie within a few percentage points.
    """
    d = q[(q["run"] == run) & (q["repair_class"] == cls)]
    best = sp[(sp["run"] == run) & (sp["repair_class"] == cls)].set_index("alpha")
    fig = Figure(figsize=(9.6, 3.8))
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.25, top=0.9, wspace=0.2)
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
                top += [100 * b["best_qual"], 100 * b["convergence_qual"]]
        if after_convergence == "exclude" and conv is not None and not pd.isna(conv):
            right = d["epoch"].max()
            if right > conv:
                ax.axvspan(int(conv), right + 0.5, color="#999", alpha=0.12, linewidth=0)
        _convergence_line(ax, conv)
        ax.set_xlabel("checkpoint epoch")
        ax.grid(alpha=0.3)
    top = [t for t in top if not pd.isna(t)]
    if top:
        lo, hi = min(top), max(top)
        pad = max(0.5, 0.4 * (hi - lo))
        zoom.set_ylim(lo - 2 * pad, hi + pad)
    zoom.set_title("zoom on the best", fontsize=9)
    full.set_ylabel(f"Qual(α, {cls}) (%)")
    full.set_title(f"{run}, class {cls}: quality over epochs", fontsize=10)
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
    if after_convergence == "exclude":
        handles.append(Patch(color="#999", alpha=0.25, label="not compared"))
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncols=len(handles))
    return _save(fig, path)


def overview(sp: pd.DataFrame, path: Path) -> tuple[Path, int]:
    """Best switch epoch vs convergence epoch, one row per (dataset, model, class), per alpha.

    Drawn with one collection per artist kind (not one Line2D per point) so that a sweep of
    a thousand (run, class) pairs still draws in well under a second.
    """
    gcols = ["dataset", "model", "repair_class"]
    groups = sp[gcols].drop_duplicates().reset_index(drop=True)
    shown = groups.head(MAX_OVERVIEW_GROUPS).assign(_y=lambda d: np.arange(len(d)))
    labels = [f"{r.dataset}/{r.model}/c{r.repair_class}" for r in shown.itertuples()]
    d = sp.merge(shown, on=gcols).sort_values([*gcols, "alpha", "seed", "run"])
    # Seeds of one group share its band, spread evenly around the group's row.
    j = d.groupby([*gcols, "alpha"]).cumcount().to_numpy()
    n = d.groupby([*gcols, "alpha"])["run"].transform("size").to_numpy()
    d = d.assign(_yy=d["_y"].to_numpy() + (j - (n - 1) / 2) * (0.6 / np.maximum(n, 1)))
    size = 36 * min(1.0, 8 / max(int(n.max()) if len(n) else 1, 1))  # many seeds, smaller dots
    alphas = sorted(sp["alpha"].unique())
    height = min(2.0 + 0.45 * len(shown), 20)
    fig = Figure(figsize=(3.6 * max(len(alphas), 1) + 1.6, height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(alphas), 1), sharey=True, squeeze=False)[0])
    for ax, alpha in zip(axes, alphas, strict=False):
        a = d[d["alpha"] == alpha]
        conv = a[a["convergence_epoch"].notna()]
        ax.scatter(
            conv["convergence_epoch"].astype(float),
            conv["_yy"],
            s=size,
            facecolors="none",
            edgecolors="#444",
            linewidths=1,
            zorder=3,
        )
        done = a[(a["status"] != ag.INCOMPLETE) & a["best_epoch"].notna()]
        x0 = done["convergence_epoch"].astype(float).to_numpy()
        x1 = done["best_epoch"].astype(float).to_numpy()
        y = done["_yy"].to_numpy()
        segments = np.stack([np.column_stack([x0, y]), np.column_stack([x1, y])], axis=1)
        ax.add_collection(LineCollection(segments, colors="#aaa", linewidths=1, zorder=2))
        for pattern, colour in PATTERN_COLOURS.items():
            p = done[done["pattern"] == pattern]
            ax.scatter(p["best_epoch"].astype(float), p["_yy"], s=size, color=colour, zorder=4)
        ax.set_title(f"α = {alpha:g}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0].set_ylim(len(labels) - 0.5, -0.5)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=c, label=p)
        for p, c in PATTERN_COLOURS.items()
        if p in set(sp["pattern"])
    ] + [Line2D([], [], marker="o", mfc="none", linestyle="", color="#444", label="convergence")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle("Best repaired checkpoint (switch point) per seed", fontsize=11)
    return _save(fig, path), len(groups)


def table1_figure(pt: pd.DataFrame, names: list[str], path: Path) -> Path:
    """Table 1 as stacked bars: (run, class) units per pattern for each dataset and alpha."""
    top = pt[pt["scope"] == "dataset"].reset_index(drop=True)
    labels = [f"{r.dataset}\nα={r.alpha:g}" for r in top.itertuples()]
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
    return _save(fig, path)


def select_pairs(sp: pd.DataFrame, limit: int) -> tuple[list[tuple[str, int]], int]:
    """(run, class) pairs for per-pair figures: round-robin over (dataset, model, class)."""
    pairs = sp.drop_duplicates(["run", "repair_class"]).sort_values(
        ["dataset", "model", "repair_class", "seed", "run"]
    )
    queues = [
        list(zip(g["run"], g["repair_class"].astype(int), strict=True))
        for _, g in pairs.groupby(["dataset", "model", "repair_class"], sort=True)
    ]
    chosen: list[tuple[str, int]] = []
    depth = 0
    while len(chosen) < min(limit, len(pairs)):
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    return chosen, len(pairs)


# --- the report ---------------------------------------------------------------------------


def _clear_old_figures(folder: Path) -> None:
    # A rerun with other runs or a smaller cap must not leave last time's figures behind;
    # only files named like ours are touched.
    if folder.is_dir():
        for f in folder.iterdir():
            if f.is_file() and FIGURE_NAME.match(f.name):
                f.unlink()


def _definitions(agg: ag.Aggregation) -> list[str]:
    exclude = agg.after_convergence == "exclude"
    compared = (
        "checkpoints up to and including the convergence epoch (later ones are drawn but not"
        " compared; `--after-convergence exclude`, as in the paper)"
        if exclude
        else "every checkpoint, also those after the convergence epoch"
        " (`--after-convergence include`)"
    )
    lines = [
        "`Qual(α, c) = α·Acc_c + (1 − α)·Acc_total` on the test set, accuracies as fractions;"
        f" α ∈ {{{', '.join(f'{a:g}' for a in agg.alphas)}}}.",
        "The convergence epoch is the epoch with the lowest validation loss"
        " (`train/summary.json`).",
        f"Switch point of a (run, class c, α): the repaired checkpoint with the highest Qual"
        f" among {compared}.",
        "Pattern: `pre-convergence` when that checkpoint is strictly before the convergence"
        " epoch, `post-convergence` when it is the convergence checkpoint"
        + ("" if exclude else ", `after-convergence` when it is later")
        + ".",
        "Ties: Qual compared after rounding to 12 decimals; the convergence checkpoint wins a"
        " tie, otherwise the earliest tied checkpoint wins. `gain` = best Qual − Qual of the"
        " repaired convergence checkpoint.",
        "Status: `incomplete` = no usable repaired record at the convergence checkpoint (left"
        " out of Table 1, counted in its `incomplete` column); `partial` = some compared"
        " checkpoints have no repaired record or the run has no `_SUCCESS` (compared on what"
        " exists and listed below).",
    ]
    return lines


def _switch_table(sp: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, class), one column per alpha: "epoch (pattern, +gain)"."""
    short = {ag.PRE: "pre", ag.POST: "post", ag.AFTER: "after"}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for r in sp.itertuples(index=False):
        row = rows.setdefault(
            (r.run, r.repair_class),
            {
                "dataset": r.dataset,
                "model": r.model,
                "class": r.repair_class,
                "seed": r.seed,
                "run": r.run,
                "convergence": r.convergence_epoch,
                "status": r.status,
            },
        )
        cell = (
            "incomplete"
            if r.status == ag.INCOMPLETE
            else f"{int(r.best_epoch)} ({short.get(r.pattern, r.pattern)}, +{r.gain:.4f})"
        )
        row[f"α={r.alpha:g}: best epoch (pattern, gain)"] = cell
    return pd.DataFrame(list(rows.values()))


def build(agg: ag.Aggregation, out: Path, *, max_figures: int = DEFAULT_MAX_FIGURES) -> Doc:
    """Draw the figures into ``out/figures`` and return the document that shows them."""
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    _clear_old_figures(figdir)
    loaded, sp, pt, q = agg.loaded, agg.switch_points, agg.patterns, agg.quality
    names = ag.pattern_names(agg.after_convergence)
    runs = loaded.runs
    doc = Doc(f"Early repair: sweep {loaded.sweep}")

    n_rep = int((loaded.records["kind"] == "repaired").sum()) if len(loaded.records) else 0
    n_probs = len(agg.problems)
    kinds = agg.problems["kind"].value_counts()
    problem_text = (
        "no incomplete or damaged results"
        if n_probs == 0
        else f"{n_probs} incomplete or damaged result(s) ("
        + ", ".join(f"{k}: {kinds[k]}" for k in ag.PROBLEM_KINDS if k in kinds)
        + ") - listed at the end"
    )
    doc.p(
        f"Source `{loaded.uri}`; {len(runs)} run(s), {int(runs['complete'].sum())} finished;"
        f" {len(loaded.records)} evaluated models ({len(loaded.records) - n_rep} base,"
        f" {n_rep} repaired); {problem_text}. Generated"
        f" {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}."
    )

    doc.h("Table 1: runs per pattern")
    doc.p(
        "One unit is a (run, repair class) pair, as in the paper; `compared` = units with a"
        " pattern, `incomplete` = units left out (see the status definitions)."
    )
    top = pt[pt["scope"] == "dataset"].drop(columns=["scope", "model", "repair_class"])
    doc.table(top)
    figs = [(table1_figure(pt, names, figdir / "table1.png"), "Table 1 as bars")]
    if len(sp):
        path, n_groups = overview(sp, figdir / "overview.png")
        figs.append((path, "Best switch epoch per seed (filled) and convergence epoch (ring)"))
    doc.images(figs)
    if len(sp) and n_groups > MAX_OVERVIEW_GROUPS:
        doc.p(
            f"The overview shows the first {MAX_OVERVIEW_GROUPS} of {n_groups} (dataset,"
            " model, class) groups; switch_points.csv has them all."
        )
    doc.h("Per model and class")
    fine = pt[pt["scope"] == "model-class"].drop(columns=["scope"])
    doc.table(fine.rename(columns={"repair_class": "class"}))

    doc.h("What was run")
    desc = loaded.sweep_info.get("description")
    if isinstance(desc, str) and desc:
        doc.p(desc)
    classes = sorted({int(c) for cs in runs["repair_classes"] for c in cs})
    devices = sorted({d for d in runs["device"].dropna()})
    doc.items(
        [
            f"sweep `{loaded.sweep}` at `{loaded.uri}`",
            "datasets: " + ", ".join(sorted(map(str, runs["dataset"].dropna().unique()))),
            "models: " + ", ".join(sorted(map(str, runs["model"].dropna().unique()))),
            "seeds: " + ", ".join(str(s) for s in sorted(runs["seed"].dropna().unique())),
            "repair classes: " + ", ".join(map(str, classes)),
            f"runs: {len(runs)} ({int(runs['complete'].sum())} with `_SUCCESS`)",
            "devices: " + (", ".join(devices) if devices else "unknown"),
        ]
    )
    run_table = runs[
        [
            "run",
            "dataset",
            "model",
            "seed",
            "convergence_epoch",
            "checkpoint_epochs",
            "complete",
            "n_records",
        ]
    ].assign(checkpoint_epochs=runs["checkpoint_epochs"].map(ag.join_epochs))
    doc.table(*_capped(run_table, "runs.csv"))

    doc.h("Definitions")
    doc.items(_definitions(agg))

    doc.h("Switch points")
    if len(sp):
        doc.table(*_capped(_switch_table(sp), "switch_points.csv"))
    else:
        doc.p("No (run, class) pairs to compare.")

    pairs, total = select_pairs(sp, max_figures) if len(sp) else ([], 0)
    doc.h("Per run and class: accuracy (Fig. 3) and quality (Fig. 4)")
    if len(pairs) < total:
        doc.p(
            f"Drawn for {len(pairs)} of {total} (run, class) pairs (cap `--max-figures"
            f" {max_figures}`, spread over every dataset, model and class); every number is"
            " in quality.csv."
        )
    order = sp.drop_duplicates(["run", "repair_class"]).set_index(["run", "repair_class"])
    rank = {
        k: i
        for i, k in enumerate(order.sort_values(["dataset", "model", "repair_class", "seed"]).index)
    }
    for run, cls in sorted(pairs, key=lambda p: rank[p]):
        stem = f"{_safe(run)}_class{cls}"
        doc.images(
            [
                (fig3(q, run, cls, figdir / f"fig3_{stem}.png"), f"Fig. 3 - {run}, class {cls}"),
                (
                    fig4(q, sp, run, cls, agg.after_convergence, figdir / f"fig4_{stem}.png"),
                    f"Fig. 4 - {run}, class {cls}",
                ),
            ]
        )

    doc.h("Incomplete and damaged results")
    if n_probs:
        listed = [k for k in ag.PROBLEM_KINDS if k in kinds]
        counts = pd.DataFrame({"kind": listed, "count": [int(kinds[k]) for k in listed]})
        doc.table(counts)
        doc.table(*_capped(agg.problems.drop(columns=["run"]), "problems.csv"))
    else:
        doc.p("None: every run finished and every record was readable and current.")

    doc.h("Files next to this report")
    doc.items(FILES)
    return doc


FILES = [
    "`records.parquet`, `records.csv`: one row per evaluated model (base and repaired) with"
    " every field of its metrics.json; `per_class_accuracy` expanded into `acc_class_<c>`"
    " columns (empty where a class is absent), plus `n_classes`, `run_complete` and the"
    " store `key`.",
    "`quality.csv`: Qual(α, c) per model and α; `acc_class` is Acc_c, `accuracy` Acc_total;"
    " base models appear once per class their run repairs.",
    "`switch_points.csv`: per (dataset, model, run, class, α) `best_epoch`,"
    " `convergence_epoch`, `offset` (best - convergence), `pattern`, `best_qual`,"
    " `convergence_qual`, `gain`, `base_convergence_qual` (unrepaired), `n_compared`,"
    " `tied_epochs`, `status`, `missing_epochs`, `note`.",
    "`patterns.csv`: Table 1 - scope `dataset` rows (model and class `all`) and scope"
    " `model-class` rows.",
    "`runs.csv`: one row per run; `problems.csv`: every incomplete or damaged result.",
    "`figures/`: `table1.png`, `overview.png`, `fig3_<run>_class<c>.png`,"
    " `fig4_<run>_class<c>.png`.",
]


def _capped(df: pd.DataFrame, csv: str) -> tuple[pd.DataFrame, str]:
    if len(df) <= MAX_TABLE_ROWS:
        return df, ""
    return df.head(MAX_TABLE_ROWS), f"First {MAX_TABLE_ROWS} of {len(df)} rows; see {csv}."


def write_report(
    agg: ag.Aggregation, out: Path, *, max_figures: int = DEFAULT_MAX_FIGURES
) -> list[Path]:
    """Figures, report.md and report.html in ``out``; returns what was written."""
    doc = build(agg, out, max_figures=max_figures)
    md = out / "report.md"
    page = out / "report.html"
    md.write_text(doc.markdown(out), encoding="utf-8")
    page.write_text(doc.html(), encoding="utf-8")
    figs = sorted((out / "figures").glob("*.png"))
    return [md, page, *figs]


def publish(
    agg: ag.Aggregation, out: Path, *, max_figures: int = DEFAULT_MAX_FIGURES
) -> list[Path]:
    """Every output of ``aggregate`` in ``out``: the tables, the figures and the report."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: is a file; pass a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"--out {out}: cannot create the folder ({e.strerror or e})") from e
    return [*ag.write_tables(agg, out), *write_report(agg, out, max_figures=max_figures)]


def _table1_rows(agg: ag.Aggregation) -> list[dict[str, Any]]:
    """Table 1's per-dataset rows as plain Python values (JSON- and YAML-safe)."""
    names = ag.pattern_names(agg.after_convergence)
    top = agg.patterns[agg.patterns["scope"] == "dataset"]
    return [
        {"dataset": str(r["dataset"]), "alpha": float(r["alpha"])}
        | {n: int(r[n]) for n in (*names, "incomplete")}
        for r in top.to_dict("records")
    ]


def summary_table(agg: ag.Aggregation) -> Table:
    """Table 1 for the terminal (rich), as the CLI prints it."""
    names = ag.pattern_names(agg.after_convergence)
    table = Table(title=f"Table 1 - sweep {agg.sweep} (runs x classes per pattern)")
    for col in ("dataset", "α", *names, "incomplete"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for r in _table1_rows(agg):
        counts = (str(r[n]) for n in (*names, "incomplete"))
        table.add_row(r["dataset"], f"{r['alpha']:g}", *counts)
    return table


def summary(agg: ag.Aggregation, folder: Path) -> dict[str, Any]:
    """What ``aggregate -o json|yaml`` prints: where the report is, and Table 1."""
    return {
        "sweep": agg.sweep,
        "report": str(folder),
        "alphas": [float(a) for a in agg.alphas],
        "after_convergence": agg.after_convergence,
        "problems": len(agg.problems),
        "table1": _table1_rows(agg),
    }
