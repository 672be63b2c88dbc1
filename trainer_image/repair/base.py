"""The contract between the trainer and repair methods: ``RepairMethod``, its inputs, its result.

A repair method sees only the final Linear layer and the penultimate activations
(``features``) of the repair set, computed once per checkpoint by the trainer - together a
:class:`RepairTask` - and returns the changed weights as a patch that, applied to the
checkpoint, rebuilds the repaired model. The trainer finds a method by name through
``orchestrator.catalog`` (or an import path) and knows nothing else about it; what methods
share beyond this contract is in :mod:`trainer_image.repair.last_layer`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from trainer_image.repair.history import TrainingHistory


@dataclass(frozen=True)
class TargetSplit:
    """Predictions of one checkpoint on the repair set (docs/science.md, step 3)."""

    y: np.ndarray
    pred: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.y == self.pred

    def positives(self) -> np.ndarray:
        """Indices of correctly classified inputs (all classes)."""
        return np.flatnonzero(self.correct)

    def negatives(self, cls: int) -> np.ndarray:
        """Indices of misclassified inputs whose true class is ``cls``."""
        return np.flatnonzero(~self.correct & (self.y == cls))


@dataclass(frozen=True)
class RepairTask:
    """One checkpoint x target class to repair: everything a method gets besides its config.

    ``features`` are the penultimate activations of the whole repair set (N x D) and
    ``labels`` its labels (N), ``split`` the checkpoint's predictions on it, ``seed`` the
    seed of this repair (:func:`repair_seed`), ``device`` where the method may compute.
    """

    head: nn.Linear
    features: torch.Tensor
    labels: torch.Tensor
    split: TargetSplit
    target_class: int
    seed: int
    device: torch.device | str = "cpu"
    # The run's earlier weights, for a method whose config ``uses_history`` (else None).
    history: TrainingHistory | None = None


@dataclass(frozen=True)
class PatchedWeight:
    row: int  # output unit (class)
    col: int  # input unit (penultimate activation)
    old: float
    new: float


@dataclass
class RepairResult:
    target_class: int
    status: Literal["repaired", "nothing_to_repair"]
    patch: list[PatchedWeight]
    fitness: float | None
    n_neg: int
    n_pos: int
    n_patched: int
    n_intact: int
    rr: float | None  # % of the target negatives now correct (all of them)
    br: float | None  # % of all positives now wrong
    iterations: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    # Method-specific fields of the repair's record (orchestrator.results.records:
    # certified, solver_status, reference_epoch, method_note); empty for most methods.
    details: dict[str, Any] = field(default_factory=dict)

    def patch_json(self) -> dict[str, Any]:
        return {
            "target_class": self.target_class,
            "status": self.status,
            "weights": [p.__dict__ for p in self.patch],
        }


def apply_patch(head: nn.Linear, patch: list[PatchedWeight]) -> nn.Linear:
    """A copy of ``head`` with the patched weights set to their new values."""
    out = copy.deepcopy(head)
    if patch:
        with torch.no_grad():
            rows = torch.tensor([p.row for p in patch])
            cols = torch.tensor([p.col for p in patch])
            vals = torch.tensor([p.new for p in patch], dtype=out.weight.dtype)
            out.weight[rows, cols] = vals.to(out.weight.device)
    return out


def repair_seed(repair_seed: int, run_seed: int, epoch: int, cls: int) -> int:
    """One independent, reproducible seed per (spec seed, run seed, checkpoint, class)."""
    return int(np.random.SeedSequence([repair_seed, run_seed, epoch, cls]).generate_state(1)[0])


class RepairMethod(Protocol):
    """A repair method: one call per checkpoint and target class, ``repair(task, cfg)``.

    ``cfg`` is the spec's ``repair`` section (the method's member of
    ``orchestrator.spec.RepairConfig``; a method named by import path reads its own
    ``cfg.options``). It must not change ``task.head``: the patch it returns says what to
    change. A method whose config class says ``uses_history`` gets ``task.history``: the
    run's training history (``trainer_image.repair.history.TrainingHistory``; None where
    there is none).
    """

    def __call__(self, task: RepairTask, cfg: Any) -> RepairResult: ...
