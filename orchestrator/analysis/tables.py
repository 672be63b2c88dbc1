"""From validated records to the paper's tables: Qual, switch points and Table 1, under
either counting rules, per repair method.

The paper's authors answered "from which checkpoint does repair give the best model?" by
hand in a notebook - with other rules than the paper's text states (docs/science.md).
Both are here (``--rules``), and the report and README repeat these definitions:

* Accuracies are fractions in 0..1 on the test set. ``Acc_c`` is the per-class accuracy of
  the target class c, ``Acc_total`` the overall accuracy.
* ``Qual(alpha, c) = alpha * Acc_c + (1 - alpha) * Acc_total`` for every base and every
  repaired model; a base checkpoint gets one row per class its run repairs.
* Unit of comparison: one (run, repair method, repair class c, alpha). Its *switch point* is
  the checkpoint whose repaired model has the highest Qual among the *compared* checkpoints;
  its *reference* checkpoint is what "repairing late" means.
* ``rules="text"`` (default, the paper's text): the reference is the convergence checkpoint
  (lowest validation loss, from ``train/summary.json``). Compared (``after_convergence``):
  ``exclude`` - checkpoints up to and including the convergence epoch; ``include`` - every
  checkpoint, a best one after convergence is *after-convergence*. Ties (Qual equal after
  rounding to 12 decimals) go to the convergence checkpoint, else to the earliest.
  *incomplete* when the repaired convergence checkpoint is missing (or its Qual undefined,
  or the convergence epoch unknown); *partial* when another compared checkpoint lacks a
  repaired record or the run has no ``_SUCCESS`` (compared on what exists).
* ``rules="notebook"`` (the notebook's cell): the reference is the last checkpoint; every
  checkpoint is compared; ties go to the earliest (a tie with the last counts as *pre*);
  *incomplete* when any checkpoint's repaired record is missing or its Qual undefined.
* Pattern: *pre-convergence* when the switch point is before the reference checkpoint,
  *post-convergence* when it is the reference itself.
* ``gain`` = best Qual - Qual of the repaired reference (>= 0); ``earlier_gain`` = best Qual
  among checkpoints strictly before the reference - Qual of the repaired reference (any
  sign: the paired difference the headline tests); ``reference_harmed`` when the repair at
  the reference made Qual lower than the unrepaired reference checkpoint; ``harm_win`` a
  pre-convergence unit whose reference repair was harmful - a "win" of early repair that
  mostly says the late repair hurt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from orchestrator.analysis import unit_status
from orchestrator.analysis.problems import INCOMPLETE, PARTIAL, Problem
from orchestrator.analysis.rows import (
    base_rows_at,
    joint_codes,
    plain_strings,
    sort_keys,
    sorted_rows,
)
from orchestrator.analysis.run_frame import join_epochs
from orchestrator.errors import BadInput
from orchestrator.results.layout import DEFAULT_METHOD

AfterConvergence = Literal["exclude", "include"]
Rules = Literal["text", "notebook"]
RULES: tuple[str, ...] = ("text", "notebook")
DEFAULT_ALPHAS: tuple[float, ...] = (0.2, 0.5, 0.8)
TIE_DECIMALS = 12

PRE = "pre-convergence"
POST = "post-convergence"
AFTER = "after-convergence"
UNIT = ["run", "method", "repair_class"]
KEYS = [*UNIT, "alpha"]
GROUP = ["dataset", "model", "method", "repair_class", "alpha"]


def describe_reference(rules: Rules) -> str:
    """What the reference checkpoint is under ``rules``, in words."""
    return "convergence" if rules == "text" else "the last checkpoint"


def rounded(values: Any) -> Any:
    """Qual differences are compared after rounding: float noise never decides anything."""
    return np.round(values, TIE_DECIMALS)


# --- Qual --------------------------------------------------------------------------------


def quality(records: pd.DataFrame, runs: pd.DataFrame, alphas: tuple[float, ...]) -> pd.DataFrame:
    """Qual(alpha, c) for every base model (x each class its run repairs) and repaired model."""
    return quality_rows(records, runs, alphas)[0]


def quality_rows(
    records: pd.DataFrame, runs: pd.DataFrame, alphas: tuple[float, ...]
) -> tuple[pd.DataFrame, np.ndarray]:
    """``quality``, and for each of its rows the records row it comes from: what the tables
    after it look their records up by, rather than joining string keys again."""
    # The models are positions in ``records`` (a base record once per class its run
    # repairs), and the frame is taken from ``records`` once at the end: merging and
    # concatenating frames of string columns cost most of the time for large sweeps.
    run_code, run_names = pd.factorize(records["run"], use_na_sentinel=False)
    n_cls, cls_at, cls_flat = _classes_per_run(runs, run_names)
    base = np.flatnonzero((records["kind"] == "base").to_numpy(dtype=bool))
    repaired = np.flatnonzero((records["kind"] == "repaired").to_numpy(dtype=bool))
    reps = n_cls[run_code[base]]
    within = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
    rows = np.concatenate([np.repeat(base, reps), repaired])
    cls = np.concatenate(
        [
            cls_flat[np.repeat(cls_at[run_code[base]], reps) + within],
            records["repair_class"].iloc[repaired].to_numpy(dtype=np.int64),
        ]
    )
    is_repaired = np.arange(len(rows)) >= len(rows) - len(repaired)
    acc_c = class_accuracy(records, rows, cls)
    conv = runs.set_index("run")["convergence_epoch"]
    conv_of_run = pd.Series(run_names, dtype=object).map(conv).astype("Int64").array

    # Rows sorted by (dataset, model, run, repair_class, alpha, kind, method, epoch). The
    # models are sorted without alpha (a third of the rows to sort), then each
    # (dataset, model, run, repair_class) group is repeated once per alpha. String columns
    # are ranked once over the records (``sort_keys``), not over the models.
    n, a = len(rows), np.asarray(alphas, dtype=float)
    keys = [k[rows] for k in sort_keys(records, ["dataset", "model", "run"])]
    keys += [cls, is_repaired.astype(np.int64)]  # kind: "base" sorts before "repaired"
    keys += [k[rows] for k in sort_keys(records, ["method", "epoch"])]
    order = np.lexsort(keys[::-1])
    starts = np.zeros(n, dtype=bool)
    starts[:1] = True
    for key in keys[:4]:
        in_order = key[order]
        starts[1:] |= in_order[1:] != in_order[:-1]
    group, rank = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    group[order], rank[order] = np.cumsum(starts), np.arange(n)
    tiled = np.lexsort((np.tile(rank, len(a)), np.repeat(a, n), np.tile(group, len(a))))
    pick = np.tile(np.arange(n), len(a))[tiled]
    cols = ["sweep", "dataset", "model", "run", "seed", "epoch", "kind", "method"]
    source = rows[pick]
    out = records[cols].take(source).reset_index(drop=True)
    out.insert(6, "convergence_epoch", conv_of_run.take(run_code[source]))
    out["repair_class"] = cls[pick]
    out["alpha"] = np.repeat(a, n)[tiled]
    out["acc_class"] = acc_c[pick]
    out["accuracy"] = records["accuracy"].to_numpy(dtype=float)[source]
    out["qual"] = qual_value(out["alpha"], out["acc_class"], out["accuracy"])
    return out, source


def qual_value(alpha: Any, acc_class: Any, accuracy: Any) -> Any:
    """Qual(alpha, c) = alpha Acc_c + (1 - alpha) Acc_total, of arrays or Series alike."""
    return alpha * acc_class + (1 - alpha) * accuracy


def class_accuracy(records: pd.DataFrame, rows: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Acc_c of the records at ``rows`` for the classes ``cls``: NaN for a class past a
    record's per-class accuracies."""
    acc = records[[c for c in records.columns if c.startswith("acc_class_")]]
    acc = acc.to_numpy(dtype=float)
    inside = cls < acc.shape[1]
    out = np.full(len(rows), np.nan)
    out[inside] = acc[rows[inside], cls[inside]]
    return out


def model_values(
    records: pd.DataFrame, rows: np.ndarray, cls: np.ndarray, alpha: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Acc_c, Acc_total, Qual(alpha, c)) of the records at ``rows`` as ``quality`` computes
    them, NaN where a row is -1 (no such model)."""
    has = rows >= 0
    acc_class, accuracy = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    acc_class[has] = class_accuracy(records, rows[has], cls[has])
    accuracy[has] = records["accuracy"].to_numpy(dtype=float)[rows[has]]
    return acc_class, accuracy, qual_value(alpha, acc_class, accuracy)


def _classes_per_run(
    runs: pd.DataFrame, names: pd.Index
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The classes each run of ``names`` repairs, as listed in ``runs`` (none for a run not
    there): (how many per run, where each run's classes begin in the third, all of them)."""
    listed = dict(zip(runs["run"].tolist(), runs["repair_classes"].tolist(), strict=True))
    per_run = []
    for name in names:
        got = listed.get(name)
        got = list(got) if pd.api.types.is_list_like(got) else [got]
        per_run.append([int(c) for c in got if not pd.isna(c)])
    n = np.array([len(c) for c in per_run], dtype=np.int64)
    flat = np.array([c for cs in per_run for c in cs], dtype=np.int64)
    return n, np.cumsum(n) - n, flat


# --- switch points ----------------------------------------------------------------------


def _reference_epochs(runs: pd.DataFrame, rules: Rules) -> pd.Series:
    info = runs.set_index("run")
    if rules == "text":
        return info["convergence_epoch"].astype("Int64")
    last = info["checkpoint_epochs"].map(lambda e: max(e) if len(e) else None)
    return last.astype("Int64")


def expected_units(runs: pd.DataFrame, alphas: tuple[float, ...]) -> pd.DataFrame:
    """Every (run, method, class, alpha) a sweep should give, also without records yet:
    per run each method with each class (in the order listed), each at every alpha."""
    which: list[int] = []
    methods: list[Any] = []
    classes: list[int] = []
    for i, (ms, cs) in enumerate(zip(runs["methods"], runs["repair_classes"], strict=True)):
        listed = [c for c in _items(cs) if not pd.isna(c)]
        for m in _items(ms):
            if not pd.isna(m):
                which += [i] * len(listed)
                methods += [m] * len(listed)
                classes += [int(c) for c in listed]
    a = np.asarray(alphas, dtype=float)
    cols = ["sweep", "dataset", "model", "run", "seed", "convergence_epoch"]
    out = runs[cols].take(np.repeat(np.asarray(which, dtype=np.int64), len(a)))
    out = out.reset_index(drop=True)
    out["method"] = np.repeat(np.asarray(methods, dtype=object), len(a))
    out["repair_class"] = np.repeat(np.asarray(classes, dtype=np.int64), len(a))
    out["alpha"] = np.tile(a, len(which))
    order = ["sweep", "dataset", "model", "method", "run", "seed", "repair_class", "alpha"]
    return out[[*order, "convergence_epoch"]]


def _items(value: Any) -> list[Any]:
    """A list cell's items (a scalar: itself), as ``DataFrame.explode`` takes them."""
    if pd.api.types.is_list_like(value):
        return list(value)
    return [value]


def switch_points(
    records: pd.DataFrame,
    runs: pd.DataFrame,
    after_convergence: AfterConvergence = "exclude",
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    rules: Rules = "text",
) -> tuple[pd.DataFrame, UnitModels]:
    """The best repaired checkpoint per (run, method, class, alpha), with pattern and
    status; and the repaired models of each (``UnitModels``, by row of that frame).

    Every (method, class) a run repairs gets a row per alpha, also when it has no record
    yet (then it is incomplete). The repaired models' Qual is computed from the records as
    ``quality`` computes it, so the switch points need no Qual frame (and can be found
    beside it in another process).
    """
    check_rules(rules, after_convergence)
    expected = expected_units(runs, alphas)
    ref_of = _reference_epochs(runs, rules)
    sp = expected.assign(reference_epoch=expected["run"].map(ref_of).astype("Int64"))
    m = UnitModels.of(sp, records, alphas)
    ref_e = sp["reference_epoch"].to_numpy(dtype=float, na_value=np.nan)[m.at]
    conv_e = sp["convergence_epoch"].to_numpy(dtype=float, na_value=np.nan)[m.at]
    compared = ~np.isnan(ref_e) & ~np.isnan(m.qual)
    if rules == "text" and after_convergence == "exclude":
        compared &= m.epoch <= conv_e
    summary = _unit_summary(
        m.at[compared],
        len(sp),
        m.epoch[compared],
        m.qual[compared],
        ref_e[compared],
        conv_e[compared],
        rules,
    )
    for col, values in summary.items():
        sp[col] = values
    sp["base_reference_qual"], sp["base_convergence_qual"] = _base_quals(sp, records)
    sp["best_epoch"] = sp["best_epoch"].astype("Int64")
    # The status is the same for every alpha: from the models at the smallest.
    rep = ~np.isnan(ref_e)
    one = rep & (m.alpha == m.alpha[rep].min(initial=np.inf))
    defined = ~np.isnan(m.qual[one])
    st = unit_status.status(
        sp, m.unit_of, m.unit[one], m.epoch[one], defined, runs, rules, after_convergence
    )
    for col, values in st.items():
        sp[col] = values[m.unit_of]
    ref_e = sp["reference_epoch"]
    pattern = np.select(
        [
            (sp["best_epoch"] < ref_e).fillna(False).to_numpy(bool),
            (sp["best_epoch"] == ref_e).fillna(False).to_numpy(bool),
            (sp["best_epoch"] > ref_e).fillna(False).to_numpy(bool),
        ],
        [PRE, POST, AFTER],
        default="",
    )
    keep = sp["status"] != INCOMPLETE
    sp["pattern"] = pd.Series(pattern, index=sp.index, dtype=object).where(keep, "")
    for col in ("best_epoch", "best_qual", "best_earlier_qual"):
        sp[col] = sp[col].where(keep)
    sp["n_compared"] = sp["n_compared"].where(keep, 0)
    sp["tied_epochs"] = sp["tied_epochs"].where(keep, "")
    sp["offset"] = (sp["best_epoch"] - ref_e).astype("Int64")
    sp["gain"] = sp["best_qual"] - sp["reference_qual"]
    sp["earlier_gain"] = sp["best_earlier_qual"] - sp["reference_qual"]
    harm = rounded(sp["reference_qual"] - sp["base_reference_qual"])
    sp["reference_harmed"] = pd.array(harm < 0, dtype="boolean").copy()
    sp.loc[harm.isna().to_numpy() | ~keep.to_numpy(), "reference_harmed"] = pd.NA
    sp["harm_win"] = (sp["pattern"] == PRE) & sp["reference_harmed"].fillna(False)
    beats = rounded(sp["best_qual"] - sp["base_reference_qual"])
    sp["beats_unrepaired"] = pd.array(beats > 0, dtype="boolean").copy()
    sp.loc[beats.isna().to_numpy(), "beats_unrepaired"] = pd.NA
    sp["run_complete"] = sp["run"].map(runs.set_index("run")["complete"]).astype(bool)
    cols = [
        "sweep",
        "dataset",
        "model",
        "method",
        "run",
        "seed",
        "repair_class",
        "alpha",
        "convergence_epoch",
        "reference_epoch",
        "best_epoch",
        "offset",
        "pattern",
        "best_qual",
        "reference_qual",
        "gain",
        "convergence_qual",
        "best_earlier_qual",
        "earlier_gain",
        "base_reference_qual",
        "base_convergence_qual",
        "reference_harmed",
        "harm_win",
        "beats_unrepaired",
        "n_compared",
        "tied_epochs",
        "status",
        "missing_epochs",
        "run_complete",
        "note",
    ]
    order = sorted_rows(sp, ["dataset", "model", "method", "repair_class", "alpha", "seed", "run"])
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    models = replace(m, at=where[m.at], unit_of=m.unit_of[order])
    return plain_strings(sp[cols].take(order).reset_index(drop=True)), models


@dataclass
class UnitModels:
    """The repaired models of the switch points' units, one per repaired record and alpha
    (the Qual frame's repaired rows): ``at`` is its row of the switch points, ``unit`` its
    (run, method, class) as a number - ``unit_of`` gives each row of the switch points its
    number, in order of first appearance. Found by integer codes: grouping and joining the
    Qual frame by its string keys cost most of the switch points' time for large sweeps."""

    at: np.ndarray
    unit: np.ndarray
    row: np.ndarray  # its records row
    epoch: np.ndarray
    qual: np.ndarray
    alpha: np.ndarray
    unit_of: np.ndarray

    @classmethod
    def of(cls, sp: pd.DataFrame, records: pd.DataFrame, alphas: tuple[float, ...]) -> UnitModels:
        rep = np.flatnonzero((records["kind"] == "repaired").to_numpy(dtype=bool))
        unit_of, unit_rec = joint_codes(
            [sp[c].to_numpy(dtype=object) for c in ("run", "method")]
            + [sp["repair_class"].to_numpy(dtype=np.int64)],
            [records[c].to_numpy(dtype=object)[rep] for c in ("run", "method")]
            + [records["repair_class"].to_numpy(dtype=np.int64, na_value=-1)[rep]],
        )
        a = np.asarray(alphas, dtype=float)
        a_sp, a_rec = joint_codes([sp["alpha"].to_numpy(dtype=float)], [a])
        n_a = int(max(a_sp.max(initial=-1), a_rec.max(initial=-1))) + 1
        n_u = int(max(unit_of.max(initial=-1), unit_rec.max(initial=-1))) + 1
        slot = np.full(n_u * n_a, -1, dtype=np.int64)
        slot[unit_of * n_a + a_sp] = np.arange(len(sp))
        # every repaired record at every alpha, as the Qual frame has them
        row, unit = np.repeat(rep, len(a)), np.repeat(unit_rec, len(a))
        alpha, at = np.tile(a, len(rep)), slot[unit * n_a + np.tile(a_rec, len(rep))]
        keep = at >= 0  # (a unit the runs do not list is no switch point's)
        row, alpha = row[keep], alpha[keep]
        classes = records["repair_class"].to_numpy(dtype=np.int64, na_value=-1)[row]
        return cls(
            at[keep],
            unit[keep],
            row,
            records["epoch"].to_numpy(dtype=np.int64)[row],
            model_values(records, row, classes, alpha)[2],
            alpha,
            unit_of,
        )


def _unit_summary(
    uid: np.ndarray,
    n: int,
    epoch: np.ndarray,
    qual: np.ndarray,
    ref_e: np.ndarray,
    conv_e: np.ndarray,
    rules: Rules,
) -> dict[str, Any]:
    """Per unit ``0..n-1`` (``uid``: each compared repaired model's, one per epoch): the
    best model (ties: under the text rules the reference checkpoint, then the earliest;
    under the notebook's the earliest), the tied epochs, the Qual at the reference and at
    convergence, the best before the reference and how many were compared; NaN (none)
    where a unit has none. No grouping by key: per-unit maxima and one sort of the best."""
    at_ref = epoch == ref_e
    r = rounded(qual)
    top = np.full(n, -np.inf)
    np.maximum.at(top, uid, r)
    tied = np.flatnonzero(r == top[uid])  # the best of each unit, and any tied with it
    keys = (
        (epoch[tied], uid[tied]) if rules == "notebook" else (epoch[tied], ~at_ref[tied], uid[tied])
    )
    order = tied[np.lexsort(keys)]
    first = order[np.r_[True, uid[order][1:] != uid[order][:-1]]] if len(order) else order

    def per_unit(values: np.ndarray, at: np.ndarray) -> np.ndarray:
        out = np.full(n, np.nan)
        out[uid[at]] = values[at]
        return out

    n_tied = np.bincount(uid[tied], minlength=n)
    many = tied[n_tied[uid[tied]] > 1]
    tied_epochs = np.full(n, "", dtype=object)
    if len(many):
        joined = pd.Series(epoch[many]).groupby(uid[many]).agg(join_epochs)
        tied_epochs[joined.index.to_numpy()] = joined.to_numpy()
    earlier = np.flatnonzero(epoch < ref_e)
    best_earlier = np.full(n, -np.inf)
    np.maximum.at(best_earlier, uid[earlier], qual[earlier])
    return {
        "best_epoch": per_unit(epoch, first),
        "best_qual": per_unit(qual, first),
        "reference_qual": per_unit(qual, at_ref),
        "convergence_qual": per_unit(qual, epoch == conv_e),
        "best_earlier_qual": np.where(best_earlier == -np.inf, np.nan, best_earlier),
        "tied_epochs": tied_epochs,
        "n_compared": np.bincount(uid, minlength=n),
    }


def _base_quals(sp: pd.DataFrame, records: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Qual of each row's unrepaired model at its reference and at its convergence epoch
    (NaN: no such record), found in one lookup."""
    epochs = [sp[c] for c in ("reference_epoch", "convergence_epoch")]
    known = np.concatenate([e.notna().to_numpy(dtype=bool) for e in epochs])
    at = np.tile(np.arange(len(sp)), 2)[known]
    found = np.full(len(known), -1, dtype=np.int64)
    found[known] = base_rows_at(
        records,
        sp["run"].to_numpy(dtype=object)[at],
        np.concatenate([e.to_numpy(dtype=np.int64, na_value=0) for e in epochs])[known],
    )
    cls = np.tile(sp["repair_class"].to_numpy(dtype=np.int64), 2)
    qual = model_values(records, found, cls, np.tile(sp["alpha"].to_numpy(dtype=float), 2))[2]
    return qual[: len(sp)], qual[len(sp) :]


def check_rules(rules: str, after_convergence: str) -> None:
    if rules not in RULES:
        raise BadInput(f"--rules {rules!r}: use text (the paper's text) or notebook")
    if after_convergence not in ("exclude", "include"):
        raise BadInput(f"--after-convergence {after_convergence!r}: use exclude or include")
    if rules == "notebook" and after_convergence != "exclude":
        raise BadInput(
            "--after-convergence applies to --rules text only; the notebook's rules compare"
            " every checkpoint against the last"
        )


# Table 1's columns under the notebook's rules, whose reference is the last checkpoint:
# named after it, not after convergence.
BEFORE_LAST = "before-last"
AT_LAST = "at-last"


def pattern_names(rules: Rules, after_convergence: AfterConvergence) -> list[str]:
    """Table 1's pattern columns (``patterns``), in order."""
    if rules == "notebook":
        return [BEFORE_LAST, AT_LAST]
    if rules == "text" and after_convergence == "include":
        return [PRE, POST, AFTER]
    return [PRE, POST]


def _internal_patterns(rules: Rules, after_convergence: AfterConvergence) -> list[str]:
    """The ``pattern`` values behind ``pattern_names`` (switch_points.csv keeps these)."""
    if rules == "text" and after_convergence == "include":
        return [PRE, POST, AFTER]
    return [PRE, POST]


def patterns(
    sp: pd.DataFrame, after_convergence: AfterConvergence = "exclude", rules: Rules = "text"
) -> pd.DataFrame:
    """The paper's Table 1, per repair method: per dataset and alpha (and per model and
    class) units per pattern.

    A "run" here is one (run, repair class) unit, as in the paper (GTSRB: 5 seeds x 3
    classes = 15). ``compared`` counts those with a pattern; ``incomplete`` those left out.
    Beside the paper's counts: ``pre_beyond_noise``, the pre-convergence units whose win is
    beyond test-set noise (``noise.py``), of ``tested`` units that had predictions, and the
    fewest and most checkpoints a unit compared (``n_compared_min``/``_max``: the more
    candidates, the more naive wins under no effect at all).
    """
    names = pattern_names(rules, after_convergence)
    internal = _internal_patterns(rules, after_convergence)
    counts_cols = [*names, "compared", "incomplete"]
    extra = ["pre_beyond_noise", "tested", "n_compared_min", "n_compared_max"]

    def table(by: list[str]) -> pd.DataFrame:
        if sp.empty:
            return pd.DataFrame(columns=[*by, *counts_cols, *extra])
        pattern = sp["pattern"].where(sp["status"] != INCOMPLETE, "_i")
        c = sp[by].assign(_p=pattern).groupby([*by, "_p"], sort=True).size().unstack(fill_value=0)
        c = c.reindex(columns=[*internal, "_i"], fill_value=0)
        c = c.rename(columns={"_i": "incomplete", **dict(zip(internal, names, strict=True))})
        c["compared"] = c[names].sum(axis=1)
        c = c[counts_cols].rename_axis(columns=None).reset_index()
        done = sp[sp["status"] != INCOMPLETE]
        beyond = done["beyond_noise"] if "beyond_noise" in done else pd.Series(pd.NA, done.index)
        more = done.assign(
            pre_beyond_noise=beyond.fillna(False).astype(bool),
            tested=beyond.notna(),
        ).groupby(by, sort=True)
        stats = more.agg(
            pre_beyond_noise=("pre_beyond_noise", "sum"),
            tested=("tested", "sum"),
            n_compared_min=("n_compared", "min"),
            n_compared_max=("n_compared", "max"),
        ).reset_index()
        return c.merge(stats, on=by, how="left")

    top = table(["dataset", "method", "alpha"]).assign(
        scope="dataset", model="all", repair_class="all"
    )
    fine = table(GROUP).assign(scope="model-class")
    fine["repair_class"] = fine["repair_class"].astype(str)
    out = pd.concat([top, fine], ignore_index=True)
    out = out[
        ["scope", "dataset", "model", "method", "repair_class", "alpha", *counts_cols, *extra]
    ]
    for col in [*counts_cols, "pre_beyond_noise", "tested"]:
        out[col] = out[col].fillna(0).astype("int64")
    for col in ("n_compared_min", "n_compared_max"):
        out[col] = out[col].astype("Int64")
    return out


def unit_problems(prefix: str, sp: pd.DataFrame) -> list[Problem]:
    out = []
    firsts = sp.drop_duplicates(UNIT)
    for row in firsts[firsts["status"] != "ok"].itertuples(index=False):
        kind = INCOMPLETE if row.status == INCOMPLETE else PARTIAL
        detail = row.note
        if kind == PARTIAL and detail == "run not finished (no _SUCCESS)":
            continue  # already listed once per run as unfinished
        where = f"{prefix}{row.run}/ class {row.repair_class}"
        if row.method != DEFAULT_METHOD:
            where += f" ({row.method})"
        out.append(Problem(kind, where, row.run, detail))
    return out
