"""Arachne repair of a model's final Linear layer, as the paper used it (docs/science.md).

Why this module exists: repair is the science of the whole tool, and the paper's code made
it slow (the whole network re-ran for every particle) and irreproducible (the swarm was
never seeded). Arachne only changes the final layer, so the penultimate activations of
the repair set are fixed during the search; the trainer computes them once per
checkpoint and this module evaluates *all* particles of the swarm together from them.

Steps (one call to :func:`repair` per checkpoint x target class):

1. **Fault localisation** on the target class's negatives ``I_neg``
   (:func:`~trainer_image.repair.selection.localise`): the top ``grad_factor x |I_neg|``
   final-layer weights by ``|dL/dw_ij|`` of the mean cross-entropy on ``I_neg``, then the
   Pareto front of (``|grad|``, forward impact ``|mean_{I_neg} o_j x w_ij|``), both
   maximised; the rules, ties included, are in :mod:`~trainer_image.repair.selection`.
2. **Positives** ``I_pos`` (:func:`~trainer_image.repair.selection.sample_positives`,
   ``positives``): ``uniform`` (default) draws ``n_positives`` of the split's positives
   (all classes) without replacement by the seeded generator; ``with-replacement-dedup``
   and the released code's label-``balanced`` sample are options, defined in
   :mod:`~trainer_image.repair.selection`.
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
   particles at once by :class:`~trainer_image.repair.last_layer.SwarmFitness` from the
   cached features, in float64 on the run's device.

Every random draw (positives, initial positions, ``r1``/``r2``) comes from one CPU
``torch.Generator`` seeded with ``seed``, so a repair is reproducible and the draws are the
same on CPU and CUDA. The reported ``n_patched``, ``n_intact``, ``fitness``, ``rr`` and
``br`` are recomputed once at the end with the patch applied to the layer in its own dtype
(:func:`~trainer_image.repair.base.apply_patch`) - exactly what a model rebuilt from the
checkpoint and ``patch.json`` computes; they can differ from the float64 search's best in
the last digits (``history`` holds the search's own values).

Steps 1, 2 and 4, the input checks and the final figures are not PSO-specific: they are
the toolkit every last-layer method shares (:mod:`~trainer_image.repair.last_layer`); this
module is the swarm search alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from orchestrator.spec import ArachneSpec
from trainer_image.repair.base import RepairResult, RepairTask
from trainer_image.repair.last_layer import (
    SEARCH_DTYPE,
    Search,
    SwarmFitness,
    SwarmScores,
    best_fields,
    paper_fitness,
    set_up,
)

log = logging.getLogger(__name__)


# --- particle swarm ------------------------------------------------------------------


def constriction(phi: float) -> float:
    return 2.0 / (phi - 2.0 + math.sqrt(phi * phi - 4.0 * phi))


def clamp_velocity(v: torch.Tensor, wb: float, variant: str) -> torch.Tensor:
    """v1: ``|v|`` into ``[wb/5, 5 wb]``, sign kept (0 -> negative); textbook: ``|v| <= 5 wb``."""
    if variant == "textbook":
        return v.clamp(-5.0 * wb, 5.0 * wb)
    sign = torch.where(v > 0, 1.0, -1.0).to(v.dtype)
    return sign * v.abs().clamp(wb / 5.0, 5.0 * wb)


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


def repair(task: RepairTask, cfg: ArachneSpec) -> RepairResult:
    """Repair ``task.head`` for ``task.target_class`` with Arachne (the module docstring).

    Returns the patch (every localised weight with its old and new value) and the repair's
    figures; status ``nothing_to_repair`` (no search, empty patch, ``rr`` None) when the
    class has no negatives. Raises BadInput when the layer, the features and the labels do
    not fit, and RunFailed when the checkpoint's weights or activations are not finite (it
    diverged).
    """
    problem = set_up(
        "arachne",
        task,
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
