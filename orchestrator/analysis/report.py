"""The readable report (report.md, report.html) that ``aggregate`` writes.

The CSV tables are for programs; this is for the person who ran the sweep and wants the
answer first: the headline (did repairing before convergence win, how often, how sure, and
was the win real?), then repair's effect against the unrepaired model, seed-aggregated
curves, the paper's Table 1 (per method), the methods side by side, and only then the
detail - what ran, the definitions, the switch points, the paper's Fig. 3 next to Fig. 4
per run, every incomplete or damaged result. ``build`` calls one function per section, in
that order; the tables' shaping lives in shown.py, the terminal's summary in terminal.py.

Figures are capped so big sweeps stay readable: ``max_figures`` (run, method, class) units
for Fig. 3/4, spread round-robin over every dataset, model and class; ``MAX_GROUP_FIGURES``
(dataset, model, class) groups for the seed-aggregated and effect figures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis import costs, formats, stats
from orchestrator.analysis import figures as fg
from orchestrator.analysis import readiness_figures as rfg
from orchestrator.analysis import run_figures as runfg
from orchestrator.analysis.document import Doc, file_part
from orchestrator.analysis.file_notes import FILES
from orchestrator.analysis.harm_report import harm_section, readiness_stops_section
from orchestrator.analysis.headline import MIN_SEEDS_FOR_CI
from orchestrator.analysis.noise import NOTE_NO_PREDICTIONS
from orchestrator.analysis.problems import PROBLEM_KINDS, counts_text
from orchestrator.analysis.run_frame import join_epochs
from orchestrator.analysis.shown import (
    capped,
    effect_table,
    headline_table,
    methods_table,
    readiness_table,
    switch_table,
    table1_shown,
)
from orchestrator.analysis.words import plural
from orchestrator.results.layout import DEFAULT_METHOD

DEFAULT_MAX_FIGURES = 24
MAX_GROUP_FIGURES = 12
FIGURE_NAME = re.compile(
    r"^(fig3_.+|fig4_.+|seeds_.+|effect_.+|readiness_.+|overview|table1)\.(png|pdf|svg)$"
)


def _safe(name: str) -> str:
    return file_part(name)  # store names: bounded, never '..', a hash when changed


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
    doc.table(*capped(readiness_table(agg.readiness), "readiness.csv"), name="readiness")
    readiness_stops_section(doc, agg)
    groups = per_run[["dataset", "model"]].drop_duplicates().head(MAX_GROUP_FIGURES)
    figs = [
        (
            rfg.readiness_figure(
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


@dataclass(frozen=True)
class _Shared:
    """What several sections of one report share."""

    agg: ag.Aggregation
    figdir: Path
    shown: list[tuple[str, str, int]]  # the (dataset, model, class) groups drawn
    capped_note: str  # said under the group figures when not every group is drawn
    max_figures: int


def build(agg: ag.Aggregation, out: Path, *, max_figures: int = DEFAULT_MAX_FIGURES) -> Doc:
    """Draw the figures into ``out/figures`` and return the document that shows them."""
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    doc = Doc(f"Early repair: sweep {agg.loaded.sweep}")
    sp = agg.switch_points
    groups = _groups(sp) if len(sp) else []
    shown = groups[:MAX_GROUP_FIGURES]
    capped_note = (
        f"Drawn for the first {len(shown)} of {len(groups)} (dataset, model, class) groups;"
        " the CSV files have them all."
        if len(shown) < len(groups)
        else ""
    )
    s = _Shared(agg, figdir, shown, capped_note, max_figures)
    _intro(doc, agg)
    _headline_section(doc, agg)
    _effects_section(doc, s)
    _seeds_section(doc, s)
    _table1_section(doc, s)
    _per_model_class_section(doc, agg)
    _methods_section(doc, agg)
    if len(agg.readiness_runs):
        _readiness_section(doc, agg, figdir)
    _what_ran_section(doc, agg)
    doc.h("Definitions")
    doc.items(_definitions(agg))
    _switch_points_section(doc, agg)
    _run_pairs_section(doc, s)
    _problems_section(doc, agg)
    doc.h("Files next to this report")
    doc.items(FILES)
    return doc


def _intro(doc: Doc, agg: ag.Aggregation) -> None:
    """Where the results came from, how many there are, and when the report was made."""
    loaded = agg.loaded
    runs = loaded.runs
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


def _headline_section(doc: Doc, agg: ag.Aggregation) -> None:
    ref = agg.reference_name
    doc.h("Headline")
    if agg.sentences:
        doc.items(agg.sentences)
        doc.table(*capped(headline_table(agg.headline, ref), "headline.csv"), name="headline")
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


def _effects_section(doc: Doc, s: _Shared) -> None:
    agg, figdir, shown, capped_note = s.agg, s.figdir, s.shown, s.capped_note
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
    table, note = capped(effect_table(agg.effects), "effects.csv")
    if len(table):
        doc.table(table, note, name="effects")
    if capped_note:
        doc.p(capped_note)
    harm_section(doc, agg)


def _seeds_section(doc: Doc, s: _Shared) -> None:
    agg, figdir, q = s.agg, s.figdir, s.agg.quality
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
    for d, m, c in s.shown:
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
    if s.capped_note:
        doc.p(s.capped_note)


def _table1_section(doc: Doc, s: _Shared) -> None:
    agg, figdir = s.agg, s.figdir
    sp, pt, ref = agg.switch_points, agg.patterns, agg.reference_name
    names = ag.pattern_names(agg.rules, agg.after_convergence)
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


def _per_model_class_section(doc: Doc, agg: ag.Aggregation) -> None:
    pt = agg.patterns
    doc.h("Per model and class")
    fine = pt[pt["scope"] == "model-class"].drop(columns=["scope"])
    fine = table1_shown(fine.rename(columns={"repair_class": "class"}))
    doc.table(*capped(fine, "patterns.csv"))


def _methods_section(doc: Doc, agg: ag.Aggregation) -> None:
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
        doc.table(*capped(table, "methods.csv"))


def _what_ran_section(doc: Doc, agg: ag.Aggregation) -> None:
    loaded = agg.loaded
    runs = loaded.runs
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
    doc.table(*capped(run_table, "runs.csv"))
    costs.section(doc, loaded)


def _switch_points_section(doc: Doc, agg: ag.Aggregation) -> None:
    sp = agg.switch_points
    doc.h("Switch points")
    if len(sp):
        doc.table(*capped(switch_table(sp), "switch_points.csv"))
    else:
        doc.p("No (run, method, class) units to compare.")


def _run_pairs_section(doc: Doc, s: _Shared) -> None:
    """The paper's Fig. 3 next to its Fig. 4 for each (run, method, class) drawn."""
    agg, figdir, max_figures = s.agg, s.figdir, s.max_figures
    sp, q = agg.switch_points, agg.quality
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
            (runfg.fig3(q, run, method, cls, figdir / f"fig3_{stem}.png"), f"Fig. 3 - {label}"),
            (
                runfg.fig4(q, sp, run, method, cls, up_to_conv, figdir / f"fig4_{stem}.png"),
                f"Fig. 4 - {label}",
            ),
        )


def _problems_section(doc: Doc, agg: ag.Aggregation) -> None:
    n_probs = len(agg.problems)
    doc.h("Incomplete and damaged results")
    if n_probs:
        kinds = agg.problems["kind"].value_counts()
        listed = [k for k in PROBLEM_KINDS if k in kinds]
        counts = pd.DataFrame({"kind": listed, "count": [int(kinds[k]) for k in listed]})
        doc.table(counts)
        doc.table(*capped(agg.problems.drop(columns=["run"]), "problems.csv"))
    else:
        doc.p("None: every run finished and every record was readable and current.")


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
