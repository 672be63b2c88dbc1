"""Whether a repair's patch is kept (``repair.accept``), and what the patch did on the
repair set.

Why this exists: a patch that fixes no repair-set negative can still move the decision
boundary and change test predictions - such no-op patches caused most of the harm repairs
did on the embedded datasets. ``always`` (the paper) keeps every patch; ``fixes-some`` keeps
one only if it fixes at least one negative of the target class; ``no-worse-val`` only if
Qual(0.5, c) on the validation split does not drop. A rejected patch leaves the unrepaired
model: the result written has an empty patch, so the test metrics are the base model's bit
for bit. Every repair also counts how many repair-set predictions its candidate patch
changed (``repair_changed``; 0 is a no-op patch), whatever the rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer_image.repair.base import RepairResult, RepairTask, apply_patch

ALWAYS = "always"
FIXES_SOME = "fixes-some"
NO_WORSE_VAL = "no-worse-val"
# The alpha of the Qual that no-worse-val compares (the paper's middle stakeholder weight).
VAL_ALPHA = 0.5


@dataclass(frozen=True)
class Verdict:
    """The acceptance rule's decision on one repair."""

    accepted: bool
    repair_changed: int  # repair-set predictions the candidate patch changed
    result: RepairResult  # what is written: the candidate, or it with an empty patch

    def fields(self) -> dict[str, Any]:
        """What the repaired record says about it."""
        return {"accepted": self.accepted, "repair_changed": self.repair_changed}


def needs_validation(cfg: Any) -> bool:
    """Whether ``cfg``'s rule reads the validation split."""
    return getattr(cfg, "accept", ALWAYS) == NO_WORSE_VAL


def qual(pred: np.ndarray, y: np.ndarray, cls: int, alpha: float = VAL_ALPHA) -> float:
    """Qual(alpha, cls) = alpha x Acc_cls + (1 - alpha) x Acc_total (Acc_cls 0 without any
    example of ``cls``)."""
    right = pred == y
    of_class = y == cls
    acc_c = float(right[of_class].mean()) if of_class.any() else 0.0
    return alpha * acc_c + (1 - alpha) * float(right.mean())


def judge(
    cfg: Any,
    task: RepairTask,
    result: RepairResult,
    val: tuple[torch.Tensor, np.ndarray] | None = None,
) -> Verdict:
    """Apply ``cfg.accept`` to the ``result`` of repairing ``task``; ``val`` is the validation
    split's penultimate features and labels (needed by no-worse-val only)."""
    rule = getattr(cfg, "accept", ALWAYS)
    split, cls = task.split, task.target_class
    with torch.no_grad():
        patched = apply_patch(task.head, result.patch)
        after = patched(task.features).argmax(1).cpu().numpy()
    changed = int((after != split.pred).sum())
    if rule == ALWAYS:
        keep = True
    elif rule == FIXES_SOME:
        negatives = split.negatives(cls)
        keep = bool((after[negatives] == split.y[negatives]).any())
    elif rule == NO_WORSE_VAL:
        if val is None:
            raise ValueError("accept: no-worse-val needs the validation features")
        feats, y = val
        with torch.no_grad():
            before_val = task.head(feats).argmax(1).cpu().numpy()
            after_val = patched(feats).argmax(1).cpu().numpy()
        keep = qual(after_val, y, cls) >= qual(before_val, y, cls)
    else:  # the spec admits only the three
        raise ValueError(f"accept: unknown rule {rule!r}")
    kept = result if keep else dataclasses.replace(result, patch=[])
    return Verdict(accepted=keep, repair_changed=changed, result=kept)
