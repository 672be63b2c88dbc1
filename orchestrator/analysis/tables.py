"""From a results tree to tidy tables: records, Qual, switch points and the paper's Table 1.

The paper's authors answered "from which checkpoint does repair give the best model?" by
hand in a notebook. This module does it from whatever a sweep left in a store (a folder or
S3, always through the ``Store`` protocol and one bulk ``read_many``), tolerating runs that
are still going or files that are damaged: those are counted and listed, never fatal here
(the CLI's ``--strict`` turns them into bad input).

Definitions (the report and the README repeat them):

* Accuracies are fractions in 0..1 on the test set. ``Acc_c`` is the per-class accuracy of
  the target class c, ``Acc_total`` the overall accuracy.
* ``Qual(alpha, c) = alpha * Acc_c + (1 - alpha) * Acc_total`` for every base and every
  repaired model; a base checkpoint gets one row per class its run repairs.
* Unit of comparison: one (run, repair class c, alpha). Its *switch point* is the checkpoint
  epoch whose repaired model has the highest Qual among the *compared* checkpoints.
* Compared checkpoints (``after_convergence``):
  ``exclude`` (default, as the paper): checkpoints up to and including the convergence epoch
  (the epoch with the lowest validation loss, from ``train/summary.json``). Pattern
  *pre-convergence* when the best is strictly before the convergence epoch,
  *post-convergence* when it is the convergence checkpoint itself.
  ``include``: every checkpoint; a best after the convergence epoch is *after-convergence*.
* Ties: Qual values are compared after rounding to 12 decimal places (float noise from the
  sum never decides a pattern). The convergence checkpoint wins a tie, so a run counts as
  pre-convergence only when an earlier checkpoint is strictly better; among other tied
  checkpoints the earliest wins (the paper asks whether earlier is better).
* ``gain`` = best Qual - Qual of the repaired convergence checkpoint (>= 0; 0 for
  post-convergence).
* Status per (run, class): *incomplete* when the repaired record of the convergence
  checkpoint is missing (or its Qual undefined, or the convergence epoch unknown) - excluded
  from Table 1 and counted in its ``incomplete`` column; *partial* when some compared
  checkpoints lack a repaired record or the run has no ``_SUCCESS`` yet - compared on the
  records present, counted, and listed; *ok* otherwise.
* Damaged input is a problem, not a crash: an object the store cannot return, JSON that does
  not parse (a truncated write), a record that fails the schema, a ``schema_version`` other
  than ``SCHEMA_VERSION``, or a record whose fields disagree with its key. Such
  objects are left out of every table and listed in ``problems``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from orchestrator.errors import BadInput
from orchestrator.results.records import SCHEMA_VERSION, MetricsRecord, RunInfo, TrainSummary
from orchestrator.spec import describe_error
from orchestrator.store import Store

AfterConvergence = Literal["exclude", "include"]
M = TypeVar("M", bound=BaseModel)
DEFAULT_ALPHAS: tuple[float, ...] = (0.2, 0.5, 0.8)
TIE_DECIMALS = 12

PRE = "pre-convergence"
POST = "post-convergence"
AFTER = "after-convergence"

# Problem kinds, in the order the report lists them.
UNREADABLE = "unreadable"  # the store could not return the object
DAMAGED = "damaged"  # not JSON, or not a valid record (a truncated or hand-edited file)
SCHEMA = "schema-version"  # written by an older or newer early-repair
MISPLACED = "misplaced"  # the record's own fields disagree with where it lies
INCONSISTENT = "inconsistent"  # records disagree with train/summary.json
NO_SUMMARY = "missing-summary"  # metrics without the training step's summary
UNFINISHED = "unfinished-run"  # no _SUCCESS: still running, or it failed
INCOMPLETE = "incomplete"  # (run, class) without the convergence repair: not in Table 1
PARTIAL = "partial"  # (run, class) compared on fewer checkpoints than it should have
PROBLEM_KINDS = (
    UNREADABLE,
    DAMAGED,
    SCHEMA,
    MISPLACED,
    INCONSISTENT,
    NO_SUMMARY,
    UNFINISHED,
    INCOMPLETE,
    PARTIAL,
)

_RUN_KEY = (
    r"(?P<run>[^/]+)/(?:(?P<file>run\.json|_SUCCESS|train/summary\.json)"
    r"|epoch_(?P<epoch>\d{3,})/(?:(?P<base>base)|repair/class_(?P<cls>\d+))/metrics\.json)"
)
# Keys relative to a results root (<sweep>/<run>/...) or to one sweep's folder (<run>/...).
# The two never match the same key, which is how we tell which one a URI names.
ROOT_KEY = re.compile(rf"^(?P<sweep>[^/]+)/{_RUN_KEY}$")
SWEEP_KEY = re.compile(rf"^{_RUN_KEY}$")
ROOT_SWEEP_JSON = re.compile(r"^(?P<sweep>[^/]+)/sweep\.json$")

RECORD_COLUMNS = [
    "sweep",
    "dataset",
    "model",
    "run",
    "seed",
    "epoch",
    "convergence_epoch",
    "kind",
    "repair_class",
    "method",
    "accuracy",
    "f1_macro",
    "recall_macro",
    "auc_macro",
    "rr",
    "br",
    "n_neg",
    "n_pos",
    "fitness",
    "n_patched",
    "n_intact",
    "iterations",
    "seconds",
    "n_classes",
    "schema_version",
    "run_complete",
    "key",
]
_INT_COLUMNS = ("repair_class", "n_neg", "n_pos", "n_patched", "n_intact", "iterations")
_FLOAT_COLUMNS = ("auc_macro", "rr", "br", "fitness", "seconds")
ID_COLUMNS = ["sweep", "dataset", "model", "run", "seed"]


@dataclass(frozen=True)
class Problem:
    """Something in the tree that is damaged, missing or unfinished; one line in the report."""

    kind: str
    key: str  # the store key (or run/class) it concerns
    run: str
    detail: str


@dataclass
class Loaded:
    """Everything read from one sweep, validated; damaged objects are in ``problems``."""

    uri: str
    sweep: str
    prefix: str  # key prefix of the sweep inside the store ("" when the URI is the sweep)
    records: pd.DataFrame  # one row per MetricsRecord, see RECORD_COLUMNS + acc_class_<c>
    runs: pd.DataFrame  # one row per run seen
    sweep_info: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    objects_read: int = 0


@dataclass
class Aggregation:
    loaded: Loaded
    alphas: tuple[float, ...]
    after_convergence: AfterConvergence
    quality: pd.DataFrame
    switch_points: pd.DataFrame
    patterns: pd.DataFrame
    problems: pd.DataFrame

    @property
    def sweep(self) -> str:
        return self.loaded.sweep


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --- finding the sweep ------------------------------------------------------------------


def _locate(uri: str, keys: list[str], sweep: str | None) -> tuple[str | None, str]:
    """(sweep name or None when it must come from the records, key prefix of the sweep)."""
    sweeps = sorted(
        {m["sweep"] for k in keys if (m := ROOT_KEY.match(k) or ROOT_SWEEP_JSON.match(k))}
    )
    if sweeps:
        if sweep is None:
            if len(sweeps) > 1:
                shown = ", ".join(sweeps[:10]) + (" ..." if len(sweeps) > 10 else "")
                raise BadInput(f"{uri} holds {len(sweeps)} sweeps ({shown}): pick one with --sweep")
            sweep = sweeps[0]
        elif sweep not in sweeps:
            raise BadInput(f"{uri}: no sweep {sweep!r} here; found: {', '.join(sweeps[:10])}")
        return sweep, f"{sweep}/"
    if "sweep.json" in keys or any(SWEEP_KEY.match(k) for k in keys):
        return sweep, ""  # the URI names one sweep's folder
    raise BadInput(
        f"{uri}: no results found (expected <sweep>/<run>/epoch_NNN/.../metrics.json);"
        " check the URI"
    )


def _list(store: Store, sweep: str | None) -> list[str]:
    if sweep:
        keys = store.list(f"{sweep}/")
        if keys:
            return keys
    return store.list()


# --- parsing ----------------------------------------------------------------------------


def _decode(
    key: str, run: str, blob: bytes | Exception, problems: list[Problem]
) -> dict[str, Any] | None:
    if isinstance(blob, Exception):
        problems.append(Problem(UNREADABLE, key, run, _one_line(f"{type(blob).__name__}: {blob}")))
        return None
    try:
        data = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        problems.append(Problem(DAMAGED, key, run, "not valid JSON (truncated or partly written)"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(DAMAGED, key, run, "not a JSON object"))
        return None
    return data


def _validate(
    model: type[M], key: str, run: str, blob: bytes | Exception, problems: list[Problem]
) -> M | None:
    data = _decode(key, run, blob, problems)
    if data is None:
        return None
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        problems.append(
            Problem(
                SCHEMA,
                key,
                run,
                f"schema_version {version!r}; this early-repair reads version"
                f" {SCHEMA_VERSION} (aggregate with the matching early-repair version)",
            )
        )
        return None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems.append(Problem(DAMAGED, key, run, describe_error(e, model.__name__)))
        return None


def _misplaced(rec: MetricsRecord, sweep: str, run: str, epoch: int, cls: int | None) -> str:
    where = []
    if rec.sweep != sweep:
        where.append(f"sweep {rec.sweep!r}")
    if rec.run != run:
        where.append(f"run {rec.run!r}")
    if rec.epoch != epoch:
        where.append(f"epoch {rec.epoch}")
    if rec.kind != ("base" if cls is None else "repaired"):
        where.append(f"kind {rec.kind!r}")
    if cls is not None and rec.repair_class != cls:
        where.append(f"repair_class {rec.repair_class}")
    return ", ".join(where)


def load(store: Store, sweep: str | None = None) -> Loaded:
    """Read one sweep below ``store``: the store's root holds sweeps, or is one sweep."""
    uri = store.uri
    keys = _list(store, sweep)
    name, prefix = _locate(uri, keys, sweep)

    matcher = ROOT_KEY if prefix else SWEEP_KEY
    metrics: list[tuple[str, str, int, int | None]] = []  # key, run, epoch, class
    run_json: dict[str, str] = {}
    summaries: dict[str, str] = {}
    finished: set[str] = set()
    for key in keys:
        if not key.startswith(prefix):
            continue
        m = matcher.match(key)
        if m is None:
            continue
        run = m["run"]
        if m["epoch"] is not None:
            cls = None if m["base"] else int(m["cls"])
            metrics.append((key, run, int(m["epoch"]), cls))
        elif m["file"] == "run.json":
            run_json[run] = key
        elif m["file"] == "_SUCCESS":
            finished.add(run)
        else:
            summaries[run] = key
    sweep_key = f"{prefix}sweep.json"
    wanted = [k for k, *_ in metrics] + list(run_json.values()) + list(summaries.values())
    if sweep_key in keys:
        wanted.append(sweep_key)
    blobs = store.read_many(wanted)
    failed = [v for v in blobs.values() if isinstance(v, Exception)]
    if failed and len(failed) == len(blobs):
        # Nothing at all could be read: the store is unusable (endpoint down, no access),
        # which is bad input with one line, not a report full of "unreadable".
        raise BadInput(f"{uri}: cannot read any result ({_one_line(failed[0])})") from failed[0]
    problems: list[Problem] = []

    sweep_info: dict[str, Any] = {}
    if sweep_key in blobs:
        sweep_info = _decode(sweep_key, "", blobs[sweep_key], problems) or {}
    if name is None:
        name = _sweep_name(uri, sweep_info, blobs, metrics)
        if sweep is not None and sweep != name:
            raise BadInput(f"{uri} holds sweep {name!r}, not {sweep!r}; fix --sweep")

    infos = {r: _validate(RunInfo, k, r, blobs[k], problems) for r, k in run_json.items()}
    sums = {r: _validate(TrainSummary, k, r, blobs[k], problems) for r, k in summaries.items()}

    rows: list[dict[str, Any]] = []
    accs: list[list[float | None]] = []
    for key, run, epoch, cls in metrics:
        rec = _validate(MetricsRecord, key, run, blobs[key], problems)
        if rec is None:
            continue
        wrong = _misplaced(rec, name, run, epoch, cls)
        if wrong:
            problems.append(Problem(MISPLACED, key, run, f"the record says {wrong}"))
            continue
        row = rec.model_dump(exclude={"per_class_accuracy"})
        row["n_classes"] = len(rec.per_class_accuracy)
        row["run_complete"] = run in finished
        row["key"] = key
        rows.append(row)
        accs.append(rec.per_class_accuracy)

    records = _records_frame(rows, accs)
    runs = _runs_frame(name, records, infos, sums, finished, set(run_json) | set(summaries))
    problems.extend(_run_problems(prefix, records, runs, sums))
    return Loaded(uri, name, prefix, records, runs, sweep_info, problems, len(blobs))


def _sweep_name(
    uri: str,
    sweep_info: dict[str, Any],
    blobs: dict[str, bytes | Exception],
    metrics: list[tuple[str, str, int, int | None]],
) -> str:
    if isinstance(sweep_info.get("name"), str):
        return sweep_info["name"]
    names = Counter()
    for key, *_ in metrics[:50]:
        blob = blobs.get(key)
        try:
            names[json.loads(blob)["sweep"]] += 1  # type: ignore[arg-type]
        except (TypeError, ValueError, KeyError):
            continue
    if names:
        return names.most_common(1)[0][0]
    return Path(uri.rstrip("/")).name or "sweep"


def _records_frame(rows: list[dict[str, Any]], accs: list[list[float | None]]) -> pd.DataFrame:
    n_classes = max((len(a) for a in accs), default=0)
    matrix = np.full((len(accs), n_classes), np.nan)
    for i, a in enumerate(accs):
        matrix[i, : len(a)] = np.array(a, dtype=float)  # None -> nan
    df = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    for col in _INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    for col in _FLOAT_COLUMNS:
        df[col] = df[col].astype(float)
    for col in ("seed", "epoch", "convergence_epoch", "n_classes", "schema_version"):
        df[col] = df[col].astype("int64")
    df["run_complete"] = df["run_complete"].astype(bool)
    acc = pd.DataFrame(matrix, columns=[f"acc_class_{c}" for c in range(n_classes)])
    df = pd.concat([df, acc], axis=1)
    # Base before repaired, classes and epochs ascending: the order people read them in.
    order = df["kind"].map({"base": 0, "repaired": 1})
    df = df.assign(_o=order).sort_values(
        ["dataset", "model", "run", "_o", "repair_class", "epoch"], na_position="first"
    )
    return df.drop(columns="_o").reset_index(drop=True)


def _runs_frame(
    sweep: str,
    records: pd.DataFrame,
    infos: dict[str, RunInfo | None],
    sums: dict[str, TrainSummary | None],
    finished: set[str],
    others: set[str],
) -> pd.DataFrame:
    by_run = {r: g for r, g in records.groupby("run", sort=False)} if len(records) else {}
    rows = []
    for run in sorted(set(by_run) | finished | others):
        g = by_run.get(run)
        info = infos.get(run)
        summary = sums.get(run)
        spec = info.run if info else {}
        first = g.iloc[0] if g is not None else None
        if first is not None:
            dataset, model, seed = first["dataset"], first["model"], int(first["seed"])
        else:
            dataset = _label(spec.get("dataset"))
            model = _label(spec.get("model"))
            seed = spec.get("seed")
        classes = set(spec.get("repair_classes") or [])
        epochs: list[int] = []
        conv = None
        if g is not None:
            classes |= {int(c) for c in g["repair_class"].dropna()}
            epochs = sorted({int(e) for e in g.loc[g["kind"] == "base", "epoch"]})
            seen = g["convergence_epoch"].unique()
            conv = int(seen[0]) if len(seen) == 1 else None
        if summary is not None:
            conv = summary.convergence_epoch
            epochs = sorted(set(summary.checkpoint_epochs))
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
                "complete": run in finished,
                "has_summary": summary is not None,
                "epochs_trained": summary.epochs_trained if summary else None,
                "stopped_early": summary.stopped_early if summary else None,
                "best_val_loss": summary.best_val_loss if summary else None,
                "device": info.device if info else None,
                "n_records": 0 if g is None else len(g),
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
    return df.sort_values(["dataset", "model", "seed", "run"], na_position="last").reset_index(
        drop=True
    )


def _label(part: Any) -> Any:
    if isinstance(part, dict):
        return part.get("label") or part.get("name")
    return part


def _run_problems(
    prefix: str, records: pd.DataFrame, runs: pd.DataFrame, sums: dict[str, TrainSummary | None]
) -> list[Problem]:
    out = []
    seen = records.groupby("run")["convergence_epoch"].unique() if len(records) else {}
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


# --- quality, switch points, patterns -------------------------------------------------


def quality(records: pd.DataFrame, runs: pd.DataFrame, alphas: tuple[float, ...]) -> pd.DataFrame:
    """Qual(alpha, c) for every base model (x each class its run repairs) and repaired model."""
    acc_cols = [c for c in records.columns if c.startswith("acc_class_")]
    acc = records[acc_cols].to_numpy(dtype=float)
    pairs = runs[["run", "repair_classes"]].explode("repair_classes").dropna()
    pairs = pairs.rename(columns={"repair_classes": "repair_class"})
    pairs["repair_class"] = pairs["repair_class"].astype("int64")
    pos = records.reset_index(drop=True).assign(_row=np.arange(len(records)))
    base = pos[pos["kind"] == "base"].drop(columns="repair_class").merge(pairs, on="run")
    rep = pos[pos["kind"] == "repaired"]
    models = pd.concat([base, rep], ignore_index=True)
    cls = models["repair_class"].to_numpy(dtype="int64")
    rows = models["_row"].to_numpy(dtype="int64")
    inside = cls < acc.shape[1]
    acc_c = np.full(len(models), np.nan)
    acc_c[inside] = acc[rows[inside], cls[inside]]
    conv = models["run"].map(runs.set_index("run")["convergence_epoch"]).astype("Int64")
    frame = pd.DataFrame(
        {
            "sweep": models["sweep"],
            "dataset": models["dataset"],
            "model": models["model"],
            "run": models["run"],
            "seed": models["seed"],
            "epoch": models["epoch"],
            "convergence_epoch": conv,
            "kind": models["kind"],
            "repair_class": models["repair_class"].astype("int64"),
            "acc_class": acc_c,
            "accuracy": models["accuracy"].astype(float),
        }
    )
    n = len(frame)
    a = np.asarray(alphas, dtype=float)
    out = frame.loc[np.tile(np.arange(n), len(a))].reset_index(drop=True)
    out.insert(9, "alpha", np.repeat(a, n))
    out["qual"] = out["alpha"] * out["acc_class"] + (1 - out["alpha"]) * out["accuracy"]
    order = out["kind"].map({"base": 0, "repaired": 1})
    out = out.assign(_o=order).sort_values(
        ["dataset", "model", "run", "repair_class", "alpha", "_o", "epoch"]
    )
    return out.drop(columns="_o").reset_index(drop=True)


def join_epochs(values: Any) -> str:
    """Epochs as "1;5;10": one CSV cell, sorted."""
    return ";".join(str(int(v)) for v in sorted(values))


def switch_points(
    qual: pd.DataFrame,
    runs: pd.DataFrame,
    after_convergence: AfterConvergence = "exclude",
    alphas: tuple[float, ...] | None = None,
) -> pd.DataFrame:
    """The best repaired checkpoint per (run, class, alpha), with pattern and status.

    Every class a run repairs gets a row per alpha, also when it has no record yet (then it
    is incomplete), so ``alphas`` is needed when ``qual`` may be empty.
    """
    _check_mode(after_convergence)
    keys = ["run", "repair_class", "alpha"]
    alphas = tuple(sorted(qual["alpha"].unique())) if alphas is None else alphas
    expected = runs.explode("repair_classes").dropna(subset=["repair_classes"])
    expected = expected.rename(columns={"repair_classes": "repair_class"})
    expected["repair_class"] = expected["repair_class"].astype("int64")
    expected = expected.merge(pd.DataFrame({"alpha": list(alphas)}, dtype=float), how="cross")

    conv_known = qual["convergence_epoch"].notna()
    rep = qual[(qual["kind"] == "repaired") & conv_known].copy()
    rep["convergence_epoch"] = rep["convergence_epoch"].astype("int64")
    defined = rep[rep["qual"].notna()]
    compared = (
        defined
        if after_convergence == "include"
        else defined[defined["epoch"] <= defined["convergence_epoch"]]
    )
    rounded = compared["qual"].round(TIE_DECIMALS)
    top = rounded.groupby([compared[k] for k in keys]).transform("max")
    cand = compared[rounded == top].assign(_conv=lambda d: d["epoch"] == d["convergence_epoch"])
    cand = cand.sort_values([*keys, "_conv", "epoch"], ascending=[True, True, True, False, True])
    best = cand.drop_duplicates(keys)[[*keys, "epoch", "qual"]]
    best = best.rename(columns={"epoch": "best_epoch", "qual": "best_qual"})
    tied = cand.groupby(keys)["epoch"].agg(lambda s: join_epochs(s) if len(s) > 1 else "")
    at_conv = compared[compared["epoch"] == compared["convergence_epoch"]]
    conv_q = at_conv[[*keys, "qual"]].rename(columns={"qual": "convergence_qual"})
    base = qual[(qual["kind"] == "base") & (qual["epoch"] == qual["convergence_epoch"])]
    base_q = base[[*keys, "qual"]].rename(columns={"qual": "base_convergence_qual"})
    n_cmp = compared.groupby(keys).size().rename("n_compared")

    sp = expected[
        ["sweep", "dataset", "model", "run", "seed", "repair_class", "alpha", "convergence_epoch"]
    ]
    sp = sp.merge(best, on=keys, how="left").merge(conv_q, on=keys, how="left")
    sp = sp.merge(base_q, on=keys, how="left")
    sp = sp.merge(tied.rename("tied_epochs"), on=keys, how="left")
    sp = sp.merge(n_cmp, on=keys, how="left")
    sp["best_epoch"] = sp["best_epoch"].astype("Int64")
    sp["n_compared"] = sp["n_compared"].fillna(0).astype("int64")
    sp["tied_epochs"] = sp["tied_epochs"].map(lambda v: v if isinstance(v, str) else "")

    # Status is the same for every alpha: decide it once per (run, class).
    present = rep.groupby(["run", "repair_class"])["epoch"].agg(set).to_dict()
    undefined = rep[rep["qual"].isna()].groupby(["run", "repair_class"])["epoch"].agg(set)
    undefined = undefined.to_dict()
    info = runs.set_index("run")
    status: dict[tuple[str, int], tuple[str, str, str]] = {}
    for run, cls in expected[["run", "repair_class"]].drop_duplicates().itertuples(index=False):
        conv = info.at[run, "convergence_epoch"]
        have = present.get((run, cls), set())
        bad = undefined.get((run, cls), set())
        notes = []
        if pd.isna(conv):
            status[(run, cls)] = (
                INCOMPLETE,
                "",
                "convergence epoch unknown (no train/summary.json)",
            )
            continue
        conv = int(conv)
        wanted = set(info.at[run, "checkpoint_epochs"]) | {conv}
        if after_convergence == "exclude":
            wanted = {e for e in wanted if e <= conv}
        missing = wanted - have
        if conv in bad:
            status[(run, cls)] = (
                INCOMPLETE,
                join_epochs(missing),
                f"Acc_{cls} undefined at the convergence checkpoint"
                " (class absent from the test set?)",
            )
            continue
        if conv not in have:
            status[(run, cls)] = (
                INCOMPLETE,
                join_epochs(missing),
                f"no repaired record at the convergence checkpoint (epoch {conv})",
            )
            continue
        if missing:
            notes.append(f"no repaired record at epoch(s) {join_epochs(missing)}")
        if bad & wanted:
            notes.append(f"Acc_{cls} undefined at epoch(s) {join_epochs(bad & wanted)}")
        if not info.at[run, "complete"]:
            notes.append("run not finished (no _SUCCESS)")
        status[(run, cls)] = ("partial" if notes else "ok", join_epochs(missing), "; ".join(notes))

    st = pd.DataFrame(
        [(r, c, *v) for (r, c), v in status.items()],
        columns=["run", "repair_class", "status", "missing_epochs", "note"],
    )
    sp = sp.merge(st, on=["run", "repair_class"], how="left")
    conv_e = sp["convergence_epoch"]
    pattern = np.select(
        [
            (sp["best_epoch"] < conv_e).fillna(False).to_numpy(bool),
            (sp["best_epoch"] == conv_e).fillna(False).to_numpy(bool),
            (sp["best_epoch"] > conv_e).fillna(False).to_numpy(bool),
        ],
        [PRE, POST, AFTER],
        default="",
    )
    sp["pattern"] = pd.Series(pattern, index=sp.index).where(sp["status"] != INCOMPLETE, "")
    keep = sp["status"] != INCOMPLETE
    for col in ("best_epoch", "best_qual"):
        sp[col] = sp[col].where(keep)
    sp["n_compared"] = sp["n_compared"].where(keep, 0)
    sp["tied_epochs"] = sp["tied_epochs"].where(keep, "")
    sp["offset"] = (sp["best_epoch"] - conv_e).astype("Int64")
    sp["gain"] = sp["best_qual"] - sp["convergence_qual"]
    sp["run_complete"] = sp["run"].map(info["complete"]).astype(bool)
    cols = [
        "sweep",
        "dataset",
        "model",
        "run",
        "seed",
        "repair_class",
        "alpha",
        "convergence_epoch",
        "best_epoch",
        "offset",
        "pattern",
        "best_qual",
        "convergence_qual",
        "gain",
        "base_convergence_qual",
        "n_compared",
        "tied_epochs",
        "status",
        "missing_epochs",
        "run_complete",
        "note",
    ]
    sp = sp[cols].sort_values(["dataset", "model", "repair_class", "alpha", "seed", "run"])
    return sp.reset_index(drop=True)


def _check_mode(after_convergence: str) -> None:
    if after_convergence not in ("exclude", "include"):
        raise BadInput(f"--after-convergence {after_convergence!r}: use exclude or include")


def pattern_names(after_convergence: AfterConvergence) -> list[str]:
    return [PRE, POST, AFTER] if after_convergence == "include" else [PRE, POST]


def patterns(sp: pd.DataFrame, after_convergence: AfterConvergence = "exclude") -> pd.DataFrame:
    """The paper's Table 1: per dataset and alpha (and per model and class) runs per pattern.

    A "run" here is one (run, repair class) unit, as in the paper (GTSRB: 5 seeds x 3 classes
    = 15). ``compared`` counts those with a pattern; ``incomplete`` those left out.
    """
    names = pattern_names(after_convergence)
    counts_cols = [*names, "compared", "incomplete"]

    def table(by: list[str]) -> pd.DataFrame:
        if sp.empty:
            return pd.DataFrame(columns=[*by, *counts_cols])
        c = pd.crosstab([sp[k] for k in by], sp["pattern"].where(sp["status"] != INCOMPLETE, "_i"))
        c = c.reindex(columns=[*names, "_i"], fill_value=0).rename(columns={"_i": "incomplete"})
        c["compared"] = c[names].sum(axis=1)
        return c[counts_cols].rename_axis(columns=None).reset_index()

    top = table(["dataset", "alpha"]).assign(scope="dataset", model="all", repair_class="all")
    fine = table(["dataset", "model", "repair_class", "alpha"]).assign(scope="model-class")
    fine["repair_class"] = fine["repair_class"].astype(str)
    out = pd.concat([top, fine], ignore_index=True)
    out = out[["scope", "dataset", "model", "repair_class", "alpha", *counts_cols]]
    for col in counts_cols:
        out[col] = out[col].astype("int64")
    return out


def _pair_problems(prefix: str, sp: pd.DataFrame) -> list[Problem]:
    out = []
    firsts = sp.drop_duplicates(["run", "repair_class"])
    for row in firsts[firsts["status"] != "ok"].itertuples(index=False):
        kind = INCOMPLETE if row.status == INCOMPLETE else PARTIAL
        detail = row.note
        if kind == PARTIAL and detail == "run not finished (no _SUCCESS)":
            continue  # already listed once per run as unfinished
        out.append(Problem(kind, f"{prefix}{row.run}/ class {row.repair_class}", row.run, detail))
    return out


def problems_frame(problems: list[Problem]) -> pd.DataFrame:
    rank = {k: i for i, k in enumerate(PROBLEM_KINDS)}
    ordered = sorted(problems, key=lambda p: (rank.get(p.kind, 99), p.key))
    return pd.DataFrame(
        [(p.kind, p.run, p.key, p.detail) for p in ordered],
        columns=["kind", "run", "key", "detail"],
    )


def aggregate(
    store: Store,
    *,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    after_convergence: AfterConvergence = "exclude",
    sweep: str | None = None,
) -> Aggregation:
    """Load one sweep and compute every table; never writes anything."""
    alphas = check_alphas(alphas)
    _check_mode(after_convergence)
    loaded = load(store, sweep)
    if loaded.records.empty and not loaded.problems:
        raise BadInput(f"{store.uri}: sweep {loaded.sweep!r} has no metrics records yet")
    q = quality(loaded.records, loaded.runs, alphas)
    sp = switch_points(q, loaded.runs, after_convergence, alphas)
    pt = patterns(sp, after_convergence)
    probs = problems_frame(loaded.problems + _pair_problems(loaded.prefix, sp))
    return Aggregation(loaded, alphas, after_convergence, q, sp, pt, probs)


def check_alphas(alphas: Any) -> tuple[float, ...]:
    values = sorted({float(a) for a in alphas})
    if not values:
        raise BadInput("--alpha: give at least one value between 0 and 1")
    bad = [a for a in values if not 0.0 <= a <= 1.0]
    if bad:
        raise BadInput(f"--alpha {bad[0]:g}: alpha weighs Acc_c against Acc_total; use 0..1")
    return tuple(values)


def write_tables(agg: Aggregation, out: Path) -> list[Path]:
    """Write every table; returns the files written (figures and report: ``report.py``)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    rec = agg.loaded.records
    rec.to_parquet(out / "records.parquet", index=False)
    runs = agg.loaded.runs.assign(
        checkpoint_epochs=agg.loaded.runs["checkpoint_epochs"].map(join_epochs),
        repair_classes=agg.loaded.runs["repair_classes"].map(join_epochs),
    )
    for name, df in (
        ("records.csv", rec),
        ("quality.csv", agg.quality),
        ("switch_points.csv", agg.switch_points),
        ("patterns.csv", agg.patterns),
        ("runs.csv", runs),
        ("problems.csv", agg.problems),
    ):
        df.to_csv(out / name, index=False)
        written.append(out / name)
    return [out / "records.parquet", *written]


def raise_if_problems(agg: Aggregation) -> None:
    """``--strict``: any incomplete, partial or damaged result is bad input (one line)."""
    if agg.problems.empty:
        return
    counts = agg.problems["kind"].value_counts()
    kinds = ", ".join(f"{k}: {counts[k]}" for k in PROBLEM_KINDS if k in counts)
    first = agg.problems.iloc[0]
    raise BadInput(
        f"{agg.loaded.uri}: {len(agg.problems)} incomplete or damaged result(s) ({kinds});"
        f" first: {first['key']}: {first['detail']} - fix them, or drop --strict to report them"
    )
