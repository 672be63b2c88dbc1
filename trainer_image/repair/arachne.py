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
3. **PSO** over the localised weights' values (:func:`~trainer_image.repair.swarm.pso`):
   ``particles`` positions drawn from Normal(current value, std of all the layer's weights
   (population std)), velocity 0.
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
module is the swarm search alone, whose code (``swarm.py``) NeuRecover shares.
"""

from __future__ import annotations

import torch

from orchestrator.spec import ArachneSpec
from trainer_image.repair.base import RepairResult, RepairTask
from trainer_image.repair.last_layer import SwarmFitness, paper_fitness, set_up

# The swarm itself is shared with NeuRecover (swarm.py); its names stay importable here.
from trainer_image.repair.swarm import clamp_velocity, constriction, pso

__all__ = ["clamp_velocity", "constriction", "pso", "repair"]


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
