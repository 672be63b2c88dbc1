"""Baseline repair: fine-tune the final Linear layer by gradient descent.

Why this module exists: a comparison of repair methods needs the obvious baseline - just
train the last layer some more on the inputs to fix and the inputs to keep - because
retraining and fine-tuning repair well in published comparisons, while regression-aware
work reports them breaking many more correct inputs than targeted repair; RR and BR of
this baseline against Arachne's answer both questions.

The problem is Arachne's (``set_up`` of the last-layer toolkit, reused): the same input
checks, the target class's negatives, the same sampled positives (the same sampler and the
first draw of the generator seeded with ``seed``, so one seed gives every method the same
positives), and with ``weights="localised"`` the same fault localisation. Only the layer's
*weights* ``W`` change (the bias stays, as a patch holds weights only), by ``steps``
full-batch gradient-descent steps ``W <- W - (lr / L) grad`` of

    loss(W) = neg_weight x CE_neg(W) + pos_weight x CE_pos(W) + l2 x sum (W - W_0)^2

with ``CE_neg`` the mean cross-entropy of the negatives (labelled with the target class),
``CE_pos`` that of the sampled positives (0 when there are none), ``W_0`` the checkpoint's
weights. ``weights="all"`` moves every weight; ``"localised"`` only Arachne's localised
weights (the gradient restricted to them), so every other weight keeps its value exactly.

**Step size.** ``lr`` is in units of ``1 / L`` with ``L = 0.5 x (neg_weight x mean_neg |x|^2
+ pos_weight x mean_pos |x|^2) + 2 x l2`` (``x``: an input's penultimate features), an upper
bound on the loss's curvature in ``W`` (the softmax cross-entropy's Hessian in the logits
is at most 1/2). So one ``lr`` suits every model whatever its feature scale - a VGG16's
4096 activations and a small CNN's 64 differ by orders of magnitude in ``|x|^2`` - and any
``lr < 2`` lowers the loss at every step (the loss is convex in ``W``).

**Computation**, from the cached features in float64 on the run's device, with the
gradient in closed form, ``grad = E^T X + 2 l2 (W - W_0)`` where ``X`` holds the inputs'
features and row ``i`` of ``E`` is ``c_i (softmax_i - onehot_i)`` (``c_i = neg_weight / n_neg``
or ``pos_weight / n_pos``). The change ``D = W - W_0`` is kept in the cheapest of three
equivalent forms: ``localised``: only its K values; ``all`` with fewer inputs ``n`` than
features ``d``: ``D = A X`` (every gradient step adds rows of ``X``), so the logits' shift
``X D^T = (X X^T) A^T`` costs ``n^2 C`` instead of ``n d C`` per step; otherwise ``D``
itself. The forms give the same iterates up to rounding. There is no random choice beyond
the positives, so on the CPU a repair is deterministic.

The patch lists every weight whose new value, cast to the layer's dtype, differs from the
old one - with ``weights="all"`` usually most of the layer. ``iterations`` is ``steps``;
``fitness`` is None (the method has no fitness). ``history`` has one row per step
``iteration = 0..steps``, each the state *before* that step's update (the last row: after
the last update): the loss and its terms, and the negatives patched and positives intact.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from orchestrator.spec import FinetuneRepairSpec
from trainer_image.repair.base import PatchedWeight, RepairResult, RepairTask
from trainer_image.repair.last_layer import SEARCH_DTYPE, set_up

# --- the change of the weights, in three forms ----------------------------------------


class Change(Protocol):
    """``D = W - W_0`` in some form: the logits' shift ``X D^T``, a gradient step given
    ``E``, the penalty ``sum D^2``, and ``D`` itself (C x d)."""

    def shift(self) -> torch.Tensor: ...
    def step(self, e: torch.Tensor, size: float, l2: float) -> None: ...
    def penalty(self) -> torch.Tensor: ...
    def delta(self) -> torch.Tensor: ...


class Dense:
    """``D`` itself (C x d)."""

    def __init__(self, features: torch.Tensor, classes: int) -> None:
        self.x = features
        self.d = torch.zeros(
            classes, features.shape[1], dtype=features.dtype, device=features.device
        )

    def shift(self) -> torch.Tensor:
        return self.x @ self.d.T

    def step(self, e: torch.Tensor, size: float, l2: float) -> None:
        self.d -= size * (e.T @ self.x + 2.0 * l2 * self.d)

    def penalty(self) -> torch.Tensor:
        return (self.d**2).sum()

    def delta(self) -> torch.Tensor:
        return self.d


class Dual:
    """``D = A X`` with ``A`` (C x n): for fewer inputs than features."""

    def __init__(self, features: torch.Tensor, classes: int) -> None:
        self.x = features
        self.gram = features @ features.T
        self.a = torch.zeros(
            classes, features.shape[0], dtype=features.dtype, device=features.device
        )

    def shift(self) -> torch.Tensor:
        return self.gram @ self.a.T

    def step(self, e: torch.Tensor, size: float, l2: float) -> None:
        self.a -= size * (e.T + 2.0 * l2 * self.a)

    def penalty(self) -> torch.Tensor:
        return ((self.a @ self.gram) * self.a).sum()

    def delta(self) -> torch.Tensor:
        return self.a @ self.x


class Sparse:
    """The K values of ``D`` at ``(rows, cols)``; every other entry stays 0."""

    def __init__(
        self, features: torch.Tensor, classes: int, rows: torch.Tensor, cols: torch.Tensor
    ) -> None:
        dev, dt = features.device, features.dtype
        self.shape = (classes, features.shape[1])
        self.rows, self.cols = rows.to(dev), cols.to(dev)
        self.x = features[:, self.cols]  # n x K: each localised weight's inputs
        # K x C one-hot of each weight's row: products instead of a scatter (deterministic).
        self.onehot = F.one_hot(self.rows, classes).to(dt)
        self.v = torch.zeros(len(rows), dtype=dt, device=dev)

    def shift(self) -> torch.Tensor:
        return (self.x * self.v) @ self.onehot

    def step(self, e: torch.Tensor, size: float, l2: float) -> None:
        grad = ((e @ self.onehot.T) * self.x).sum(dim=0)
        self.v -= size * (grad + 2.0 * l2 * self.v)

    def penalty(self) -> torch.Tensor:
        return (self.v**2).sum()

    def delta(self) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=self.v.dtype, device=self.v.device)
        out[self.rows, self.cols] = self.v
        return out


# --- the descent ------------------------------------------------------------------------


def smoothness(features: torch.Tensor, n_neg: int, cfg: FinetuneRepairSpec) -> float:
    """``L`` of the module docstring: an upper bound on the loss's curvature in ``W``."""
    sq = (features**2).sum(dim=1)
    neg = float(sq[:n_neg].mean())
    pos = float(sq[n_neg:].mean()) if len(sq) > n_neg else 0.0
    return 0.5 * (cfg.neg_weight * neg + cfg.pos_weight * pos) + 2.0 * cfg.l2


def descend(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    neg_features: torch.Tensor,
    pos_features: torch.Tensor,
    pos_labels: torch.Tensor,
    target_class: int,
    localised: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: FinetuneRepairSpec,
    device: torch.device,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Gradient descent from ``weight``; ``localised`` = (rows, cols), or None for all.

    Returns the final weights (float64, on the CPU) and the history (module docstring).
    """
    dt = SEARCH_DTYPE
    n_neg, n_pos = int(neg_features.shape[0]), int(pos_features.shape[0])
    x = torch.cat([neg_features, pos_features]).detach().to(device, dt)
    labels = torch.cat(
        [torch.full((n_neg,), target_class, dtype=torch.long), pos_labels.detach().cpu().long()]
    ).to(device)
    onehot = F.one_hot(labels, weight.shape[0]).to(dt)
    coef = torch.cat(
        [
            torch.full((n_neg,), cfg.neg_weight / n_neg, dtype=dt),
            torch.full((n_pos,), cfg.pos_weight / max(n_pos, 1), dtype=dt),
        ]
    ).to(device)[:, None]
    w0 = weight.detach().to(device, dt)
    base = x @ w0.T
    if bias is not None:
        base = base + bias.detach().to(device, dt)
    classes = weight.shape[0]
    change: Change
    if localised is not None:
        change = Sparse(x, classes, *localised)
    elif x.shape[0] < x.shape[1]:
        change = Dual(x, classes)
    else:
        change = Dense(x, classes)
    size = cfg.lr / smoothness(x, n_neg, cfg)
    history: list[dict[str, float]] = []
    for step in range(cfg.steps + 1):
        logits = base + change.shift()
        history.append({"iteration": step, **_terms(logits, labels, n_neg, change, cfg)})
        if step == cfg.steps:
            break
        change.step(coef * (torch.softmax(logits, dim=1) - onehot), size, cfg.l2)
    return (w0 + change.delta()).cpu(), history


def _terms(
    logits: torch.Tensor, labels: torch.Tensor, n_neg: int, change: Change, cfg: FinetuneRepairSpec
) -> dict[str, float]:
    nll = F.cross_entropy(logits, labels, reduction="none")
    ce_neg = float(nll[:n_neg].mean())
    ce_pos = float(nll[n_neg:].mean()) if len(labels) > n_neg else 0.0
    penalty = float(change.penalty())
    correct = logits.argmax(dim=1) == labels
    return {
        "loss": cfg.neg_weight * ce_neg + cfg.pos_weight * ce_pos + cfg.l2 * penalty,
        "ce_neg": ce_neg,
        "ce_pos": ce_pos,
        "penalty": penalty,
        "n_patched": int(correct[:n_neg].sum()),
        "n_intact": int(correct[n_neg:].sum()),
    }


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


def repair(task: RepairTask, cfg: FinetuneRepairSpec) -> RepairResult:
    """Fine-tune ``task.head`` for ``task.target_class`` (see the module docstring).

    Same contract as :func:`trainer_image.repair.arachne.repair`; the patch holds the
    changed weights only.
    """
    problem = set_up(
        "finetune",
        task,
        n_positives=cfg.n_positives,
        sampling=cfg.positives,
        grad_factor=cfg.grad_factor if cfg.weights == "localised" else None,
    )
    if isinstance(problem, RepairResult):
        return problem
    localised = None
    if problem.loc is not None:
        localised = (torch.as_tensor(problem.loc.rows), torch.as_tensor(problem.loc.cols))
    neg_f, pos_f, pos_y = problem.search_inputs()
    new, history = descend(
        problem.weight,
        problem.bias,
        neg_f,
        pos_f,
        pos_y,
        task.target_class,
        localised,
        cfg,
        problem.device,
    )
    patch = changed_weights(problem.weight, new)
    return problem.finish(patch, cfg.steps, history, _no_fitness)
