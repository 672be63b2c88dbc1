"""The records the trainer writes and the aggregator reads (a DESIGN.md contract).

``MetricsRecord`` is one evaluated model; ``TrainSummary`` marks the training step done;
``RunInfo`` says what ran where. Each carries ``schema_version`` so that a reader can tell
a record of another early-repair version from a damaged one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1

# What a run computes; a different value in an existing run.json means the stored results
# belong to another experiment. Repair classes are left out: adding a class to a finished
# run only adds outputs, and the trainer computes exactly the missing ones.
EXPERIMENT_FIELDS = ("dataset", "model", "seed", "training", "repair")
CLASS_FIELDS = {"dataset": {"repair_classes"}, "repair": {"classes"}}


def experiment(run: dict[str, Any]) -> dict[str, Any]:
    """The part of a ``RunSpec.model_dump(mode="json")`` that names the experiment."""
    return {
        f: {k: v for k, v in run[f].items() if k not in CLASS_FIELDS.get(f, ())}
        if isinstance(run[f], dict)
        else run[f]
        for f in EXPERIMENT_FIELDS
    }


class MetricsRecord(BaseModel):
    """One evaluated model (a base checkpoint or a repaired one) on the test set.

    Repair-only fields are None for base records. ``rr`` and ``br`` are percentages on
    the repair set (docs/science.md, step 5); ``n_neg``/``n_pos`` are the target negatives and the
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


class ReadinessTrack(BaseModel):
    """What a readiness policy decided for one watched (method, class); both None for a
    policy of the unrepaired model (val-loss)."""

    model_config = ConfigDict(extra="forbid")

    method: str | None
    repair_class: int | None
    fired_epoch: int | None  # the epoch at which it fired; None: not within the epochs trained
    ready_epoch: int | None  # the epoch it picks: best score up to firing (or to the end)
    best_score: float | None  # that epoch's score (higher is better; val-loss: -loss)
    evaluations: int


class ReadinessOutcome(BaseModel):
    """``training.readiness`` as it played out in one run."""

    model_config = ConfigDict(extra="forbid")

    policy: str
    action: Literal["stop", "record"]
    alpha: float
    tracks: list[ReadinessTrack]
    stopped_training: bool  # action stop, and the policy ended training


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
    readiness: ReadinessOutcome | None = None  # only with training.readiness


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
