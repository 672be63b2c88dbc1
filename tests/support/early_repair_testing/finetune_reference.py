"""Fine-tuning the final layer the straightforward way: the WHOLE network every step.

Why this exists: the yardstick for ``trainer_image.repair.finetune``, which computes the
same gradient descent from cached penultimate features. Here a float64 copy of the whole
model runs on the images at every step and autograd differentiates the loss with respect
to the head's weights (the body frozen); the loss is written out from the method's
definition, not taken from the module under test.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from trainer_image.models import Repairable


def reference_finetune(
    model: Repairable,
    x_neg: torch.Tensor,
    target_class: int,
    x_pos: torch.Tensor,
    y_pos: torch.Tensor,
    steps: int,
    lr: float,
    neg_weight: float,
    pos_weight: float,
    l2: float,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Final head weights (float64) and per-step (before each update, then final) figures."""
    m = copy.deepcopy(model).double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    w0 = m.head.weight.detach().clone()
    m.head.weight.requires_grad_(True)
    y_neg = torch.full((len(x_neg),), target_class, dtype=torch.long)
    history = []
    for step in range(steps + 1):
        out_neg = m(x_neg.double())
        out_pos = m(x_pos.double())
        ce_neg = F.cross_entropy(out_neg, y_neg)
        ce_pos = F.cross_entropy(out_pos, y_pos) if len(x_pos) else torch.zeros(())
        penalty = ((m.head.weight - w0) ** 2).sum()
        loss = neg_weight * ce_neg + pos_weight * ce_pos + l2 * penalty
        history.append(
            {
                "loss": float(loss.detach()),
                "n_patched": int((out_neg.argmax(1) == target_class).sum()),
                "n_intact": int((out_pos.argmax(1) == y_pos).sum()),
            }
        )
        if step == steps:
            break
        loss.backward()
        with torch.no_grad():
            grad = m.head.weight.grad if mask is None else m.head.weight.grad * mask
            m.head.weight -= lr * grad
            m.head.weight.grad = None
    return m.head.weight.detach(), history
