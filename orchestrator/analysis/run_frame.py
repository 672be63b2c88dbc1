"""The runs frame, the readiness frame and the checks that compare runs with their records.

One row per run seen (from its records, ``run.json`` and ``train/summary.json``, each of
which may be missing or damaged), built in a few grouped passes over the records - a loop
of pandas operations per run would cost seconds for a sweep of thousands of runs - and the
problems a run as a whole can have (unfinished, no summary, convergence epochs that
disagree).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.problems import INCONSISTENT, NO_SUMMARY, UNFINISHED, Problem
from orchestrator.analysis.rows import plain_strings
from orchestrator.results import layout
from orchestrator.results.records import RunInfo, TrainSummary
from orchestrator.store.limits import MAX_CLASSES, MAX_NAME_CHARS

DEFAULT_METHOD = layout.DEFAULT_METHOD

READINESS_COLUMNS = [
    "run",
    "policy",
    "action",
    "alpha",
    "stopped_training",
    "method",
    "repair_class",
    "fired_epoch",
    "ready_epoch",
    "epochs_trained",
    "scores",  # [(epoch, watched value or None), ...]: empty in older summaries
]


def readiness_frame(sums: dict[str, TrainSummary | None]) -> pd.DataFrame:
    """What each run's readiness policy decided (train/summary.json), one row per track."""
    rows = [
        (
            run,
            r.policy,
            r.action,
            r.alpha,
            r.stopped_training,
            t.method,
            t.repair_class,
            t.fired_epoch,
            t.ready_epoch,
            s.epochs_trained,
            [tuple(p) for p in t.scores],
        )
        for run, s in sorted(sums.items())
        if s is not None and (r := s.readiness) is not None
        for t in r.tracks
    ]
    df = pd.DataFrame(rows, columns=READINESS_COLUMNS)
    for col in ("repair_class", "fired_epoch", "ready_epoch", "epochs_trained"):
        df[col] = df[col].astype("Int64")
    df["alpha"] = df["alpha"].astype(float)
    return plain_strings(df.astype({c: object for c in ("run", "policy", "action", "method")}))


def with_convergence(records: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Records written while training (training.repair_every) without a convergence epoch
    take their run's (train/summary.json)."""
    missing = records["convergence_epoch"].isna()
    if not missing.any():
        return records
    conv = records["run"].map(runs.set_index("run")["convergence_epoch"]).astype("Int64")
    records["convergence_epoch"] = records["convergence_epoch"].fillna(conv)
    return records


def join_epochs(values: Any) -> str:
    """Epochs as "1;5;10": one CSV cell, sorted."""
    return ";".join(str(int(v)) for v in sorted(values))


def runs_frame(
    sweep: str,
    records: pd.DataFrame,
    infos: dict[str, RunInfo | None],
    sums: dict[str, TrainSummary | None],
    finished: set[str],
    others: set[str],
) -> pd.DataFrame:
    # Per-run facts from the records in a few grouped passes: a loop of pandas operations
    # per run would cost seconds for a sweep of thousands of runs.
    run_codes, run_index = pd.factorize(records["run"])
    run_names = run_index.tolist()

    def sets(col: str, rows: Any = True) -> dict[str, list[Any]]:
        """The distinct values of ``col`` per run (of the ``rows`` chosen), from codes."""
        values = records[col]
        keep = values.notna().to_numpy() & rows
        codes, found = pd.factorize(values[keep])
        width, uniques = max(len(found), 1), found.tolist()
        runs, which = divmod(np.unique(run_codes[keep] * width + codes), width)
        out: dict[str, list[Any]] = {}
        for run, i in zip(runs.tolist(), which.tolist(), strict=True):
            out.setdefault(run_names[run], []).append(uniques[i])
        return out

    firsts = records.drop_duplicates("run")
    first_of = {
        run: {"dataset": d, "model": m, "seed": s}
        for run, d, m, s in zip(
            *(firsts[c].tolist() for c in ("run", "dataset", "model", "seed")), strict=True
        )
    }
    n_of = dict(zip(run_names, np.bincount(run_codes, minlength=len(run_names)), strict=True))
    classes_of = sets("repair_class")
    methods_of = sets("method")
    epochs_of = sets("epoch", (records["kind"] == "base").to_numpy())
    convs_of = sets("convergence_epoch")
    rows = []
    for run in sorted(set(n_of) | finished | others):
        info = infos.get(run)
        summary = sums.get(run)
        spec = info.run if info else {}
        first = first_of.get(run)
        if first is not None:
            dataset, model, seed = first["dataset"], first["model"], int(first["seed"])
        else:
            dataset = _label(spec.get("dataset"))
            model = _label(spec.get("model"))
            seed = _spec_int(spec.get("seed"))
        # run.json is untrusted too: only what has the shape a RunSpec gives it counts.
        listed = spec.get("repair_classes")
        named = [_spec_int(c) for c in listed] if isinstance(listed, list) else []
        classes = {c for c in named if c is not None and 0 <= c < MAX_CLASSES} | {
            int(c) for c in classes_of.get(run, [])
        }
        methods = set(_spec_methods(spec)) | set(methods_of.get(run, []))
        epochs = sorted(int(e) for e in epochs_of.get(run, []))
        seen = convs_of.get(run, [])
        conv = int(seen[0]) if len(seen) == 1 else None
        if summary is not None:
            conv = summary.convergence_epoch
            # The epochs a run evaluates: its checkpoints and those repaired while it trained.
            epochs = sorted(set(summary.checkpoint_epochs) | set(summary.online_epochs))
        rows.append(
            {
                "sweep": sweep,
                "dataset": dataset,
                "model": model,
                "run": run,
                "seed": seed,
                "convergence_epoch": conv,
                "checkpoint_epochs": epochs,
                "repair_classes": sorted(classes),
                "methods": sorted(methods) or [DEFAULT_METHOD],
                "complete": run in finished,
                "has_summary": summary is not None,
                "epochs_trained": summary.epochs_trained if summary else None,
                "stopped_early": summary.stopped_early if summary else None,
                "best_val_loss": summary.best_val_loss if summary else None,
                "device": info.device if info else None,
                "n_records": n_of.get(run, 0),
            }
        )
    df = pd.DataFrame(
        rows,
        columns=[
            "sweep",
            "dataset",
            "model",
            "run",
            "seed",
            "convergence_epoch",
            "checkpoint_epochs",
            "repair_classes",
            "methods",
            "complete",
            "has_summary",
            "epochs_trained",
            "stopped_early",
            "best_val_loss",
            "device",
            "n_records",
        ],
    )
    df["seed"] = df["seed"].astype("Int64")
    df["convergence_epoch"] = df["convergence_epoch"].astype("Int64")
    df["epochs_trained"] = df["epochs_trained"].astype("Int64")
    df = plain_strings(df)
    return df.sort_values(["dataset", "model", "seed", "run"], na_position="last").reset_index(
        drop=True
    )


def _spec_methods(spec: dict[str, Any]) -> list[str]:
    """The repair methods a run's spec names: ``repair.methods`` (a list) or
    ``repair.method`` (one name, the first spec); none when the spec is unknown."""
    repair = spec.get("repair")
    if not isinstance(repair, dict):
        return []
    methods = repair.get("methods", repair.get("method"))
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list):
        return []
    return [m for m in methods if isinstance(m, str) and 0 < len(m) <= MAX_NAME_CHARS]


def _label(part: Any) -> str | None:
    if isinstance(part, dict):
        part = part.get("label") or part.get("name")
    return part if isinstance(part, str) and len(part) <= MAX_NAME_CHARS else None


def _spec_int(value: Any) -> int | None:
    """An integer of a run.json's spec, if it is one that fits the tables' int64."""
    ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    return value if ok else None


def run_problems(
    prefix: str, records: pd.DataFrame, runs: pd.DataFrame, sums: dict[str, TrainSummary | None]
) -> list[Problem]:
    out = []
    seen: dict[str, list[int]] = {}
    # Records written while training (training.repair_every) say None: nothing to compare.
    pairs = records[["run", "convergence_epoch"]].dropna().drop_duplicates()
    for run, conv in zip(
        pairs["run"].to_numpy(), pairs["convergence_epoch"].to_numpy(), strict=True
    ):
        seen.setdefault(run, []).append(int(conv))
    for row in runs.itertuples(index=False):
        where = f"{prefix}{row.run}"
        if not row.complete:
            out.append(
                Problem(UNFINISHED, f"{where}/", row.run, "no _SUCCESS: still running or failed")
            )
        said = sorted(int(e) for e in seen.get(row.run, []))
        if row.run in sums:
            if sums[row.run] is not None and any(e != row.convergence_epoch for e in said):
                out.append(
                    Problem(
                        INCONSISTENT,
                        f"{where}/",
                        row.run,
                        f"records say convergence epoch {join_epochs(said)} but train/summary.json"
                        f" says {row.convergence_epoch}; using the summary",
                    )
                )
        elif row.complete or row.n_records:
            out.append(
                Problem(
                    NO_SUMMARY,
                    f"{where}/train/summary.json",
                    row.run,
                    "missing; the convergence epoch comes from the records",
                )
            )
            if len(said) > 1:
                out.append(
                    Problem(
                        INCONSISTENT,
                        f"{where}/",
                        row.run,
                        f"records disagree on the convergence epoch ({join_epochs(said)})",
                    )
                )
    return out
