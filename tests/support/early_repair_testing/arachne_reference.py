"""The straightforward Arachne fitness: patch a copy of the model, run the WHOLE network.

Why this exists: it is what the paper's code did for every particle, and so the yardstick
for the vectorised ``SwarmFitness``. The differential tests check that both give the same
numbers, and ``tests/benchmarks/bench_arachne.py`` times this one against the vectorised
search. Deliberately naive: no cached activations, no batching across particles.
``tosem_fitness`` scores a particle the way Arachne's TOSEM version does (for arachne-de).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer_image.models import Repairable


@dataclass(frozen=True)
class ReferenceScore:
    fitness: float
    n_patched: int
    n_intact: int
    loss_neg: float
    loss_pos: float
    pred_neg: np.ndarray
    pred_pos: np.ndarray
    nll_neg: np.ndarray  # per-input cross-entropy
    nll_pos: np.ndarray


def reference_scores(
    model: Repairable,
    x_neg: torch.Tensor,
    target_class: int,
    x_pos: torch.Tensor,
    y_pos: torch.Tensor,
    rows: np.ndarray,
    cols: np.ndarray,
    positions: torch.Tensor,
    dtype: torch.dtype = torch.float64,
) -> list[ReferenceScore]:
    """Score each row of ``positions`` (P x K values of the weights ``(rows, cols)``)."""
    patched = copy.deepcopy(model).to(dtype).eval()
    r = torch.as_tensor(rows, dtype=torch.long)
    c = torch.as_tensor(cols, dtype=torch.long)
    y_neg = torch.full((len(x_neg),), target_class, dtype=torch.long)
    out = []
    for values in positions:
        with torch.no_grad():
            # Every particle sets all localised weights, so nothing needs restoring.
            patched.head.weight[r, c] = values.to(dtype)
            logits_neg = patched(x_neg.to(dtype))
            logits_pos = patched(x_pos.to(dtype))
        pred_neg = logits_neg.argmax(dim=1)
        pred_pos = logits_pos.argmax(dim=1)
        n_patched = int((pred_neg == target_class).sum())
        n_intact = int((pred_pos == y_pos).sum())
        loss_neg = float(F.cross_entropy(logits_neg.double(), y_neg))
        loss_pos = float(F.cross_entropy(logits_pos.double(), y_pos)) if len(x_pos) else 0.0
        fitness = (n_patched + 1) / (loss_neg + 1) + (n_intact + 1) / (loss_pos + 1)
        nll_neg = F.cross_entropy(logits_neg.double(), y_neg, reduction="none").numpy()
        nll_pos = F.cross_entropy(logits_pos.double(), y_pos, reduction="none").numpy()
        out.append(
            ReferenceScore(
                fitness,
                n_patched,
                n_intact,
                loss_neg,
                loss_pos,
                pred_neg.numpy(),
                pred_pos.numpy(),
                nll_neg,
                nll_pos,
            )
        )
    return out


def tosem_fitness(ref: ReferenceScore, target_class: int, y_pos: np.ndarray, a: float) -> float:
    """Arachne TOSEM's fitness, written as its searcher_vk.py counts it: the correctly
    classified inputs plus 1 / (loss + 1) for each still misclassified one."""
    wrong_neg = ref.pred_neg != target_class
    wrong_pos = ref.pred_pos != y_pos
    n_patched = (~wrong_neg).sum() + (1.0 / (ref.nll_neg[wrong_neg] + 1.0)).sum()
    n_intact = (~wrong_pos).sum() + (1.0 / (ref.nll_pos[wrong_pos] + 1.0)).sum()
    return float(n_intact + a * n_patched)
