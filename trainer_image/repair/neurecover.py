"""NeuRecover: repair of the final layer localised by the training history, searched by PSO.

Why this module exists: NeuRecover (Tokui et al., SANER 2022, "Regression-Controlled Repair
of Deep Neural Networks with Training History") changes only weights that *moved* during
training and that matter for what the model got *worse* at, not for what it got better at,
to repair with few regressions. A sweep keeps the training history as checkpoints, which
no other repair setting has at hand, so "repair early" can be asked of it too. Implemented
from the paper's description and its reference implementation (jst-qaml/eAI-Repair-Toolkit,
``src/repair/methods/neurecover``), restricted to the final Linear layer like every method
here; where the two leave a choice, this docstring says which was made.

One call per checkpoint ``M_n`` x target class ``c``, given a reference model ``M_ref``
(:mod:`~trainer_image.repair.history`; ``compare_with``: the previous kept checkpoint -
the reference code's "last two generations" -, the first one, or the initial weights; at
the first checkpoint, where there is no earlier one, the initial weights):

1. **Data from the history.** Over the class's negatives ``I_neg`` and all positives of the
   repair set (the reference concatenates the failing inputs and the positive data):
   ``I_deg`` (regressed) = correct under ``M_ref``, wrong now - the negatives ``M_ref`` got
   right; ``I_imp`` (improved) = wrong under ``M_ref``, correct now - positives.
2. **Scores of every weight** ``w_ij`` of the final layer: ``|dL/dw_ij|`` of the mean
   cross-entropy over ``I_deg`` (each input with its own label), the same over ``I_imp``;
   forward impact ``mean_{I} |o_j w_ij|`` over each set (``o``: penultimate activations);
   and the training change ``|w_ij(M_n) - w_ij(M_ref)|``.
3. **Set operations.** With ``T_s`` the top ``k = round(top_fraction x C x d)`` weights by
   score ``s`` (stable: ties keep row-major order): the localised weights are
   ``(T_fwd_deg & T_grad_deg & T_diff) - (T_fwd_imp & T_grad_imp)``.
4. **Search**: Arachne's PSO (``swarm.pso``, its fields here) over the localised weights'
   values, from the same seeded generator, with NeuRecover's fitness
   ``(N_patched / |I_neg| + 1) / (L_neg + 1) + alpha x (N_intact / |I_pos| + 1) / (L_pos + 1)``
   (counts as fractions, unlike Arachne's; the pos term is ``1 / (0 + 1)`` with no
   positives), on the negatives and the sampled positives (the same sampler and draw as
   every method).

Choices where the sources leave room (each is also what a record says):

- *Gradient of the loss, not of the output.* The reference ranks weights by the gradient
  of the summed model outputs; for a softmax output that sum is 1 for every input, so its
  gradient is zero up to rounding. Here: the gradient of the cross-entropy, as in Arachne,
  which the paper builds on.
- *Forward impact as the reference computes it*: ``mean |o_j w_ij|`` (Arachne's own uses
  ``|mean o_j w_ij|``).
- *How many weights (``top_fraction``).* The reference takes ``round(n x susp)`` per layer
  with a layer suspiciousness from all layers' forward impacts and weight changes; with the
  final layer alone (against only its bias) that is a fraction of about a quarter to a
  half, depending on the bias. It is a field here (default 0.25).
- *No regressed negatives* (none of them was right under ``M_ref``; common at the first
  checkpoint): the reference would localise nothing. Here ``I_deg`` falls back to all the
  class's negatives (Arachne's localisation set) and the record's ``method_note`` says so.
- *No reference at all* (a run trained before the initial weights were kept, or a caller
  that gives no history): the ``T_diff`` criterion is dropped, ``I_deg`` is all negatives,
  ``I_imp`` is empty; ``reference_epoch`` is None and ``method_note`` says so.
- Nothing localised (the sets are disjoint): no search, an empty patch, and a note.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator.spec import NeurecoverRepairSpec
from trainer_image.repair.base import RepairResult, RepairTask
from trainer_image.repair.history import Reference
from trainer_image.repair.last_layer import SEARCH_DTYPE, Problem, SwarmFitness, set_up
from trainer_image.repair.selection import Localisation
from trainer_image.repair.swarm import pso

# --- localisation from the history (pure, float64 on the CPU) ----------------------------


def loss_gradient(
    weight: np.ndarray, bias: np.ndarray | None, x: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """``d(mean CE)/dW`` of inputs ``x`` with their own ``labels`` (C x d); zero for no input."""
    if len(x) == 0:
        return np.zeros_like(weight)
    z = x @ weight.T + (0.0 if bias is None else bias)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(x)), labels] -= 1.0
    return p.T @ x / len(x)


def forward_impact(weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``mean_inputs |o_j w_ij|`` (C x d) = ``|w_ij| mean |o_j|``; zero for no input."""
    if len(x) == 0:
        return np.zeros_like(weight)
    return np.abs(weight) * np.abs(x).mean(axis=0)[None, :]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask (like ``scores``) of its ``k`` largest, ties in row-major order."""
    flat = scores.ravel()
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(-flat, kind="stable")[:k]] = True
    return mask.reshape(scores.shape)


@dataclass(frozen=True)
class HistoryLocalisation:
    """The localised weights and how they were found."""

    mask: np.ndarray  # (C x d) True where localised
    k: int
    grad_deg: np.ndarray
    fwd_deg: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return np.nonzero(self.mask)[0]

    @property
    def cols(self) -> np.ndarray:
        return np.nonzero(self.mask)[1]


def localise_from_history(
    weight: np.ndarray,
    bias: np.ndarray | None,
    ref_weight: np.ndarray | None,
    deg: tuple[np.ndarray, np.ndarray],
    imp: tuple[np.ndarray, np.ndarray],
    top_fraction: float,
) -> HistoryLocalisation:
    """Steps 2-3 of the module docstring; ``deg``/``imp`` are (features, labels).

    ``ref_weight`` None drops the training-change criterion. An empty ``imp`` removes
    nothing (its top-k sets are empty, as the reference's are).
    """
    k = round(top_fraction * weight.size)
    grad_deg = np.abs(loss_gradient(weight, bias, *deg))
    fwd_deg = forward_impact(weight, deg[0])
    wanted = top_k(grad_deg, k) & top_k(fwd_deg, k)
    if ref_weight is not None:
        wanted &= top_k(np.abs(weight - ref_weight), k)
    if len(imp[0]):
        grad_imp = np.abs(loss_gradient(weight, bias, *imp))
        wanted &= ~(top_k(grad_imp, k) & top_k(forward_impact(weight, imp[0]), k))
    return HistoryLocalisation(mask=wanted, k=k, grad_deg=grad_deg, fwd_deg=fwd_deg)


# --- the fitness -----------------------------------------------------------------------


def neurecover_fitness(
    n_patched: Any,
    loss_neg: Any,
    n_intact: Any,
    loss_pos: Any,
    n_neg: int,
    n_pos: int,
    alpha: float,
) -> Any:
    """Step 4's fitness (tensors or floats)."""
    intact = n_intact / n_pos if n_pos else n_intact * 0.0
    return (n_patched / n_neg + 1) / (loss_neg + 1) + alpha * (intact + 1) / (loss_pos + 1)


class NeuRecoverFitness(SwarmFitness):
    """Arachne's vectorised scorer of the localised weights with NeuRecover's fitness."""

    def __init__(self, *args: Any, alpha: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = float(alpha)

    def fitness(
        self,
        correct: torch.Tensor,
        nll: torch.Tensor,
        n_patched: torch.Tensor,
        loss_neg: torch.Tensor,
        n_intact: torch.Tensor,
        loss_pos: torch.Tensor,
    ) -> torch.Tensor:
        return neurecover_fitness(
            n_patched, loss_neg, n_intact, loss_pos, self.n_neg, self.n_pos, self.alpha
        )


def _final_fitness(alpha: float) -> Callable[[torch.Tensor, torch.Tensor, int], float]:
    def score(logits: torch.Tensor, labels: torch.Tensor, n_neg: int) -> float:
        pred = logits.argmax(dim=1)
        neg, pos = slice(0, n_neg), slice(n_neg, None)
        n_pos = len(labels) - n_neg
        loss_pos = float(F.cross_entropy(logits[pos], labels[pos])) if n_pos else 0.0
        return float(
            neurecover_fitness(
                float((pred[neg] == labels[neg]).sum()),
                float(F.cross_entropy(logits[neg], labels[neg])),
                float((pred[pos] == labels[pos]).sum()),
                loss_pos,
                n_neg,
                n_pos,
                alpha,
            )
        )

    return score


# --- the entry point -------------------------------------------------------------------


def history_sets(
    problem: Problem, ref: Reference | None
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """``I_deg``, ``I_imp`` (repair-set indices) and a note when a fallback applied."""
    if ref is None:
        return (
            problem.neg,
            np.zeros(0, dtype=np.int64),
            "no earlier weights: localised on all negatives without the training change",
        )
    right_then = ref.pred == problem.y
    deg = problem.neg[right_then[problem.neg]]
    imp = problem.positives[~right_then[problem.positives]]
    if deg.size == 0:
        return problem.neg, imp, "no regressed negatives: localised on all negatives"
    return deg, imp, None


def repair(task: RepairTask, cfg: NeurecoverRepairSpec) -> RepairResult:
    """Repair ``task.head`` for ``task.target_class`` with NeuRecover (module docstring).

    ``task.history`` says where the earlier weights come from (None: there are none). The
    result's ``details`` give ``reference_epoch`` (0: the initial weights) and a
    ``method_note`` when a fallback applied.
    """
    problem = set_up(
        "neurecover",
        task,
        n_positives=cfg.n_positives,
        sampling=cfg.positives,
        grad_factor=None,
    )
    history = task.history
    ref = None if history is None else history.reference(cfg.compare_with)
    if isinstance(problem, RepairResult):
        problem.details = {"reference_epoch": None if ref is None else ref.epoch}
        return problem
    deg, imp, note = history_sets(problem, ref)
    x = problem.features.detach().to("cpu", torch.float64).numpy()
    w = problem.weight.to("cpu", torch.float64).numpy()
    b = None if problem.bias is None else problem.bias.to("cpu", torch.float64).numpy()
    ref_w = None if ref is None else ref.weight.detach().to("cpu", torch.float64).numpy()
    loc = localise_from_history(
        w, b, ref_w, (x[deg], problem.y[deg]), (x[imp], problem.y[imp]), cfg.top_fraction
    )
    rows, cols = loc.rows, loc.cols
    problem.loc = Localisation(
        rows=rows,
        cols=cols,
        grad=loc.grad_deg[rows, cols],
        impact=loc.fwd_deg[rows, cols],
        n_candidates=loc.k,
    )
    details: dict[str, Any] = {"reference_epoch": None if ref is None else ref.epoch}
    final = _final_fitness(cfg.alpha)
    if rows.size == 0:
        details["method_note"] = "; ".join(filter(None, [note, "no weight localised: no search"]))
        result = problem.finish([], 0, [], final)
    else:
        evaluator = problem.evaluator(NeuRecoverFitness, int(cfg.max_batch_bytes), alpha=cfg.alpha)
        w64 = problem.weight.to("cpu", SEARCH_DTYPE)
        std, wb = float(w64.std(correction=0)), float(w64.max() - w64.min())
        search = pso(evaluator, evaluator.initial, std, wb, cfg, problem.generator, problem.device)
        result = problem.finish(
            problem.localised_patch(search.best), search.iterations, search.history, final
        )
        if note:
            details["method_note"] = note
    result.details = details
    return result
