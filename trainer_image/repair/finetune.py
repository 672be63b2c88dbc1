"""Baseline repair: fine-tune the final Linear layer by gradient descent.

Why this module exists: a comparison of repair methods needs the obvious baseline - just
train the last layer some more on the inputs to fix and the inputs to keep - because
retraining and fine-tuning repair well in published comparisons, while regression-aware
work reports them breaking many more correct inputs than targeted repair; RR and BR of
this baseline against Arachne's answer both questions.

The problem is Arachne's (``arachne.set_up``, reused): the same input checks, the target
class's negatives, the same sampled positives (the same sampler and the first draw of the
generator seeded with ``seed``, so one seed gives every method the same positives), and
with ``weights="localised"`` the same fault localisation. Only the layer's *weights* ``W``
change (the bias stays, as a patch holds weights only), by ``steps`` full-batch
gradient-descent steps ``W <- W - lr x grad`` of

    loss(W) = neg_weight x CE_neg(W) + pos_weight x CE_pos(W) + l2 x sum (W - W_0)^2

with ``CE_neg`` the mean cross-entropy of the negatives (labelled with the target class),
``CE_pos`` that of the sampled positives (0 when there are none), ``W_0`` the checkpoint's
weights. ``weights="all"`` moves every weight; ``"localised"`` multiplies the gradient by the
mask of Arachne's localised weights, so every other weight keeps its value exactly.

Everything is computed from the cached penultimate features, in float64 on the run's
device: one matrix product per step for the logits, gradients by autograd. There is no
random choice beyond the positives, so on the CPU a repair is deterministic.

The patch lists every weight whose new value, cast to the layer's dtype, differs from the
old one - with ``weights="all"`` usually the whole layer. ``iterations`` is ``steps``;
``fitness`` is None (the method has no fitness). ``history`` has one row per step
``iteration = 0..steps``, each the state *before* that step's update (the last row: after
the last update): the loss and its terms, and the negatives patched and positives intact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.spec import FinetuneRepairSpec
from trainer_image.repair.arachne import SEARCH_DTYPE, set_up
from trainer_image.repair.base import PatchedWeight, RepairResult, TargetSplit


def objective(
    w: torch.Tensor,
    w0: torch.Tensor,
    bias: torch.Tensor | None,
    features: torch.Tensor,
    labels: torch.Tensor,
    n_neg: int,
    cfg: FinetuneRepairSpec,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of weights ``w`` (module docstring) and its terms; inputs negatives first."""
    logits = features @ w.T
    if bias is not None:
        logits = logits + bias
    nll = F.cross_entropy(logits, labels, reduction="none")
    ce_neg = nll[:n_neg].mean()
    ce_pos = nll[n_neg:].mean() if len(labels) > n_neg else torch.zeros_like(ce_neg)
    penalty = ((w - w0) ** 2).sum()
    loss = cfg.neg_weight * ce_neg + cfg.pos_weight * ce_pos + cfg.l2 * penalty
    correct = logits.detach().argmax(dim=1) == labels
    terms = {
        "loss": float(loss.detach()),
        "ce_neg": float(ce_neg.detach()),
        "ce_pos": float(ce_pos.detach()),
        "penalty": float(penalty.detach()),
        "n_patched": int(correct[:n_neg].sum()),
        "n_intact": int(correct[n_neg:].sum()),
    }
    return loss, terms


def descend(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    neg_features: torch.Tensor,
    pos_features: torch.Tensor,
    pos_labels: torch.Tensor,
    target_class: int,
    mask: torch.Tensor | None,
    cfg: FinetuneRepairSpec,
    device: torch.device,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Gradient descent from ``weight``; ``mask`` (like ``weight``, 0/1) or None for all.

    Returns the final weights (float64, on the CPU) and the history (module docstring).
    """
    dt = SEARCH_DTYPE
    n_neg = int(neg_features.shape[0])
    features = torch.cat([neg_features, pos_features]).detach().to(device, dt)
    labels = torch.cat(
        [torch.full((n_neg,), target_class, dtype=torch.long), pos_labels.detach().cpu().long()]
    ).to(device)
    w0 = weight.detach().to(device, dt)
    b = None if bias is None else bias.detach().to(device, dt)
    m = None if mask is None else mask.to(device, dt)
    w = w0.clone().requires_grad_(True)
    history: list[dict[str, float]] = []
    for step in range(cfg.steps + 1):
        loss, terms = objective(w, w0, b, features, labels, n_neg, cfg)
        history.append({"iteration": step, **terms})
        if step == cfg.steps:
            break
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w -= cfg.lr * (grad if m is None else grad * m)
    return w.detach().cpu(), history


def changed_weights(old: torch.Tensor, new: torch.Tensor) -> list[PatchedWeight]:
    """Every weight whose ``new`` value, cast to ``old``'s dtype, differs from ``old``."""
    old = old.detach().cpu()
    new = new.to(old.dtype)
    rows, cols = torch.nonzero(new != old, as_tuple=True)
    return [
        PatchedWeight(row=r, col=c, old=o, new=n)
        for r, c, o, n in zip(
            rows.tolist(),
            cols.tolist(),
            old[rows, cols].tolist(),
            new[rows, cols].tolist(),
            strict=True,
        )
    ]


def _no_fitness(logits: torch.Tensor, labels: torch.Tensor, n_neg: int) -> None:
    return None


def repair(
    head: nn.Linear,
    features: torch.Tensor,
    y: torch.Tensor,
    split: TargetSplit,
    target_class: int,
    cfg: FinetuneRepairSpec,
    seed: int,
    device: torch.device | str = "cpu",
) -> RepairResult:
    """Fine-tune ``head`` for ``target_class`` (see the module docstring).

    Same contract as :func:`trainer_image.repair.arachne.repair`; the patch holds the
    changed weights only.
    """
    problem = set_up(
        "finetune",
        head,
        features,
        y,
        split,
        target_class,
        seed,
        device,
        n_positives=cfg.n_positives,
        dedup_positives=cfg.dedup_positives,
        grad_factor=cfg.grad_factor if cfg.weights == "localised" else None,
    )
    if isinstance(problem, RepairResult):
        return problem
    mask = None
    if problem.loc is not None:
        mask = torch.zeros(problem.weight.shape, dtype=SEARCH_DTYPE)
        mask[torch.as_tensor(problem.loc.rows), torch.as_tensor(problem.loc.cols)] = 1.0
    neg_f, pos_f, pos_y = problem.search_inputs()
    new, history = descend(
        problem.weight, problem.bias, neg_f, pos_f, pos_y, target_class, mask, cfg, problem.device
    )
    patch = changed_weights(problem.weight, new)
    return problem.finish(patch, cfg.steps, history, _no_fitness)
