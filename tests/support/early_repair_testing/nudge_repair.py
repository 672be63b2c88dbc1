"""A test-only repair method, to show what adding one takes: this module and a spec line.

It raises the one weight of the target class's row whose input the target negatives
activate most, by ``options.step``: a real (if crude) repair whose effect the tests can
recompute by hand. A spec uses it by import path, with its own options::

    repair:
      method: early_repair_testing.nudge_repair:repair
      classes: [3]
      options: {step: 2.0}
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import BadInput
from trainer_image.repair.base import PatchedWeight, RepairResult, RepairTask, apply_patch


class NudgeOptions(BaseModel):
    """The method's own config: the spec's ``repair.options``."""

    model_config = ConfigDict(extra="forbid")

    step: float = Field(1.0, gt=0, description="How much the chosen weight grows.")


def repair(task: RepairTask, cfg: Any) -> RepairResult:
    """A ``trainer_image.repair.base.RepairMethod``; deterministic, so ``task.seed`` is unused."""
    try:
        opts = NudgeOptions.model_validate(cfg.options)
    except ValidationError as e:
        raise BadInput(f"repair.options: {e.errors()[0]['msg']} (nudge_repair)") from e
    start = time.perf_counter()
    head, features, split, target_class = task.head, task.features, task.split, task.target_class
    neg, pos = split.negatives(target_class), split.positives()
    rows, cols = head.weight.shape
    if neg.size == 0:
        return RepairResult(
            target_class, "nothing_to_repair", [], None, 0, 0, 0, rows * cols, None, 0.0, 0, 0.0
        )
    col = int(features[torch.as_tensor(neg)].mean(0).argmax())
    old = float(head.weight.detach()[target_class, col])
    patch = [PatchedWeight(row=target_class, col=col, old=old, new=old + opts.step)]
    with torch.no_grad():
        pred = apply_patch(head, patch)(features).argmax(1).cpu().numpy()
    labels = task.labels.cpu().numpy()
    rr = 100.0 * float(np.mean(pred[neg] == target_class))
    br = 100.0 * float(np.mean(pred[pos] != labels[pos])) if pos.size else None
    return RepairResult(
        target_class=target_class,
        status="repaired",
        patch=patch,
        fitness=None,
        n_neg=int(neg.size),
        n_pos=int(pos.size),
        n_patched=1,
        n_intact=rows * cols - 1,
        rr=rr,
        br=br,
        iterations=1,
        seconds=time.perf_counter() - start,
        history=[{"iteration": 1, "rr": rr, "br": br if br is not None else float("nan")}],
    )
