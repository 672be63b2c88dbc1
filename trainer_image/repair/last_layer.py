"""The toolkit every method that repairs the final Linear layer shares.

Why this module exists: a repair method here changes only the final layer, so what it
needs besides its own search is the same for all of them - the inputs checked, the
target class's negatives and the sampled positives (:mod:`~trainer_image.repair.selection`),
optionally Arachne's localised weights, a vectorised scorer of candidate values of those
weights from the cached penultimate features, and the final figures of a patch computed
as a model rebuilt from the checkpoint and ``patch.json`` computes them. Methods import
this module and :mod:`~trainer_image.repair.base`, never one another (an import-linter
contract), so a new method is one module of its own search.

A method is ``repair(task, cfg)``: :func:`set_up` turns its
:class:`~trainer_image.repair.base.RepairTask` into a :class:`Problem` (or the
``nothing_to_repair`` result when the class has no negatives), the method searches, and
:meth:`Problem.finish` builds the :class:`~trainer_image.repair.base.RepairResult`.

**Scoring many candidates at once** (:class:`SwarmFitness`): only the localised weights
change, so ``logits = base_logits + features[:, j] * delta_w_ij`` added to row ``i`` - one
small matrix product per changed row, in float64 on the run's device, the candidates
chunked so that one chunk's score tensors stay under ``max_batch_bytes``. Its fitness is
the paper's, ``(N_patched + 1) / (L_neg + 1) + (N_intact + 1) / (L_pos + 1)`` with ``L`` the
mean cross-entropy on each set (``L_pos = 0`` when there are no positives); other searches
over the same weights override :meth:`SwarmFitness.fitness`.

**Final figures** (:meth:`Problem.finish`): ``n_patched``, ``n_intact``, ``fitness``, ``rr``
and ``br`` are recomputed once with the patch applied to the layer in its own dtype
(:func:`~trainer_image.repair.base.apply_patch`); they can differ from a float64 search's
best in the last digits (``history`` holds the search's own values).

The positives are the first draw of a CPU ``torch.Generator`` seeded with the task's
seed; the method draws its own random numbers from the same generator next, so a repair
is reproducible and its draws are the same on CPU and CUDA.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.errors import BadInput, RunFailed
from trainer_image.repair.base import (
    PatchedWeight,
    RepairResult,
    RepairTask,
    apply_patch,
)
from trainer_image.repair.selection import Localisation, localise, sample_positives

log = logging.getLogger(__name__)

# Searches run in float64: the fitness then matches a full-network reference to ~1e-12
# and the cost is negligible next to computing the features.
SEARCH_DTYPE = torch.float64

Num = TypeVar("Num", torch.Tensor, float)


# --- scoring many candidate patches at once ------------------------------------------------------


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
    """The paper's fitness (module docstring)."""
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


@dataclass
class Search:
    """What a search of the localised weights found, with its per-iteration history."""

    best: torch.Tensor  # (K,) best position found, on the CPU
    scores: SwarmScores  # its scores (length-1 tensors)
    iterations: int
    history: list[dict[str, float]]


def best_fields(best: SwarmScores) -> dict[str, float]:
    """The history columns describing the best candidate so far (length-1 scores)."""
    return {
        "best_fitness": float(best.fitness[0]),
        "best_n_patched": int(best.n_patched[0]),
        "best_n_intact": int(best.n_intact[0]),
        "best_loss_neg": float(best.loss_neg[0]),
        "best_loss_pos": float(best.loss_pos[0]),
    }


# --- set-up and final figures ---------------------------------------------------------

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
        final = evaluate_patch(
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
    task: RepairTask,
    *,
    n_positives: int,
    sampling: str,
    grad_factor: int | None,
) -> Problem | RepairResult:
    """Check the task, localise (unless ``grad_factor`` is None), sample the positives
    (``sampling``: how, as ``repair.positives``); ``method`` names the method in the log.

    Returns the ``nothing_to_repair`` result when the class has no negatives. The positives
    are the first draw of the generator seeded with ``task.seed``, so every method given the
    same seed sees the same positives.
    """
    start = time.perf_counter()
    dev = _device(task.device)
    y_np = _check_inputs(task)
    head, features, target_class = task.head, task.features, task.target_class
    neg = task.split.negatives(target_class)
    positives = task.split.positives()
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
    generator = torch.Generator().manual_seed(int(task.seed))
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


def evaluate_patch(
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


def _check_inputs(task: RepairTask) -> np.ndarray:
    """One-line BadInput naming what does not fit; returns the labels as a numpy array."""
    head, features, y, split = task.head, task.features, task.labels, task.split
    target_class = task.target_class
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
