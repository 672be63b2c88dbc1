"""Provable repair of the final layer: the smallest weight change that classifies every
negative as its class and keeps every sampled positive, each by a margin - or says it
could not.

Why this module exists: Arachne, its DE version, NeuRecover and fine-tuning search or
descend with no guarantee; this method is the other end of the spectrum (in the line of
PRDNN, PLDI 2021, and APRNN, PLDI 2023). With the penultimate features fixed the
constraints are linear in the final layer's weights, so the least change (``norm``: L1 or
L-infinity) is a linear program, solved by SciPy's HiGHS (:mod:`provable_lp`). Read next to
the search methods, it shows what a guarantee on the repair set costs on the test set.

The problem is every method's (``last_layer.set_up``): the class's negatives, the sampled
positives (same sampler, same first draw of the seeded generator: there is no other random
choice, so a repair is deterministic up to the solver). Constraints, each with ``margin``
in logit units: every negative gets the target class; with ``keep_positives`` every
sampled positive keeps its label. ``rows``: ``target`` (default) lets only the target
class's row change - one constraint per input, so a GTSRB-sized head solves in well under
a second; a positive of another class is then constrained against the target class only
(its other classes' scores do not move) - and ``all`` every class's row: the least change
of the whole layer, but with constraints against every class, tens of seconds to minutes
on a GTSRB-sized head (``bench_methods.py``), and a margin demanded of every positive
against every class. The
bias stays, as in every patch. ``time_limit`` bounds the solver's wall-clock time.

Every record says ``certified: true`` when the patch, applied to the layer in its own dtype
(exactly as a model rebuilt from ``patch.json`` computes), classifies every constrained
input correctly and meets every constraint's margin to within 0.1 % (then RR = 100 % and
the sampled positives stay intact, by construction); ``certified: false`` otherwise, with
``solver_status`` the solver's word on the program (``optimal``, ``infeasible``, ``time
limit``, ...) and - when it was not solved - ``method_note`` saying the patch minimises the
total violation of the constraints instead. BR is measured on all positives: those not
sampled carry no guarantee.

``history`` has two rows, before (0) and after (1) the patch: the program's size (its
variables, constraints and nonzeros in the last lazy round, all constraints, rounds), the
solver's time, the objective (the norm of the change, or the total violation for the
fallback), the constraints unmet and whether certified. ``iterations`` is 1; ``fitness``
is None.
"""

from __future__ import annotations

import numpy as np
import torch

from orchestrator.spec import ProvableRepairSpec
from trainer_image.repair.base import PatchedWeight, RepairResult, RepairTask, apply_patch
from trainer_image.repair.last_layer import set_up
from trainer_image.repair.provable_lp import MarginProblem, certify, gaps, solve


def margin_problem(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    features: torch.Tensor,
    neg: np.ndarray,
    pos: np.ndarray,
    y: np.ndarray,
    target_class: int,
    cfg: ProvableRepairSpec,
) -> MarginProblem:
    """The constrained inputs (negatives, then the sampled positives when kept)."""
    idx = np.concatenate([neg, pos]) if cfg.keep_positives else neg
    targets = np.concatenate([np.full(neg.size, target_class), y[pos]])
    targets = targets if cfg.keep_positives else targets[: neg.size]
    w = weight.detach().to("cpu", torch.float64).numpy()
    classes = w.shape[0]
    return MarginProblem(
        x=features[torch.as_tensor(idx, dtype=torch.long)]
        .detach()
        .to("cpu", torch.float64)
        .numpy(),
        targets=targets.astype(np.int64),
        weight=w,
        bias=np.zeros(classes) if bias is None else bias.detach().to("cpu", torch.float64).numpy(),
        rows=np.arange(classes) if cfg.rows == "all" else np.array([target_class]),
        margin=float(cfg.margin),
    )


def changed(weight: torch.Tensor, rows: np.ndarray, delta: np.ndarray) -> list[PatchedWeight]:
    """Every weight of ``rows`` whose new value, in the layer's dtype, differs from the old."""
    old = weight.detach().cpu()
    block = old[torch.as_tensor(rows)].to(torch.float64) + torch.from_numpy(delta)
    new = block.to(old.dtype)
    r, c = torch.nonzero(new != old[torch.as_tensor(rows)], as_tuple=True)
    return [
        PatchedWeight(row=int(rows[i]), col=int(j), old=float(old[rows[i], j]), new=float(v))
        for i, j, v in zip(r.tolist(), c.tolist(), new[r, c].tolist(), strict=True)
    ]


def repair(task: RepairTask, cfg: ProvableRepairSpec) -> RepairResult:
    """Repair ``task.head`` for ``task.target_class`` by the linear program (module
    docstring); the result's ``details`` hold ``certified``, ``solver_status`` and, for a
    fallback, ``method_note``.
    """
    target_class = task.target_class
    problem = set_up(
        "provable",
        task,
        n_positives=cfg.n_positives,
        sampling=cfg.positives,
        grad_factor=None,
    )
    if isinstance(problem, RepairResult):
        return problem
    lp = margin_problem(
        problem.weight,
        problem.bias,
        problem.features,
        problem.neg,
        problem.pos,
        problem.y,
        target_class,
        cfg,
    )
    solution = solve(lp, cfg.norm, float(cfg.time_limit))
    patch = changed(problem.weight, lp.rows, solution.delta)
    with torch.no_grad():  # the layer in its own dtype, as a rebuilt model computes it
        x = torch.from_numpy(lp.x).to(problem.weight.dtype)
        logits = apply_patch(task.head, patch).cpu()(x).double().numpy()
    certified = certify(lp, logits)
    before = lp.logits
    history = [
        _row(0, {k: 0 for k in solution.size}, 0.0, 0.0, lp, before, certify(lp, before)),
        _row(1, solution.size, solution.seconds, solution.objective, lp, logits, certified),
    ]
    result = problem.finish(patch, 1, history, _no_fitness)
    result.details = {"certified": certified, "solver_status": solution.status}
    if solution.fallback is not None:
        result.details["method_note"] = (
            f"program {solution.status}: the patch minimises the total violation"
            if solution.fallback == "min-violation"
            else f"program {solution.status} and its fallback failed: no change"
        )
    return result


def _row(
    it: int,
    size: dict[str, int],
    seconds: float,
    objective: float | None,
    lp: MarginProblem,
    logits: np.ndarray,
    certified: bool,
) -> dict[str, float]:
    """One row of search.csv: before (0) and after (1) the patch."""
    return {
        "iteration": it,
        **size,
        "solver_seconds": round(seconds, 6),
        "objective": np.nan if objective is None else objective,
        "unmet": int((gaps(lp, logits) < lp.margin * (1 - 1e-3)).sum()),
        "certified": int(certified),
    }


def _no_fitness(logits: torch.Tensor, labels: torch.Tensor, n_neg: int) -> None:
    return None
