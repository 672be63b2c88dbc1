"""The result layout in the store and the metrics record schema (a DESIGN.md contract).

Keys are relative to the results root (the spec's ``results`` URI):

    <sweep>/sweep.json
    <sweep>/<run>/run.json
    <sweep>/<run>/train/history.csv
    <sweep>/<run>/train/summary.json
    <sweep>/<run>/checkpoints/epoch_NNN.pt
    <sweep>/<run>/epoch_NNN/base/metrics.json
    <sweep>/<run>/epoch_NNN/repair/class_C/{metrics.json,patch.json,search.csv}
    <sweep>/<run>/logs/trainer.log
    <sweep>/<run>/_SUCCESS

The trainer writes them, the aggregator and ``status`` read them; both go through here so
the two sides cannot drift apart.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1


def sweep_json(sweep: str) -> str:
    return f"{sweep}/sweep.json"


def run_prefix(sweep: str, run: str) -> str:
    return f"{sweep}/{run}"


def run_json(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/run.json"


def history_csv(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/train/history.csv"


def summary_json(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/train/summary.json"


def checkpoint(sweep: str, run: str, epoch: int) -> str:
    return f"{sweep}/{run}/checkpoints/epoch_{epoch:03d}.pt"


def epoch_dir(sweep: str, run: str, epoch: int) -> str:
    return f"{sweep}/{run}/epoch_{epoch:03d}"


def base_metrics(sweep: str, run: str, epoch: int) -> str:
    return f"{epoch_dir(sweep, run, epoch)}/base/metrics.json"


def repair_dir(sweep: str, run: str, epoch: int, cls: int) -> str:
    return f"{epoch_dir(sweep, run, epoch)}/repair/class_{cls}"


def repair_metrics(sweep: str, run: str, epoch: int, cls: int) -> str:
    return f"{repair_dir(sweep, run, epoch, cls)}/metrics.json"


def repair_patch(sweep: str, run: str, epoch: int, cls: int) -> str:
    return f"{repair_dir(sweep, run, epoch, cls)}/patch.json"


def repair_search(sweep: str, run: str, epoch: int, cls: int) -> str:
    return f"{repair_dir(sweep, run, epoch, cls)}/search.csv"


def log(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/logs/trainer.log"


def success(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/_SUCCESS"


class MetricsRecord(BaseModel):
    """One evaluated model (a base checkpoint or a repaired one) on the test set.

    Repair-only fields are None for base records. ``rr`` and ``br`` are percentages on
    the repair set (PAPER.md step 5); ``n_neg``/``n_pos`` are the target negatives and the
    positives the search used.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    sweep: str
    run: str
    dataset: str
    model: str
    seed: int
    epoch: int
    convergence_epoch: int
    kind: Literal["base", "repaired"]
    repair_class: int | None = None
    method: str | None = None
    accuracy: float
    per_class_accuracy: list[float | None]
    f1_macro: float
    recall_macro: float
    auc_macro: float | None
    rr: float | None = None
    br: float | None = None
    n_neg: int | None = None
    n_pos: int | None = None
    fitness: float | None = None
    n_patched: int | None = None
    n_intact: int | None = None
    iterations: int | None = None
    seconds: float | None = None


class TrainSummary(BaseModel):
    """``train/summary.json``: the training step's completion marker."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    convergence_epoch: int  # epoch with the lowest validation loss
    checkpoint_epochs: list[int]  # sorted; every one has checkpoints/epoch_NNN.pt
    epochs_trained: int
    stopped_early: bool
    best_val_loss: float
    seconds: float


class RunInfo(BaseModel):
    """``run.json``: what ran, with which software and where; rewritten as steps finish."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run: dict  # RunSpec.model_dump(mode="json")
    versions: dict[str, str]  # python, torch, early-repair, ...
    device: str  # "cpu", "cuda:0 (NVIDIA H200)", ...
    hostname: str
    started: str  # ISO-8601 UTC
    finished: str | None = None
    timings: dict[str, float] = {}  # step name -> seconds
