"""The readable report (report.md, report.html) and the terminal summary of ``aggregate``.

The CSV tables are for programs; this is for the person who ran the sweep and wants the
answer first: the headline (did repairing before convergence win, how often, how sure, and
was the win real?), then repair's effect against the unrepaired model, seed-aggregated
curves, the paper's Table 1 (per method), the methods side by side, and only then the
detail - what ran, the definitions, the switch points, the paper's Fig. 3 next to Fig. 4
per run, every incomplete or damaged result.

Figures are capped so big sweeps stay readable: ``max_figures`` (run, method, class) units
for Fig. 3/4, spread round-robin over every dataset, model and class; ``MAX_GROUP_FIGURES``
(dataset, model, class) groups for the seed-aggregated and effect figures.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis import costs, formats, stats
from orchestrator.analysis import figures as fg
from orchestrator.analysis.document import Doc, file_part
from orchestrator.analysis.effects import CONVERGENCE
from orchestrator.analysis.harm_report import harm_section, readiness_stops_section
from orchestrator.analysis.headline import MAX_SEEDS_NEEDED, MIN_SEEDS_FOR_CI
from orchestrator.analysis.load import join_epochs
from orchestrator.analysis.noise import NOTE_NO_PREDICTIONS
from orchestrator.analysis.problems import PROBLEM_KINDS, counts_text
from orchestrator.analysis.words import plural
from orchestrator.results.layout import DEFAULT_METHOD

DEFAULT_MAX_FIGURES = 24
MAX_GROUP_FIGURES = 12
MAX_TABLE_ROWS = 200
FIGURE_NAME = re.compile(
    r"^(fig3_.+|fig4_.+|seeds_.+|effect_.+|readiness_.+|overview|table1)\.(png|pdf|svg)$"
)


def _safe(name: str) -> str:
    return file_part(name)  # store names: bounded, never '..', a hash when changed


def _capped(df: pd.DataFrame, csv: str) -> tuple[pd.DataFrame, str]:
    if len(df) <= MAX_TABLE_ROWS:
        return df, ""
    return df.head(MAX_TABLE_ROWS), f"First {MAX_TABLE_ROWS} of {len(df)} rows; see {csv}."


def _pct(v: float) -> float:
    return float("nan") if pd.isna(v) else round(100 * float(v), 2)


def select_units(sp: pd.DataFrame, limit: int) -> tuple[list[tuple[str, str, int]], int]:
    """(run, method, class) units for Fig. 3/4: round-robin over (dataset, model, method,
    class), so every group gets one before any gets a second seed."""
    units = sp.drop_duplicates(ag.UNIT).sort_values(
        ["dataset", "model", "method", "repair_class", "seed", "run"]
    )
    queues = [
        list(zip(g["run"], g["method"], g["repair_class"].astype(int), strict=True))
        for _, g in units.groupby(["dataset", "model", "method", "repair_class"], sort=True)
    ]
    chosen: list[tuple[str, str, int]] = []
    depth = 0
    while len(chosen) < min(limit, len(units)):
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    return chosen, len(units)


# --- tables as shown -------------------------------------------------------------------


def headline_table(head: pd.DataFrame, reference: str) -> pd.DataFrame:
    ref = "conv." if reference == "convergence" else "last"

    def ci(lo: float, hi: float) -> str:
        return "" if pd.isna(lo) else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"

    def off(r: Any) -> str:
        if pd.isna(r.mean_offset):
            return ""
        text = f"{r.mean_offset:+.1f}"
        return (
            text if pd.isna(r.offset_low) else f"{text} [{r.offset_low:+.1f}, {r.offset_high:+.1f}]"
        )

    return pd.DataFrame(
        {
            "dataset": head["dataset"],
            "model": head["model"],
            "method": head["method"],
            "class": head["repair_class"],
            "α": head["alpha"],
            "n seeds": head["n"],
            f"earlier beat {ref}": head["k"],
            "…beyond noise": [
                f"{k}" if t == n else (f"{k} of {t} tested" if t else "n/a")
                for k, t, n in zip(head["k_beyond_noise"], head["n_tested"], head["n"], strict=True)
            ],
            f"…with {ref} repair harmful": head["harm_wins"],
            "mean gain (pp)": (100 * head["mean_gain"]).round(2),
            "per seed (pp)": [
                "" if pd.isna(lo) else f"{100 * lo:+.2f} … {100 * hi:+.2f}"
                for lo, hi in zip(head["seed_min"], head["seed_max"], strict=True)
            ],
            "95% CI (pp), n ≥ 5": [
                ci(a, b) for a, b in zip(head["seed_ci_low"], head["seed_ci_high"], strict=True)
            ],
            "Wilcoxon p (n)": [
                "" if pd.isna(p) else f"{p:.2g} ({n})" + ("*" if note else "")
                for p, n, note in zip(
                    head["wilcoxon_p"], head["wilcoxon_n"], head["wilcoxon_note"], strict=True
                )
            ],
            "seeds for 80% power": [
                ""
                if pd.isna(v)
                else (f"> {MAX_SEEDS_NEEDED:,}" if v > MAX_SEEDS_NEEDED else str(v))
                for v in head["seeds_needed"]
            ],
            f"best epoch − {ref}": [off(r) for r in head.itertuples()],
        }
    )


def table1_shown(pt: pd.DataFrame) -> pd.DataFrame:
    """Table 1 rows as read: the paper's counts, then the wins beyond noise (of the units
    tested) and the checkpoints each unit compared as one range."""
    out = pt.drop(columns=["pre_beyond_noise", "tested", "n_compared_min", "n_compared_max"])
    out.insert(
        out.columns.get_loc("compared"),
        "pre beyond noise",
        [
            "n/a" if not t else (f"{k}" if t == c else f"{k} of {t} tested")
            for k, t, c in zip(pt["pre_beyond_noise"], pt["tested"], pt["compared"], strict=True)
        ],
    )
    out["checkpoints compared"] = [_compared(r) for r in pt.to_dict("records")]
    return out


def effect_table(eff: pd.DataFrame) -> pd.DataFrame:
    """One row per repaired model (run, method, class, checkpoint), alphas as columns."""
    if eff.empty:
        return pd.DataFrame()
    keys = ["dataset", "model", "method", "repair_class", "seed", "run", "epoch"]
    first = eff.drop_duplicates(keys).set_index(keys)
    wide = eff.pivot_table(index=keys, columns="alpha", values="delta_qual", sort=False)
    worse = (
        eff[eff["harmed"].fillna(False)]
        .groupby(keys)["alpha"]
        .agg(lambda a: "worse at α=" + ", ".join(f"{x:g}" for x in sorted(a)))
    )
    out = pd.DataFrame(index=first.index)
    out["checkpoint"] = [
        f"{e} (conv.)" if c else str(e)
        for e, c in zip(first.index.get_level_values("epoch"), first["at_convergence"], strict=True)
    ]
    out["Δ acc (pp)"] = first["delta_acc"].map(_pct)
    out["Δ Acc_c (pp)"] = first["delta_acc_class"].map(_pct)
    out["RR %"] = first["rr"].round(1)
    out["BR %"] = first["br"].round(1)
    out["seconds"] = first["seconds"].round(2)
    out = out.join(_why_columns(first))
    for alpha in sorted(eff["alpha"].unique()):
        out[f"Δ Qual α={alpha:g} (pp)"] = wide[alpha].reindex(out.index).map(_pct)
    flags = worse.reindex(out.index).astype(object)
    out["flag"] = flags.where(flags.notna(), "").map(lambda s: f"⚠ {s}" if s else "")
    out = out.reset_index().drop(columns=["run", "epoch"])
    return out.rename(columns={"repair_class": "class"})


def _why_columns(first: pd.DataFrame) -> pd.DataFrame:
    """What each repair did (regressions.py): no-op patch, kept or not, test images fixed
    and broken; blank where not recorded."""
    out = pd.DataFrame(index=first.index)
    yes_no = {True: "yes", False: "no"}
    for name, col in (("no-op", "no_op"), ("kept", "accepted")):
        out[name] = first[col].astype(object).map(yes_no).fillna("")
    for name, col in (("test fixed", "test_fixed"), ("test broken", "test_broken")):
        out[name] = first[col].astype(object).where(first[col].notna(), "")
    return out


def _switch_table(sp: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, method, class), one column per alpha: "epoch (pattern, +gain)"."""
    short = {ag.PRE: "pre", ag.POST: "post", ag.AFTER: "after"}
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in sp.itertuples(index=False):
        row = rows.setdefault(
            (r.run, r.method, r.repair_class),
            {
                "dataset": r.dataset,
                "model": r.model,
                "method": r.method,
                "class": r.repair_class,
                "seed": r.seed,
                "run": r.run,
                "reference": r.reference_epoch,
                "status": r.status,
            },
        )
        if r.status == ag.INCOMPLETE:
            cell = "incomplete"
        else:
            cell = f"{int(r.best_epoch)} ({short.get(r.pattern, r.pattern)}, +{100 * r.gain:.2f} pp"
            if r.pattern == ag.PRE and not pd.isna(r.p_value):
                cell += f", p = {r.p_value:.2g}" + (" beyond noise" if r.beyond_noise else "")
            cell += ")"
            if r.harm_win:
                cell += " ⚠ reference repair hurt"
        row[f"α={r.alpha:g}: best epoch (pattern, gain)"] = cell
    return pd.DataFrame(list(rows.values()))


def methods_table(meth: pd.DataFrame, every_checkpoint: bool) -> pd.DataFrame:
    """Methods side by side per (dataset, model, class, checkpoint), alphas as columns; only
    each seed's convergence checkpoint unless ``every_checkpoint``."""
    conv = meth if every_checkpoint else meth[meth["checkpoint"] == CONVERGENCE]
    if conv.empty:
        return pd.DataFrame()
    keys = ["dataset", "model", "repair_class", "checkpoint", "method"]
    first = conv.drop_duplicates(keys).set_index(keys)
    out = pd.DataFrame(index=first.index)
    out["n seeds"] = first["n"]
    out["RR %"] = first["rr"].round(1)
    out["BR %"] = first["br"].round(1)
    out["Δ acc (pp)"] = first["delta_acc"].map(_pct)
    out["Δ Acc_c (pp)"] = first["delta_acc_class"].map(_pct)
    wide = conv.pivot_table(index=keys, columns="alpha", values="qual_gain", sort=False)
    for alpha in sorted(conv["alpha"].unique()):
        out[f"Qual gain α={alpha:g} (pp)"] = wide[alpha].reindex(out.index).map(_pct)
    out["seconds"] = first["seconds"].round(2)
    return out.reset_index().rename(columns={"repair_class": "class"})


# --- words -------------------------------------------------------------------------------


def _rules_lines(agg: ag.Aggregation) -> list[str]:
    if agg.rules == "notebook":
        return [
            "Counting rules `--rules notebook` (the paper's notebook): the reference is the"
            " last checkpoint, every checkpoint is compared, ties go to the earliest (a tie"
            " with the last checkpoint counts as pre), and a (run, method, class) with any"
            " checkpoint's repair missing is `incomplete`.",
            "Pattern: `pre-convergence` = best before the last checkpoint,"
            " `post-convergence` = best at the last checkpoint (the notebook's names).",
        ]
    exclude = agg.after_convergence == "exclude"
    compared = (
        "checkpoints up to and including the convergence epoch (later ones are drawn but not"
        " compared; `--after-convergence exclude`, as in the paper)"
        if exclude
        else "every checkpoint, also those after the convergence epoch"
        " (`--after-convergence include`)"
    )
    return [
        "Counting rules `--rules text` (default, the paper's text): the reference is the"
        f" convergence checkpoint; compared are {compared}.",
        "Pattern: `pre-convergence` when the best checkpoint is strictly before the"
        " convergence epoch, `post-convergence` when it is the convergence checkpoint"
        + ("" if exclude else ", `after-convergence` when it is later")
        + ".",
        "Ties: Qual compared after rounding to 12 decimals; the convergence checkpoint wins a"
        " tie, otherwise the earliest tied checkpoint wins.",
        "Status: `incomplete` = no usable repaired record at the convergence checkpoint (left"
        " out of Table 1, counted in its `incomplete` column); `partial` = some compared"
        " checkpoints have no repaired record or the run has no `_SUCCESS` (compared on what"
        " exists and listed below).",
    ]


def _resamples(agg: ag.Aggregation) -> str:
    n = int(agg.headline["n_resamples"].iloc[0]) if len(agg.headline) else stats.N_RESAMPLES
    if n == stats.N_RESAMPLES:
        return str(n)
    return f"{n} (fewer than the usual {stats.N_RESAMPLES}: this sweep has that many units)"


def readiness_table(summary: pd.DataFrame) -> pd.DataFrame:
    """analysis.readiness.summary for reading: percentage points, epochs, 95% CIs."""

    def ci(prefix: str, scale: float, fmt: str) -> list[str]:
        out = []
        for mean, lo, hi in zip(
            summary[f"{prefix}_mean"],
            summary[f"{prefix}_ci_low"],
            summary[f"{prefix}_ci_high"],
            strict=True,
        ):
            if pd.isna(mean):
                out.append("")
            elif pd.isna(lo):
                out.append(format(scale * mean, fmt))
            else:
                out.append(f"{scale * mean:{fmt}} [{scale * lo:{fmt}}, {scale * hi:{fmt}}]")
        return out

    return pd.DataFrame(
        {
            "dataset": summary["dataset"],
            "model": summary["model"],
            "policy": summary["policy"],
            "action": summary["action"],
            "method": summary["method"],
            "class": summary["repair_class"],
            "α": summary["alpha"],
            "n seeds": summary["n"],
            "regret (pp) [95% CI]": ci("regret", 100, ".2f"),
            "gain over conv. (pp) [95% CI]": ci("gain", 100, "+.2f"),
            "epochs saved per track [95% CI]": ci("epochs_saved", 1, ".1f"),
        }
    )


def _readiness_section(doc: Doc, agg: ag.Aggregation, figdir: Path) -> None:
    """The readiness policy's choices against the full repaired curve (analysis.readiness)."""
    doc.h("Readiness policy: when to stop training and repair")
    per_run = agg.readiness_runs
    doc.p(
        "Each run's policy (`training.readiness`) chose, from validation data only, the epoch"
        " to repair (its *policy epoch*); the oracle epoch has the best repaired test Qual of"
        " every evaluated epoch. Per seed: regret = oracle − policy Qual (≥ 0),"
        " gain = policy Qual − Qual repaired at convergence, epochs saved = epochs trained −"
        " the epoch the policy fired (`action: record`; 0 when it never fired). Means over"
        f" seeds with 95% percentile bootstrap CIs (seed {agg.bootstrap_seed}); no CI with"
        " n < 2."
    )
    doc.table(*_capped(readiness_table(agg.readiness), "readiness.csv"), name="readiness")
    readiness_stops_section(doc, agg)
    groups = per_run[["dataset", "model"]].drop_duplicates().head(MAX_GROUP_FIGURES)
    figs = [
        (
            fg.readiness_figure(
                agg.loaded.records,
                per_run,
                d,
                m,
                figdir / f"readiness_{_safe(d)}_{_safe(m)}.png",
                watched=agg.loaded.readiness,
            ),
            f"Repaired test Qual per epoch and the policy's choice - {d} / {m}",
        )
        for d, m in groups.itertuples(index=False)
    ]
    if figs:
        doc.images(figs)


def _definitions(agg: ag.Aggregation) -> list[str]:
    return [
        "`Qual(α, c) = α·Acc_c + (1 − α)·Acc_total` on the test set, accuracies as fractions"
        " (figures and `pp` values in percent / percentage points);"
        f" α ∈ {{{', '.join(f'{a:g}' for a in agg.alphas)}}}.",
        "The convergence epoch is the epoch with the lowest validation loss"
        " (`train/summary.json`).",
        "Unit: one (run = seed, repair method, class c, α). Its switch point is the repaired"
        " checkpoint with the highest Qual among the compared checkpoints.",
        *_rules_lines(agg),
        "`gain` = best Qual − Qual of the repaired reference checkpoint (≥ 0). The headline's"
        " gain is `earlier_gain` = best repaired Qual strictly before the reference − repaired"
        " Qual at the reference (any sign), per seed; its mean has a 95% percentile bootstrap"
        f" CI over seeds only with at least {MIN_SEEDS_FOR_CI} seeds (`scipy.stats.bootstrap`,"
        f" {_resamples(agg)} resamples, seed {agg.bootstrap_seed}, `--bootstrap-seed`) and a"
        " two-sided Wilcoxon signed-rank test across seeds (zero differences dropped; `n` ="
        " the non-zero ones; no test with n < 2).",
        "Beyond noise: per unit, each earlier checkpoint's repaired model against the"
        " reference's, example by example on the test set - an exact one-sided sign-flip test"
        " on the examples the two disagree on (one is right, the other wrong), weighted as in"
        " Qual; Holm-adjusted over the unit's earlier checkpoints; a win is beyond noise when"
        f" the best earlier checkpoint's adjusted p < {agg.noise_alpha:g} (`--noise-alpha`)."
        " The gain's CI (`gain_ci_low`/`_high`) resamples the test examples within each"
        " class; it is given the selection of that checkpoint.",
        "Repair's effect: Δ = repaired − unrepaired model of the same checkpoint; a repair"
        " `harmed` the model when its Δ Qual < 0. A pre-convergence win is flagged"
        " (`harm_win`, ⚠) when the repair at the reference checkpoint harmed the model: the"
        " early repair then wins because the late one hurt, not because it helped.",
        "RR = % of the target class's misclassified repair inputs now correct; BR = % of the"
        " correctly classified ones now wrong; seconds = the repair's time.",
    ]


def _effect_summary(agg: ag.Aggregation) -> list[str]:
    eff = agg.effects
    known = eff[eff["harmed"].notna()]
    if known.empty:
        return ["No repaired model has an unrepaired model of its checkpoint to compare with."]
    models = known.drop_duplicates(["run", "method", "repair_class", "epoch"])
    worse_any = known.groupby(["run", "method", "repair_class", "epoch"])["harmed"].any()
    conv = known[known["at_convergence"]]
    lines = [
        f"Repair lowered Qual for {int(worse_any.sum())} of {len(models)} repaired models"
        " (run × method × class × checkpoint) at one α or more; by α: "
        + ", ".join(
            f"α={a:g}: {int(g['harmed'].sum())} of {len(g)}"
            for a, g in known.groupby("alpha", sort=True)
        )
        + ".",
    ]
    if len(conv):
        lines.append(
            f"At each seed's convergence checkpoint: {int(conv['harmed'].sum())} of"
            f" {len(conv)} (model, α) cases made worse by the repair."
        )
    sp = agg.switch_points
    pre = int((sp["pattern"] == ag.PRE).sum())
    if pre:
        lines.append(
            f"{int(sp['harm_win'].sum())} of the {pre} pre-convergence wins had a harmful repair"
            f" at the reference checkpoint ({agg.reference_name}); they are marked ⚠ below and"
            " in the switch points (`harm_win` in switch_points.csv)."
        )
    secs = models["seconds"].dropna()
    lines.append(
        f"RR {models['rr'].mean():.1f}% and BR {models['br'].mean():.1f}% on average;"
        + (
            f" repairs took {secs.sum():.1f} s in all, median {secs.median():.2f} s each."
            if len(secs)
            else ""
        )
    )
    return lines


# --- the report ---------------------------------------------------------------------------


def _groups(sp: pd.DataFrame) -> list[tuple[str, str, int]]:
    g = sp[["dataset", "model", "repair_class"]].drop_duplicates()
    g = g.sort_values(["dataset", "model", "repair_class"])
    return [(str(d), str(m), int(c)) for d, m, c in g.itertuples(index=False)]


def build(agg: ag.Aggregation, out: Path, *, max_figures: int = DEFAULT_MAX_FIGURES) -> Doc:
    """Draw the figures into ``out/figures`` and return the document that shows them."""
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    loaded, sp, pt, q = agg.loaded, agg.switch_points, agg.patterns, agg.quality
    names = ag.pattern_names(agg.rules, agg.after_convergence)
    runs = loaded.runs
    ref = agg.reference_name
    doc = Doc(f"Early repair: sweep {loaded.sweep}")

    n_rep = int((loaded.records["kind"] == "repaired").sum()) if len(loaded.records) else 0
    n_probs = len(agg.problems)
    problem_text = (
        "no incomplete or damaged results"
        if n_probs == 0
        else f"{plural(n_probs, 'incomplete or damaged result')} ({counts_text(agg.problems)})"
        " - listed at the end"
    )
    doc.p(
        f"Source `{loaded.uri}`; {plural(len(runs), 'run')},"
        f" {int(runs['complete'].sum())} finished;"
        f" {len(loaded.records)} evaluated models ({len(loaded.records) - n_rep} base,"
        f" {n_rep} repaired); counting rules `{agg.rules}`; {problem_text}. Generated"
        f" {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}."
    )

    doc.h("Headline")
    if agg.sentences:
        doc.items(agg.sentences)
        doc.table(*_capped(headline_table(agg.headline, ref), "headline.csv"), name="headline")
        doc.p(
            f"Per (dataset, model, method, class, α): in how many seeds the best repaired"
            f" checkpoint came before {ref} (the paper's count) and how many of those wins are"
            f" beyond test-set noise (paired test per seed, α_noise = {agg.noise_alpha:g}); the"
            f" mean per-seed gain of the best earlier repair over the repair at {ref} in"
            " percentage points of Qual with the per-seed range, a 95% bootstrap CI over seeds"
            f" only with at least {MIN_SEEDS_FOR_CI} seeds, the Wilcoxon signed-rank p-value"
            " (n = non-zero differences; * = n too small for p to reach 0.05 at all) and the"
            " seeds a paired test would need for 80% power at the observed mean and SD; the"
            f" switch point's mean distance to {ref} in epochs (negative = earlier)."
        )
        if not agg.switch_points["beyond_noise"].notna().any():
            doc.p(f"Wins could not be tested against test-set noise: {NOTE_NO_PREDICTIONS}.")
    else:
        doc.p("No (run, method, class) unit could be compared yet; see the problems below.")

    groups = _groups(sp) if len(sp) else []
    shown = groups[:MAX_GROUP_FIGURES]
    capped_note = (
        f"Drawn for the first {len(shown)} of {len(groups)} (dataset, model, class) groups;"
        " the CSV files have them all."
        if len(shown) < len(groups)
        else ""
    )
    doc.h("Repair's effect against the unrepaired model")
    doc.items(_effect_summary(agg))
    effect_figs = [
        (
            fg.effect_figure(
                agg.effects,
                d,
                m,
                c,
                figdir / f"effect_{_safe(d)}_{_safe(m)}_class{c}.png",
                agg.bootstrap_seed,
            ),
            f"Effect of repair on Qual - {d} / {m}, class {c}",
        )
        for d, m, c in shown
        if len(agg.effects)
    ]
    if effect_figs:
        doc.images(effect_figs)
    table, note = _capped(effect_table(agg.effects), "effects.csv")
    if len(table):
        doc.table(table, note, name="effects")
    if capped_note:
        doc.p(capped_note)
    harm_section(doc, agg)

    doc.h("Qual over epochs, aggregated over seeds")
    doc.p(
        "Mean over seeds per checkpoint epoch for the unrepaired model (dashed) and each"
        f" repair method, with a 95% bootstrap band where at least {MIN_SEEDS_FOR_CI} seeds are"
        " averaged; a point of a single seed is hollow and not joined (it is no mean). Ticks"
        " on the epoch axis are the seeds' convergence epochs. Seeds converge at different"
        " epochs, so the second figure of each pair aligns them: x = epoch - that seed's"
        " convergence epoch, with the number of seeds behind each point under it."
    )
    seed_figs = []
    for d, m, c in shown:
        stem = f"{_safe(d)}_{_safe(m)}_class{c}"
        seed_figs += [
            (
                fg.seeds_figure(q, d, m, c, figdir / f"seeds_{stem}.png", agg.bootstrap_seed),
                f"Qual over epochs, mean of seeds - {d} / {m}, class {c}",
            ),
            (
                fg.aligned_figure(q, d, m, c, figdir / f"aligned_{stem}.png", agg.bootstrap_seed),
                f"Qual against epochs from each seed's convergence - {d} / {m}, class {c}",
            ),
        ]
    if seed_figs:
        doc.images(seed_figs)
    if capped_note:
        doc.p(capped_note)

    doc.h("Table 1: runs per pattern")
    doc.p(
        "One unit is a (run, repair class) pair per repair method, as in the paper;"
        " `compared` = units with a pattern, `incomplete` = units left out (see Definitions)."
    )
    doc.p(
        "Why *pre beyond noise* is smaller than the paper's pre-convergence count: the"
        " paper's rule counts a win for any earlier checkpoint whose repaired Qual is higher"
        " than the reference's, however small the difference - even one test image, which"
        " moves Qual(0.5, c) by about 1/(2 n_c) - and it takes the best of the *checkpoints"
        " compared*, so with more checkpoints it finds more wins under no effect at all."
        " *Pre beyond noise* counts a win only when the best earlier checkpoint beats the"
        " reference in an exact paired sign-flip test on the test examples the two models"
        " disagree on, Holm-adjusted over all earlier checkpoints the unit compared"
        f" (p < {agg.noise_alpha:g}); units without per-example predictions are not tested"
        " (patterns.csv: `pre_beyond_noise` of `tested`)."
    )
    top = pt[pt["scope"] == "dataset"].drop(columns=["scope", "model", "repair_class"])
    doc.table(table1_shown(top))
    figs = [(fg.table1_figure(pt, names, figdir / "table1.png"), "Table 1 as bars")]
    n_groups = 0
    if len(sp):
        path, n_groups = fg.overview(sp, figdir / "overview.png")
        figs.append(
            (
                path,
                "Switch epoch per seed (filled, colour = pattern, one marker shape per seed,"
                f" named in the legend) and the reference epoch ({ref}, hollow)",
            )
        )
    doc.images(figs)
    if n_groups > fg.MAX_OVERVIEW_GROUPS:
        doc.p(
            f"The overview shows the first {fg.MAX_OVERVIEW_GROUPS} of {n_groups} (dataset,"
            " model, method, class) groups; switch_points.csv has them all."
        )
    doc.h("Per model and class")
    fine = pt[pt["scope"] == "model-class"].drop(columns=["scope"])
    fine = table1_shown(fine.rename(columns={"repair_class": "class"}))
    doc.table(*_capped(fine, "patterns.csv"))

    doc.h("Repair methods side by side")
    methods = sorted(agg.effects["method"].unique()) if len(agg.effects) else []
    if len(methods) > 1:
        doc.p(
            "Mean over seeds per checkpoint epoch and at each seed's convergence checkpoint"
            " (`convergence`); Qual gain = repaired − unrepaired Qual. The seed-aggregated"
            " figures above overlay the methods' Qual curves."
        )
    else:
        only = methods[0] if methods else DEFAULT_METHOD
        doc.p(
            f"One repair method in this sweep ({only}): nothing to compare side by side. Its"
            " mean effect at each seed's convergence checkpoint is below; methods.csv has every"
            " checkpoint."
        )
    table = methods_table(agg.methods, every_checkpoint=len(methods) > 1)
    if len(table):
        doc.table(*_capped(table, "methods.csv"))

    if len(agg.readiness_runs):
        _readiness_section(doc, agg, figdir)

    doc.h("What was run")
    desc = loaded.sweep_info.get("description")
    if isinstance(desc, str) and desc:
        doc.p(desc)
    classes = sorted({int(c) for cs in runs["repair_classes"] for c in cs})
    all_methods = sorted({m for ms in runs["methods"] for m in ms})
    devices = sorted({d for d in runs["device"].dropna()})
    doc.items(
        [
            f"sweep `{loaded.sweep}` at `{loaded.uri}`",
            "datasets: " + ", ".join(sorted(map(str, runs["dataset"].dropna().unique()))),
            "models: " + ", ".join(sorted(map(str, runs["model"].dropna().unique()))),
            "seeds: " + ", ".join(str(s) for s in sorted(runs["seed"].dropna().unique())),
            "repair classes: " + ", ".join(map(str, classes)),
            "repair methods: " + ", ".join(all_methods),
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
    ].assign(checkpoint_epochs=runs["checkpoint_epochs"].map(join_epochs))
    doc.table(*_capped(run_table, "runs.csv"))
    costs.section(doc, loaded)

    doc.h("Definitions")
    doc.items(_definitions(agg))

    doc.h("Switch points")
    if len(sp):
        doc.table(*_capped(_switch_table(sp), "switch_points.csv"))
    else:
        doc.p("No (run, method, class) units to compare.")

    units, total = select_units(sp, max_figures) if len(sp) else ([], 0)
    doc.h("Per run and class: accuracy (Fig. 3) next to quality (Fig. 4)")
    if len(units) < total:
        doc.p(
            f"Drawn for {len(units)} of {total} (run, class) pairs (cap `--max-figures"
            f" {max_figures}`, spread over every dataset, model and class); every number is"
            " in quality.csv."
        )
    several = sp["method"].nunique() > 1 if len(sp) else False
    order = sp.drop_duplicates(ag.UNIT).set_index(ag.UNIT)
    rank = {
        k: i
        for i, k in enumerate(
            order.sort_values(["dataset", "model", "method", "repair_class", "seed"]).index
        )
    }
    up_to_conv = agg.rules == "text" and agg.after_convergence == "exclude"
    for run, method, cls in sorted(units, key=lambda u: rank[u]):
        stem = f"{_safe(run)}{'_' + _safe(method) if several else ''}_class{cls}"
        label = f"{run}{' / ' + method if several else ''}, class {cls}"
        doc.pair(
            (fg.fig3(q, run, method, cls, figdir / f"fig3_{stem}.png"), f"Fig. 3 - {label}"),
            (
                fg.fig4(q, sp, run, method, cls, up_to_conv, figdir / f"fig4_{stem}.png"),
                f"Fig. 4 - {label}",
            ),
        )

    doc.h("Incomplete and damaged results")
    if n_probs:
        kinds = agg.problems["kind"].value_counts()
        listed = [k for k in PROBLEM_KINDS if k in kinds]
        counts = pd.DataFrame({"kind": listed, "count": [int(kinds[k]) for k in listed]})
        doc.table(counts)
        doc.table(*_capped(agg.problems.drop(columns=["run"]), "problems.csv"))
    else:
        doc.p("None: every run finished and every record was readable and current.")

    doc.h("Files next to this report")
    doc.items(FILES)
    return doc


FILES = [
    "`headline.csv`: the headline per (dataset, model, method, class, α): `n` seeds, `k`"
    " (earlier won, the paper's count), `k_beyond_noise` (of those, beyond test-set noise) of"
    " `n_tested` units with predictions, `harm_wins`, `beat_unrepaired`,"
    " `best_beats_unrepaired` (best repaired model above the unrepaired converged one),"
    " `mean_gain`, `seed_min`/`seed_max`, `seed_ci_low`/`seed_ci_high` (95% bootstrap CI over"
    " seeds, only with n ≥ 5), `wilcoxon_p`/`wilcoxon_n` and `wilcoxon_note` (when n cannot"
    " reach p < 0.05), `seeds_needed` (seeds for 80% power of a paired t-test at 0.05 given"
    " the observed mean and SD of per-seed gains), `mean_offset` (CI with n ≥ 5) and the"
    " sentence (`text`).",
    "`effects.csv`: per repaired model and α, against the unrepaired model of its checkpoint:"
    " `qual_before/after`, `delta_qual`, `delta_acc`, `delta_acc_class`, `rr`, `br`,"
    " `seconds`, `harmed`; `no_op` (the patch changed no repair-set prediction), `accepted`"
    " (kept by `repair.accept`), `test_fixed`/`test_broken` (test images turned right/wrong).",
    "`regressions.parquet`: every test image each repair fixed or broke (run, method, class,"
    " epoch, example index, true label, prediction before and after, change).",
    "`methods.csv`: means over seeds per (dataset, model, class, checkpoint, method, α);"
    " checkpoint `convergence` = each seed's convergence checkpoint.",
    "`records.parquet`, `records.csv`: one row per evaluated model (base and repaired) with"
    " every field of its metrics.json; `per_class_accuracy` expanded into `acc_class_<c>`"
    " columns (empty where a class is absent), plus `n_classes`, `run_complete` and the"
    " store `key`.",
    "`quality.csv`: Qual(α, c) per model and α; `acc_class` is Acc_c, `accuracy` Acc_total;"
    " base models appear once per class their run repairs.",
    "`switch_points.csv`: per (dataset, model, method, run, class, α) `best_epoch`,"
    " `reference_epoch`, `offset` (best − reference), `pattern`, `best_qual`,"
    " `reference_qual`, `gain`, `earlier_gain`, `base_reference_qual` (unrepaired),"
    " `reference_harmed`, `harm_win`, `beats_unrepaired`, `n_compared`, `tied_epochs`,"
    " `status`, `missing_epochs`, `note`; and the paired test of the best earlier checkpoint"
    " against the reference: `n_discordant` (test examples the two disagree on), `p_value`"
    " (exact sign-flip, Holm-adjusted over the unit's earlier checkpoints), `beyond_noise`,"
    " `gain_ci_low`/`gain_ci_high` (class-stratified paired bootstrap over test examples,"
    " given the selection; `gain_ci_method`: percentile of resamples, or for very large"
    " sweeps the normal interval from the exact bootstrap variance).",
    "`patterns.csv`: Table 1 per method - scope `dataset` rows (model and class `all`) and"
    " scope `model-class` rows; beside the paper's counts `pre_beyond_noise` of `tested`"
    " units, and `n_compared_min`/`n_compared_max` (checkpoints a unit compared).",
    "`runs.csv`: one row per run; `problems.csv`: every incomplete or damaged result.",
    "`readiness.csv` (sweeps with `training.readiness`): per (dataset, model, policy, method,"
    " class, α) `n` and the mean with 95% CI (`_ci_low`/`_ci_high`) of `regret`, `gain`,"
    " `epochs_saved` (per track); `readiness_runs.csv`: the same per run and track, with"
    " `fired_epoch`, `policy_epoch`, `oracle_epoch`, `convergence_epoch`, the three Quals,"
    " `unrepaired_convergence_qual` and `beats_unrepaired`; `readiness_stops.csv`: per run"
    " the epoch `action: stop` ends training (`stop_epoch`, when every track fired) and the"
    " `epochs_saved` of the run.",
    "`figures/`: `effect_*.png`, `seeds_*.png`, `aligned_*.png` per (dataset, model, class),"
    " `table1.png`,"
    " `overview.png`, `fig3_<run>_class<c>.png`, `fig4_<run>_class<c>.png`,"
    " `readiness_<dataset>_<model>.png` (with `training.readiness`); each also as `.pdf`"
    " and `.svg` beside the PNG (`--formats`; fonts embedded in the PDF, text as outlines in"
    " the SVG).",
    "`table1.tex`, `headline.tex`: Table 1 and the headline as LaTeX tables (booktabs: put"
    " `\\usepackage{booktabs}` in the preamble, then `\\input{table1.tex}`).",
    "`costs.csv` (runs that recorded costs): per (dataset, model, method) the CPU seconds of"
    " training, features and repair, in total and per run, wall seconds, GPU-hours,"
    " `repair_vs_train` and the epochs a record-only readiness policy would have saved;"
    " `costs_runs.csv`: every stage of every run (`count`, `wall_s`, `cpu_s`, `gpu_s`).",
]


def write_report(
    agg: ag.Aggregation, out: Path, *, max_figures: int = DEFAULT_MAX_FIGURES
) -> list[Path]:
    """Figures, report.md and report.html in ``out``; returns what was written, the two
    report files last."""
    doc = build(agg, out, max_figures=max_figures)
    md = out / "report.md"
    page = out / "report.html"
    md.write_text(doc.markdown(out), encoding="utf-8")
    page.write_text(doc.html(out), encoding="utf-8")
    figs = formats.figure_files(out / "figures")
    return [*figs, md, page]


# --- the terminal ---------------------------------------------------------------------------


def _table1_rows(agg: ag.Aggregation) -> list[dict[str, Any]]:
    """Table 1's per-dataset rows as plain Python values (JSON- and YAML-safe)."""
    names = ag.pattern_names(agg.rules, agg.after_convergence)
    top = agg.patterns[agg.patterns["scope"] == "dataset"]
    return [
        {"dataset": str(r["dataset"]), "method": str(r["method"]), "alpha": float(r["alpha"])}
        | {n: int(r[n]) for n in (*names, "incomplete", "pre_beyond_noise", "tested")}
        for r in top.to_dict("records")
    ]


def _compared(r: dict[str, Any]) -> str:
    """Checkpoints a unit compared, as a range: "4" or "4-6"."""
    lo, hi = r["n_compared_min"], r["n_compared_max"]
    if pd.isna(lo):
        return ""
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


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
        counts = ", ".join(f"{n} {r[n]}{noise if n == ag.PRE else ''}" for n in names)
        out.append(
            Text(
                f"  {r['dataset']} / {r['method']}, α={r['alpha']:g}: {counts};"
                f" compared {r['compared']} ({_compared(r)} checkpoints each),"
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
