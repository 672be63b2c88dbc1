"""Arachne repair of a model's final Linear layer, as the paper used it (docs/science.md).

Why this module exists: repair is the science of the whole tool, and the paper's code made
it slow (the whole network re-ran for every particle) and irreproducible (the swarm was
never seeded). Arachne only changes the final layer, so the penultimate activations of
the repair set are fixed during the search; the trainer computes them once per
checkpoint and this module evaluates *all* particles of the swarm together from them.

Steps (one call to :func:`repair` per checkpoint x target class):

1. **Fault localisation** on the target class's negatives ``I_neg`` (:func:`localise`):
   ``|dL/dw_ij|`` of the mean cross-entropy on ``I_neg`` w.r.t. the final layer's weights,
   in closed form from the cached features (``(softmax - onehot)^T @ features / n``);
   the top ``N_g = grad_factor x |I_neg|`` weights by ``|grad|`` (a stable sort: equal
   gradients keep row-major (class, feature) order, exactly like the released code's
   stable Python sort); forward impact ``|mean_{I_neg} o_j x w_ij|`` of each kept weight;
   then the Pareto front of (``|grad|``, forward impact), both maximised
   (:func:`pareto_front`, sort-based, O(n log n)). A weight is dropped only when another
   is at least as good on both objectives and strictly better on one, so points that are
   equal on both objectives are all kept (as in the released code).
2. **Positives** ``I_pos`` (:func:`sample_positives`, ``positives``): ``uniform`` (default)
   draws ``n_positives`` of the split's positives (all classes) without replacement by the
   seeded generator (all of them when there are fewer). ``with-replacement-dedup``:
   ``n_positives`` draws *with* replacement (``rng.choice(n, 200)`` in the Arachne code the
   paper built on), then repeated draws and inputs with identical feature rows are
   removed, keeping the first, so fewer than ``n_positives`` may remain. ``balanced``: the
   released code's label-balanced sample (:func:`balanced_amounts`): per label ``a =
   int(n / L x 2/3) + int(n x count / total x 1/3)``, capped at twice its count (a label
   with ``a > 2 count`` is *saturated*); the shortfall ``n - sum(a)`` goes, uncapped, to one
   uncapped label drawn at random; each label then gives all its positives when ``a >=
   count``, else ``a`` of them without replacement - the released code's duplicates
   removed (nothing is added when every label is saturated, where the released code
   failed).
3. **PSO** over the localised weights' values (:func:`pso`): ``particles`` positions drawn
   from Normal(current value, std of all the layer's weights (population std)), velocity 0.
   One *iteration* is one synchronous step of the whole swarm: every particle's velocity
   ``v' = chi (v + r1 (p - x) + r2 (g - x))`` with ``r1, r2 ~ U(0, phi)`` and
   ``chi = 2 / (phi - 2 + sqrt(phi^2 - 4 phi))``, clamped; then ``x' = x + v'``; then all
   particles are scored, personal bests replaced where strictly better, and the global best
   taken as the best personal best. The initial scoring of the swarm is iteration 0 and is
   not counted. ``variant="v1"`` (default, paper's code): one scalar ``r1``, ``r2`` per
   particle and step, and every component's ``|v|`` clamped to ``[wb/5, 5 wb]`` with its
   sign kept (a velocity of exactly 0 takes the negative sign, as in the released code);
   ``"textbook"``: per-component ``r1``, ``r2`` and only ``|v| <= 5 wb``. ``wb`` is
   max - min of the layer's weights. **Early stop**: the search ends after ``patience``
   consecutive iterations in which the global best fitness did not strictly increase, or
   after ``iterations`` iterations, whichever comes first; e.g. with patience 10 a swarm
   that never beats its initial best runs exactly 10 iterations. The released code's
   order is an option: ``update_order: position-first`` moves every particle with its old
   velocity first (``x' = x + v``) and then updates the velocity from the new position and
   the personal and global bests of the iteration's start, so its first iteration re-scores
   the initial swarm; ``stagnation_start: 12`` checks the early stop only from iteration 12
   on, as the released code did.
4. **Fitness** ``(N_patched + 1) / (L_neg + 1) + (N_intact + 1) / (L_pos + 1)`` with ``L``
   the mean cross-entropy on each set (``L_pos = 0`` when there are no positives), for all
   particles at once by :class:`SwarmFitness`: only the localised weights change, so
   ``logits = base_logits + features[:, j] * delta_w_ij`` added to row ``i`` - one small
   matrix product per changed row, in float64 on the run's device, the particles chunked
   so that one chunk's score tensors stay under ``max_batch_bytes``.

Every random draw (positives, initial positions, ``r1``/``r2``) comes from one CPU
``torch.Generator`` seeded with ``seed``, so a repair is reproducible and the draws are the
same on CPU and CUDA. The reported ``n_patched``, ``n_intact``, ``fitness``, ``rr`` and
``br`` are recomputed once at the end with the patch applied to the layer in its own dtype
(:func:`~trainer_image.repair.base.apply_patch`) - exactly what a model rebuilt from the
checkpoint and ``patch.json`` computes; they can differ from the float64 search's best in
the last digits (``history`` holds the search's own values).

Steps 1-2, the input checks and the final figures are not PSO-specific: :func:`set_up`
and :class:`Problem` serve every method that repairs the final layer (``arachne_de.py``,
``finetune.py``), and :class:`SwarmFitness` takes other fitness functions by overriding
:meth:`SwarmFitness.fitness`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.errors import BadInput, RunFailed
from orchestrator.spec import ArachneSpec
from trainer_image.repair.base import PatchedWeight, RepairResult, TargetSplit, apply_patch

log = logging.getLogger(__name__)

# The search runs in float64: the fitness then matches a full-network reference to ~1e-12
# and the cost is negligible next to computing the features.
SEARCH_DTYPE = torch.float64

Num = TypeVar("Num", torch.Tensor, float)


# --- fault localisation -------------------------------------------------------------


@dataclass(frozen=True)
class Localisation:
    """The localised weights (rows = classes, cols = penultimate units) and their scores."""

    rows: np.ndarray
    cols: np.ndarray
    grad: np.ndarray  # |dL/dw| of each localised weight
    impact: np.ndarray  # forward impact of each localised weight
    n_candidates: int  # N_g actually kept before the Pareto front


def loss_gradient(
    weight: torch.Tensor, bias: torch.Tensor | None, features: torch.Tensor, label: int
) -> torch.Tensor:
    """d(mean CE of ``features`` all labelled ``label``)/dW in closed form, shape like W."""
    logits = features @ weight.T
    if bias is not None:
        logits = logits + bias
    err = torch.softmax(logits, dim=1)
    err[:, label] -= 1.0
    return err.T @ features / features.shape[0]


def pareto_front(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean mask of the points not dominated when maximising both ``a`` and ``b``.

    ``m`` dominates ``k`` when ``a_m >= a_k``, ``b_m >= b_k`` and one is strict; points equal
    on both objectives never dominate each other, so all copies of a front point are kept.
    Sort by ``a`` descending (ties: ``b`` descending); then ``k`` is dominated iff some point
    with strictly larger ``a`` has ``b >= b_k`` (prefix maximum over the earlier groups), or
    a point with equal ``a`` has strictly larger ``b`` (the first of its group).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = a.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((-b, -a))
    a_s, b_s = a[order], b[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = a_s[1:] != a_s[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    prefix_max = np.maximum.accumulate(b_s)
    best_before = np.where(group_start > 0, prefix_max[group_start - 1], -np.inf)
    dominated = (best_before >= b_s) | (b_s < b_s[group_start])
    keep = np.empty(n, dtype=bool)
    keep[order] = ~dominated
    return keep


def localise(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    neg_features: torch.Tensor,
    target_class: int,
    grad_factor: int,
) -> Localisation:
    """Arachne's fault localisation on the negatives (module docstring, step 1).

    Runs on the CPU in float64 whatever the search device, so the same checkpoint always
    localises the same weights.
    """
    w = weight.detach().to("cpu", torch.float64)
    b = None if bias is None else bias.detach().to("cpu", torch.float64)
    f = neg_features.detach().to("cpu", torch.float64)
    grad = loss_gradient(w, b, f, target_class).abs().numpy().ravel()
    n_g = min(grad_factor * f.shape[0], grad.size)
    # Stable descending sort: equal |grad| keep row-major order, like the released code.
    top = np.argsort(-grad, kind="stable")[:n_g]
    rows, cols = np.divmod(top, w.shape[1])
    mean_act = f.mean(dim=0).numpy()
    impact = np.abs(mean_act[cols] * w.numpy()[rows, cols])
    front = pareto_front(grad[top], impact)
    order = np.lexsort((cols[front], rows[front]))
    return Localisation(
        rows=rows[front][order],
        cols=cols[front][order],
        grad=grad[top][front][order],
        impact=impact[front][order],
        n_candidates=int(n_g),
    )


# --- positives -----------------------------------------------------------------------


# The released sampler's constants: the share of the sample split equally across labels,
# and how many times a label's count it may ask for.
BALANCED_SHARE = 2 / 3
BALANCED_CAP = 2


def balanced_amounts(counts: dict[int, int], n: int) -> tuple[dict[int, int], list[int]]:
    """Per label, how many the released sampler asks for before the shortfall; and the
    labels that may take the shortfall (not saturated). See the module docstring, step 2.

    The float expressions are the released code's, so ``int`` truncates the same values.
    """
    total = sum(counts.values())
    amounts: dict[int, int] = {}
    open_labels: list[int] = []
    for label, count in counts.items():
        a = int((n / len(counts)) * BALANCED_SHARE)
        a += int((n * (count / total)) * (1 - BALANCED_SHARE))
        if a > count * BALANCED_CAP:
            a = count * BALANCED_CAP
        else:
            open_labels.append(label)
        amounts[label] = a
    return amounts, open_labels


def _balanced(
    positives: np.ndarray, labels: np.ndarray, n: int, generator: torch.Generator
) -> np.ndarray:
    classes = np.unique(labels)
    members = {int(c): positives[labels == c] for c in classes}
    amounts, open_labels = balanced_amounts({c: len(m) for c, m in members.items()}, n)
    shortfall = n - sum(amounts.values())
    if shortfall > 0 and open_labels:
        lucky = open_labels[int(torch.randint(len(open_labels), (1,), generator=generator))]
        amounts[lucky] += shortfall
    picked = []
    for label, idx in members.items():
        if amounts[label] >= len(idx):  # asked for all of them, some more than once
            picked.append(idx)
        else:
            pick = torch.randperm(len(idx), generator=generator)[: amounts[label]].numpy()
            picked.append(idx[pick])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def sample_positives(
    positives: np.ndarray,
    features: torch.Tensor,
    n: int,
    how: str,
    generator: torch.Generator,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (into the repair set) of the positives the fitness uses (docstring, step 2).

    ``how`` is ``repair.positives``; ``labels`` (the repair set's) are needed for
    ``balanced``.
    """
    if positives.size == 0:
        return positives.astype(np.int64)
    if how == "uniform":
        if positives.size <= n:
            return np.sort(positives).astype(np.int64)
        pick = torch.randperm(positives.size, generator=generator)[:n].numpy()
        return np.sort(positives[pick]).astype(np.int64)
    if how == "balanced":
        if labels is None:
            raise ValueError("balanced positives need the repair set's labels")
        return _balanced(positives, labels[positives], n, generator)
    if how != "with-replacement-dedup":
        raise ValueError(f"unknown positives sampling {how!r}")
    draws = positives[torch.randint(positives.size, (n,), generator=generator).numpy()]
    rows = features[torch.as_tensor(draws)].detach().cpu().numpy()
    _, first = np.unique(rows, axis=0, return_index=True)
    return np.sort(draws[first]).astype(np.int64)


# --- fitness of the whole swarm ------------------------------------------------------


@dataclass(frozen=True)
class SwarmScores:
    """Fitness terms of each particle (1-D tensors of length P, on the CPU)."""

    fitness: torch.Tensor
    n_patched: torch.Tensor
    n_intact: torch.Tensor
    loss_neg: torch.Tensor
    loss_pos: torch.Tensor

    def parts(self) -> tuple[torch.Tensor, ...]:
        return (self.fitness, self.n_patched, self.n_intact, self.loss_neg, self.loss_pos)

    def take(self, idx: torch.Tensor) -> SwarmScores:
        return SwarmScores(*(t[idx] for t in self.parts()))

    def where(self, mask: torch.Tensor, other: SwarmScores) -> SwarmScores:
        """Elementwise: self where ``mask`` else ``other``."""
        pairs = zip(self.parts(), other.parts(), strict=True)
        return SwarmScores(*(torch.where(mask, a, b) for a, b in pairs))


def fitness_of(n_patched: Num, loss_neg: Num, n_intact: Num, loss_pos: Num) -> Num:
    """The paper's fitness (module docstring, step 4)."""
    return (n_patched + 1) / (loss_neg + 1) + (n_intact + 1) / (loss_pos + 1)


class SwarmFitness:
    """Scores many candidate values of the localised weights at once from cached features.

    Inputs are ordered negatives first, then positives. For particle ``p`` only the
    localised weights ``(rows[k], cols[k])`` differ from the layer, by ``dw[p, k]``, so row
    ``r`` of its logits is ``base[:, r] + features[:, cols_r] @ dw[p, k_r]``: one matrix
    product per distinct changed row for a whole chunk of particles (no scatter, so the
    result is deterministic on CUDA too).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        neg_features: torch.Tensor,
        pos_features: torch.Tensor,
        pos_labels: torch.Tensor,
        target_class: int,
        rows: np.ndarray,
        cols: np.ndarray,
        device: torch.device,
        max_batch_bytes: int,
    ) -> None:
        dt = SEARCH_DTYPE
        w = weight.detach().to(device, dt)
        feats = torch.cat([neg_features, pos_features]).detach().to(device, dt)
        self.device = device
        self.n_neg = int(neg_features.shape[0])
        self.n_pos = int(pos_features.shape[0])
        self.labels = torch.cat(
            [
                torch.full((self.n_neg,), target_class, dtype=torch.long),
                pos_labels.detach().cpu().long(),
            ]
        ).to(device)
        self.base = feats @ w.T
        if bias is not None:
            self.base += bias.detach().to(device, dt)
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        cols_t = torch.as_tensor(cols, dtype=torch.long)
        self.initial = w[rows_t.to(device), cols_t.to(device)]
        # Per distinct changed row: which localised weights feed it, and their inputs (K_r x N).
        self.groups: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        for r in torch.unique(rows_t).tolist():
            ks = torch.nonzero(rows_t == r).flatten()
            self.groups.append((r, ks.to(device), feats[:, cols_t[ks].to(device)].T.contiguous()))
        n, c = self.base.shape
        # Per particle: its logits, their log-sum-exp workspace, the per-input terms.
        self.particle_bytes = dt.itemsize * n * (2 * c + 4) + 8 * len(rows)
        self.chunk = max(1, int(max_batch_bytes) // self.particle_bytes)

    def logits(self, positions: torch.Tensor) -> torch.Tensor:
        """Logits of one chunk of particles: (P, N, C); ``positions`` is (P, K)."""
        dw = positions.to(self.device, SEARCH_DTYPE) - self.initial
        out = self.base.expand(dw.shape[0], -1, -1).clone()
        for r, ks, inputs in self.groups:
            out[:, :, r] += dw[:, ks] @ inputs
        return out

    def __call__(self, positions: torch.Tensor) -> SwarmScores:
        step = self.chunk
        parts = [self._score(positions[i : i + step]) for i in range(0, len(positions), step)]
        return SwarmScores(*(torch.cat(t) for t in zip(*parts, strict=True)))

    def predict(self, positions: torch.Tensor) -> torch.Tensor:
        """Predicted classes (P, N) on the CPU, chunked like the scores."""
        return torch.cat(
            [
                self.logits(positions[i : i + self.chunk]).argmax(dim=2).cpu()
                for i in range(0, len(positions), self.chunk)
            ]
        )

    def _score(self, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.logits(positions)
        labels = self.labels.expand(logits.shape[0], -1)
        nll = torch.logsumexp(logits, dim=2) - logits.gather(2, labels[..., None]).squeeze(2)
        correct = (logits.argmax(dim=2) == labels).to(SEARCH_DTYPE)
        neg, pos = slice(0, self.n_neg), slice(self.n_neg, None)
        n_patched = correct[:, neg].sum(dim=1)
        n_intact = correct[:, pos].sum(dim=1)
        loss_neg = nll[:, neg].mean(dim=1)
        loss_pos = nll[:, pos].mean(dim=1) if self.n_pos else torch.zeros_like(loss_neg)
        fit = self.fitness(correct, nll, n_patched, loss_neg, n_intact, loss_pos)
        return tuple(t.cpu() for t in (fit, n_patched, n_intact, loss_neg, loss_pos))

    def fitness(
        self,
        correct: torch.Tensor,
        nll: torch.Tensor,
        n_patched: torch.Tensor,
        loss_neg: torch.Tensor,
        n_intact: torch.Tensor,
        loss_pos: torch.Tensor,
    ) -> torch.Tensor:
        """Fitness of each particle from its per-input terms (P x N, negatives first).

        The paper's fitness here; other searches over the same weights override it.
        """
        return fitness_of(n_patched, loss_neg, n_intact, loss_pos)


# --- particle swarm ------------------------------------------------------------------


def constriction(phi: float) -> float:
    return 2.0 / (phi - 2.0 + math.sqrt(phi * phi - 4.0 * phi))


def clamp_velocity(v: torch.Tensor, wb: float, variant: str) -> torch.Tensor:
    """v1: ``|v|`` into ``[wb/5, 5 wb]``, sign kept (0 -> negative); textbook: ``|v| <= 5 wb``."""
    if variant == "textbook":
        return v.clamp(-5.0 * wb, 5.0 * wb)
    sign = torch.where(v > 0, 1.0, -1.0).to(v.dtype)
    return sign * v.abs().clamp(wb / 5.0, 5.0 * wb)


@dataclass
class Search:
    best: torch.Tensor  # (K,) best position found, on the CPU
    scores: SwarmScores  # its scores (length-1 tensors)
    iterations: int
    history: list[dict[str, float]]


def pso(
    fitness: Callable[[torch.Tensor], SwarmScores],
    initial: torch.Tensor,
    std: float,
    wb: float,
    cfg: ArachneSpec,
    generator: torch.Generator,
    device: torch.device,
) -> Search:
    """Maximise ``fitness`` around ``initial`` (K,) - see the module docstring, step 3.

    Random numbers are drawn on the CPU from ``generator`` (then moved), so the draws do
    not depend on the device.
    """
    p, k = cfg.particles, initial.numel()
    dt = SEARCH_DTYPE
    chi = constriction(cfg.phi)
    centre = initial.to(device, dt)
    x = centre + std * torch.randn(p, k, generator=generator, dtype=dt).to(device)
    v = torch.zeros_like(x)
    scores = fitness(x)
    pbest_x, pbest = x.clone(), scores
    g = int(torch.argmax(pbest.fitness))
    gbest_x, gbest = pbest_x[g].clone(), pbest.take(torch.tensor([g]))
    r_shape = (p, 1) if cfg.variant == "v1" else (p, k)
    history = [_record(0, gbest, scores, v, improved=False, stall=0)]
    stall = 0
    it = 0
    for it in range(1, cfg.iterations + 1):
        r1 = cfg.phi * torch.rand(r_shape, generator=generator, dtype=dt).to(device)
        r2 = cfg.phi * torch.rand(r_shape, generator=generator, dtype=dt).to(device)
        if cfg.update_order == "position-first":  # the released code: move, then steer
            x = x + v
        v = chi * (v + r1 * (pbest_x - x) + r2 * (gbest_x - x))
        v = clamp_velocity(v, wb, cfg.variant)
        if cfg.update_order == "velocity-first":
            x = x + v
        scores = fitness(x)
        better = scores.fitness > pbest.fitness
        pbest = scores.where(better, pbest)
        pbest_x = torch.where(better.to(device)[:, None], x, pbest_x)
        g = int(torch.argmax(pbest.fitness))
        improved = bool(pbest.fitness[g] > gbest.fitness[0])
        if improved:
            gbest_x, gbest = pbest_x[g].clone(), pbest.take(torch.tensor([g]))
            stall = 0
        else:
            stall += 1
        history.append(_record(it, gbest, scores, v, improved=improved, stall=stall))
        log.debug("arachne iteration %d: best fitness %.6f", it, float(gbest.fitness[0]))
        if stall >= cfg.patience and it >= cfg.stagnation_start:
            break
    return Search(best=gbest_x.cpu(), scores=gbest, iterations=it, history=history)


def best_fields(best: SwarmScores) -> dict[str, float]:
    """The history columns describing the best candidate so far (length-1 scores)."""
    return {
        "best_fitness": float(best.fitness[0]),
        "best_n_patched": int(best.n_patched[0]),
        "best_n_intact": int(best.n_intact[0]),
        "best_loss_neg": float(best.loss_neg[0]),
        "best_loss_pos": float(best.loss_pos[0]),
    }


def _record(
    it: int, best: SwarmScores, swarm: SwarmScores, v: torch.Tensor, improved: bool, stall: int
) -> dict[str, float]:
    speed = v.abs()
    return {
        "iteration": it,
        **best_fields(best),
        "swarm_mean_fitness": float(swarm.fitness.mean()),
        "min_speed": float(speed.min()) if speed.numel() else 0.0,
        "max_speed": float(speed.max()) if speed.numel() else 0.0,
        "improved": int(improved),
        "stall": stall,
    }


# --- the entry point -----------------------------------------------------------------


def repair(
    head: nn.Linear,
    features: torch.Tensor,
    y: torch.Tensor,
    split: TargetSplit,
    target_class: int,
    cfg: ArachneSpec,
    seed: int,
    device: torch.device | str = "cpu",
) -> RepairResult:
    """Repair ``head`` for ``target_class`` with Arachne (see the module docstring).

    ``features`` are the penultimate activations of the whole repair set (N x D), ``y`` its
    labels and ``split`` the checkpoint's predictions on it. Returns the patch (every
    localised weight with its old and new value) and the repair's figures; status
    ``nothing_to_repair`` (no search, empty patch, ``rr`` None) when the class has no
    negatives. Raises BadInput when the layer, the features and the labels do not fit, and
    RunFailed when the checkpoint's weights or activations are not finite (it diverged).
    """
    problem = set_up(
        "arachne",
        head,
        features,
        y,
        split,
        target_class,
        seed,
        device,
        n_positives=cfg.n_positives,
        sampling=cfg.positives,
        grad_factor=cfg.grad_factor,
    )
    if isinstance(problem, RepairResult):
        return problem
    evaluator = problem.evaluator(SwarmFitness, int(cfg.max_batch_bytes))
    w64 = problem.weight.to("cpu", torch.float64)
    std = float(w64.std(correction=0))
    wb = float(w64.max() - w64.min())
    search = pso(evaluator, evaluator.initial, std, wb, cfg, problem.generator, problem.device)
    patch = problem.localised_patch(search.best)
    return problem.finish(patch, search.iterations, search.history, paper_fitness)


# --- set-up and figures shared by every method that repairs the final layer ----------

FinalFitness = Callable[[torch.Tensor, torch.Tensor, int], float | None]
Evaluator = TypeVar("Evaluator", bound="SwarmFitness")


def paper_fitness(logits: torch.Tensor, labels: torch.Tensor, n_neg: int) -> float:
    """The paper's fitness of one patched layer from its float64 logits (negatives first)."""
    pred = logits.argmax(dim=1)
    neg, pos = slice(0, n_neg), slice(n_neg, None)
    n_patched = float((pred[neg] == labels[neg]).sum())
    n_intact = float((pred[pos] == labels[pos]).sum())
    loss_pos = float(F.cross_entropy(logits[pos], labels[pos])) if len(labels) > n_neg else 0.0
    return fitness_of(
        n_patched, float(F.cross_entropy(logits[neg], labels[neg])), n_intact, loss_pos
    )


@dataclass
class Problem:
    """One checkpoint x target class, checked and ready for a search of the final layer.

    ``pos`` are the sampled positives the search sees (``positives`` are all of them, for
    BR); ``loc`` the localised weights, None when the method did not ask for them.
    ``generator`` has drawn the positives and draws the search's random numbers next.
    """

    method: str
    head: nn.Linear
    features: torch.Tensor
    target_class: int
    device: torch.device
    y: np.ndarray
    neg: np.ndarray
    positives: np.ndarray
    pos: np.ndarray
    loc: Localisation | None
    generator: torch.Generator
    start: float

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight.detach()

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.head.bias is None else self.head.bias.detach()

    def search_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features of the negatives, of the sampled positives, and those positives' labels."""
        neg_t = torch.as_tensor(self.neg, dtype=torch.long)
        pos_t = torch.as_tensor(self.pos, dtype=torch.long)
        return self.features[neg_t], self.features[pos_t], torch.as_tensor(self.y[self.pos])

    def evaluator(self, kind: type[Evaluator], max_batch_bytes: int, **extra: float) -> Evaluator:
        """A vectorised scorer (``SwarmFitness`` or a subclass) of the localised weights."""
        assert self.loc is not None, "the method did not localise"
        neg_f, pos_f, pos_y = self.search_inputs()
        return kind(
            self.weight,
            self.bias,
            neg_f,
            pos_f,
            pos_y,
            self.target_class,
            self.loc.rows,
            self.loc.cols,
            self.device,
            max_batch_bytes,
            **extra,
        )

    def localised_patch(self, values: torch.Tensor) -> list[PatchedWeight]:
        """Every localised weight with its old value and ``values`` (K,) cast to its dtype."""
        assert self.loc is not None, "the method did not localise"
        new = values.to(self.weight.dtype).tolist()
        w_cpu = self.weight.cpu()
        return [
            PatchedWeight(row=int(r), col=int(c), old=float(w_cpu[r, c]), new=float(nv))
            for r, c, nv in zip(self.loc.rows, self.loc.cols, new, strict=True)
        ]

    def finish(
        self,
        patch: list[PatchedWeight],
        iterations: int,
        history: list[dict[str, float]],
        fitness: FinalFitness,
    ) -> RepairResult:
        """The result, its figures computed as a model rebuilt from ``patch`` would."""
        final = _evaluate_patch(
            self.head,
            patch,
            self.features,
            self.y,
            self.neg,
            self.positives,
            self.pos,
            self.target_class,
            self.device,
            fitness,
        )
        result = RepairResult(
            target_class=self.target_class,
            status="repaired",
            patch=patch,
            n_neg=int(self.neg.size),
            n_pos=int(self.pos.size),
            iterations=iterations,
            seconds=time.perf_counter() - self.start,
            history=history,
            **final,
        )
        localised = "" if self.loc is None else f" ({len(self.loc.rows)} localised"
        localised += "" if self.loc is None else f" of {self.loc.n_candidates})"
        log.info(
            "%s class %d: %d negatives, %d positives, %d weights patched%s,"
            " %d iterations, RR %.1f%%, BR %.1f%%, %.2fs",
            self.method,
            self.target_class,
            result.n_neg,
            result.n_pos,
            len(patch),
            localised,
            result.iterations,
            result.rr or 0.0,
            result.br or 0.0,
            result.seconds,
        )
        return result


def set_up(
    method: str,
    head: nn.Linear,
    features: torch.Tensor,
    y: torch.Tensor,
    split: TargetSplit,
    target_class: int,
    seed: int,
    device: torch.device | str,
    n_positives: int,
    sampling: str,
    grad_factor: int | None,
) -> Problem | RepairResult:
    """Check the inputs, localise (unless ``grad_factor`` is None), sample the positives
    (``sampling``: how, as ``repair.positives``).

    Returns the ``nothing_to_repair`` result when the class has no negatives. The positives
    are the first draw of the generator seeded with ``seed``, so every method given the same
    seed sees the same positives.
    """
    start = time.perf_counter()
    dev = _device(device)
    y_np = _check_inputs(head, features, y, split, target_class)
    neg = split.negatives(target_class)
    positives = split.positives()
    if neg.size == 0:
        return RepairResult(
            target_class=target_class,
            status="nothing_to_repair",
            patch=[],
            fitness=None,
            n_neg=0,
            n_pos=0,
            n_patched=0,
            n_intact=0,
            rr=None,
            br=0.0 if positives.size else None,
            iterations=0,
            seconds=time.perf_counter() - start,
        )
    weight, bias = head.weight.detach(), None if head.bias is None else head.bias.detach()
    generator = torch.Generator().manual_seed(int(seed))
    loc = None
    if grad_factor is not None:
        loc = localise(weight, bias, features[torch.as_tensor(neg)], target_class, grad_factor)
    pos = sample_positives(positives, features, n_positives, sampling, generator, labels=y_np)
    return Problem(
        method=method,
        head=head,
        features=features,
        target_class=target_class,
        device=dev,
        y=y_np,
        neg=neg,
        positives=positives,
        pos=pos,
        loc=loc,
        generator=generator,
        start=start,
    )


def _evaluate_patch(
    head: nn.Linear,
    patch: list[PatchedWeight],
    features: torch.Tensor,
    y: np.ndarray,
    neg: np.ndarray,
    positives: np.ndarray,
    pos_used: np.ndarray,
    target_class: int,
    device: torch.device,
    fitness: FinalFitness,
) -> dict[str, float | int | None]:
    """The repaired layer's figures, computed as a model rebuilt from ``patch`` would."""
    patched = apply_patch(head, patch).to(device)
    with torch.no_grad():
        logits = patched(features.to(device, patched.weight.dtype)).to(torch.float64).cpu()
    pred = logits.argmax(dim=1).numpy()
    used = torch.as_tensor(np.concatenate([neg, pos_used]), dtype=torch.long)
    fit = fitness(logits[used], torch.as_tensor(y)[used], int(neg.size))
    n_patched = int((pred[neg] == target_class).sum())
    n_intact = int((pred[pos_used] == y[pos_used]).sum())
    broken = (pred[positives] != y[positives]).mean() if positives.size else None
    return {
        "fitness": None if fit is None else float(fit),
        "n_patched": n_patched,
        "n_intact": n_intact,
        "rr": 100.0 * n_patched / neg.size,
        "br": None if broken is None else 100.0 * float(broken),
    }


def _device(device: torch.device | str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise BadInput(f"repair device {device!r} is not a torch device (use cpu or cuda)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"repair device {device!r}: CUDA is not available on this machine")
    return dev


def _check_inputs(
    head: nn.Module,
    features: torch.Tensor,
    y: torch.Tensor,
    split: TargetSplit,
    target_class: int,
) -> np.ndarray:
    """One-line BadInput naming what does not fit; returns the labels as a numpy array."""
    if not isinstance(head, nn.Linear):
        raise BadInput(
            f"repair: the model's last layer is {type(head).__name__}, not an nn.Linear over"
            " class scores; Arachne repairs the final Linear layer only"
        )
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if hasattr(features, "shape") else type(features).__name__
        raise BadInput(f"repair: features must be a 2-D tensor (inputs x units), got {shape}")
    if features.shape[1] != head.in_features:
        raise BadInput(
            f"repair: features have {features.shape[1]} units but the final Linear layer"
            f" expects {head.in_features}; pass the penultimate activations"
        )
    y_np = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y).astype(np.int64)
    if y_np.shape != (features.shape[0],):
        raise BadInput(f"repair: {features.shape[0]} feature rows but labels of shape {y_np.shape}")
    classes = head.out_features
    if y_np.size and (y_np.min() < 0 or y_np.max() >= classes):
        raise BadInput(
            f"repair: labels run {y_np.min()}..{y_np.max()} but the final Linear layer has"
            f" {classes} outputs; its out_features must be the number of classes"
        )
    if not 0 <= target_class < classes:
        raise BadInput(f"repair: target class {target_class} is outside 0..{classes - 1}")
    if split.y.shape != y_np.shape or not np.array_equal(split.y, y_np):
        raise BadInput("repair: the target split's labels are not those of the repair set")
    if split.pred.shape != y_np.shape:
        raise BadInput("repair: the target split's predictions do not match the repair set")
    if not (torch.isfinite(features).all() and torch.isfinite(head.weight).all()):
        raise RunFailed("repair: the checkpoint has non-finite weights or activations")
    return y_np
