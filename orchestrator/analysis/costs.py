"""What a sweep cost: seconds per stage, per run and per (dataset, model, method).

Every run keeps in run.json's ``costs`` the wall, CPU and GPU seconds of its stages
(``trainer_image.costs`` defines them: data, train, online_features, online_repair,
online, evaluate, repair). This module turns them into

* ``costs_runs.csv`` - one row per (run, stage, method) as recorded, with the run's
  dataset, model, seed and device;
* ``costs.csv`` - per (dataset, model, repair method): the runs, their device, the CPU
  seconds of training, of the features (shared by every method), of this method's
  repairs (while training and at the kept checkpoints) and in total (every stage but
  other methods' repairs), in total and per run; the wall seconds and, where GPUs ran,
  GPU-hours of the same; ``repair_vs_train`` = repair / training CPU seconds; and, for
  runs whose readiness policy only recorded its choice (``action: record``), the training
  epochs it would have saved (``epochs_saved``, mean per run) and the training CPU seconds
  those epochs cost (``train_s_saved``, per run: the run's mean training seconds per epoch
  times the epochs saved - an estimate, since epochs differ little but not at all).

The per-method policy epoch: the epoch its policy fired for every class of the method (a
policy of the unrepaired model, ``val-loss``, watches one track for all methods); a policy
that never fired saves nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from orchestrator.analysis.document import Doc
    from orchestrator.analysis.load import Loaded
    from orchestrator.results.records import RunInfo

COST_COLUMNS = ["run", "stage", "method", "count", "wall_s", "cpu_s", "gpu_s"]
RUN_COLUMNS = ["dataset", "model", "run", "seed", "device", *COST_COLUMNS[1:]]
FEATURE_STAGES = ("online_features", "evaluate")
REPAIR_STAGES = ("online_repair", "repair")
SUMMARY = [
    "dataset",
    "model",
    "method",
    "runs",
    "device",
    "train_s",
    "train_s_per_run",
    "features_s",
    "features_s_per_run",
    "repair_s",
    "repair_s_per_run",
    "online_repair_s",
    "total_s",
    "total_s_per_run",
    "total_wall_s",
    "gpu_hours",
    "repair_vs_train",
    "epochs_trained",
    "epochs_saved",
    "train_s_saved",
]


def costs_frame(infos: dict[str, RunInfo | None]) -> pd.DataFrame:
    """run.json's ``costs`` of every run, one row per (run, stage, method)."""
    rows = [
        (run, c.stage, c.method, c.count, c.wall_s, c.cpu_s, c.gpu_s)
        for run, info in sorted(infos.items())
        if info is not None
        for c in info.costs
    ]
    df = pd.DataFrame(rows, columns=COST_COLUMNS)
    return df.astype({"run": object, "stage": object, "method": object, "count": "int64"})


def per_run(loaded: Loaded) -> pd.DataFrame:
    """``costs_runs.csv``: every recorded cost row with its run's dataset, model, seed and
    device."""
    info = loaded.runs[["run", "dataset", "model", "seed", "device"]]
    df = loaded.costs.merge(info, on="run", how="inner")
    return df[RUN_COLUMNS].sort_values(["dataset", "model", "seed", "run", "stage"], kind="stable")


def _policy_epochs(loaded: Loaded, method: str) -> dict[str, tuple[int, float]]:
    """run -> (epochs trained, epochs its record-only policy would have saved for
    ``method``); runs without such a policy are absent."""
    r = loaded.readiness
    r = r[(r["action"] == "record") & (r["method"].isna() | (r["method"] == method))]
    out = {}
    for run, tracks in r.groupby("run", sort=True):
        trained = int(tracks["epochs_trained"].iloc[0])
        fired = tracks["fired_epoch"]
        saved = 0.0 if fired.isna().any() else float(trained - int(fired.max()))
        out[str(run)] = (trained, saved)
    return out


def summary(loaded: Loaded) -> pd.DataFrame:
    """``costs.csv``: per (dataset, model, method), see the module's docstring."""
    runs = per_run(loaded)
    if runs.empty:
        return pd.DataFrame(columns=SUMMARY)
    rows = []
    for (dataset, model), group in runs.groupby(["dataset", "model"], sort=True):
        methods = sorted(group.loc[group["stage"].isin(REPAIR_STAGES), "method"].dropna().unique())
        for method in methods:
            own = group[~group["stage"].isin(REPAIR_STAGES) | (group["method"] == method)]
            n = own["run"].nunique()
            train = own.loc[own["stage"] == "train", "cpu_s"].sum()
            train_by_run = own[own["stage"] == "train"].groupby("run")["cpu_s"].sum()
            features = own.loc[own["stage"].isin(FEATURE_STAGES), "cpu_s"].sum()
            repair_rows = own[own["stage"].isin(REPAIR_STAGES)]
            gpu = own["gpu_s"].sum()
            mine = set(own["run"])
            policy = {r: v for r, v in _policy_epochs(loaded, method).items() if r in mine}
            saved = [s for _, s in policy.values()]
            per_epoch = {r: train_by_run.get(r, np.nan) / t for r, (t, _) in policy.items() if t}
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "method": method,
                    "runs": n,
                    "device": ", ".join(sorted(own["device"].dropna().astype(str).unique())),
                    "train_s": train,
                    "train_s_per_run": train / n,
                    "features_s": features,
                    "features_s_per_run": features / n,
                    "repair_s": repair_rows["cpu_s"].sum(),
                    "repair_s_per_run": repair_rows["cpu_s"].sum() / n,
                    "online_repair_s": repair_rows.loc[
                        repair_rows["stage"] == "online_repair", "cpu_s"
                    ].sum(),
                    "total_s": own["cpu_s"].sum(),
                    "total_s_per_run": own["cpu_s"].sum() / n,
                    "total_wall_s": own["wall_s"].sum(),
                    "gpu_hours": gpu / 3600 if gpu > 0 else np.nan,
                    "repair_vs_train": repair_rows["cpu_s"].sum() / train if train else np.nan,
                    "epochs_trained": np.mean([t for t, _ in policy.values()])
                    if policy
                    else np.nan,
                    "epochs_saved": np.mean(saved) if saved else np.nan,
                    "train_s_saved": np.mean([per_epoch[r] * s for r, (_, s) in policy.items()])
                    if per_epoch and len(per_epoch) == len(policy)
                    else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY)


def section(doc: Doc, loaded: Loaded) -> None:
    """The report's "What it cost" section (nothing for results without recorded costs)."""
    table = summary(loaded)
    if table.empty:
        return
    doc.h("What it cost")
    shown = table.drop(columns=["online_repair_s", "total_wall_s"]).round(
        {c: 1 for c in SUMMARY if c.endswith("_s") or c.endswith("_run")}
        | {"gpu_hours": 3, "repair_vs_train": 2, "epochs_trained": 1, "epochs_saved": 1}
    )
    if table["gpu_hours"].isna().all():
        shown = shown.drop(columns=["gpu_hours"])
    doc.table(shown, name="costs")
    doc.p(
        "CPU seconds (every thread of the trainer process) per (dataset, model, repair"
        " method), in total over the runs and per run: `train` the training epochs (online"
        " repair excluded), `features` the forward passes for the penultimate features"
        " (shared by every method), `repair` this method's repairs while training and at the"
        " kept checkpoints, `total` every stage but other methods' repairs; `repair_vs_train`"
        " = repair / train. GPU-hours (wall time x GPUs held, on CUDA) appear when a run used"
        " a GPU. With a readiness policy that only records (`action: record`),"
        " `epochs_saved` is the mean number of epochs trained after it fired and"
        " `train_s_saved` their training seconds per run (estimated from the run's mean"
        " seconds per epoch). costs.csv has every column (with wall seconds); costs_runs.csv"
        " every stage of every run."
    )
