"""A test-only repair method built on the last-layer toolkit: what adding a method takes.

The whole method is this module - its config class (:class:`GreedyOptions`, the spec's
``repair.options``) and ``repair(task, cfg)`` - because the toolkit
(``trainer_image.repair.last_layer``) does everything that is not the search: the input
checks, Arachne's localised weights, the sampled positives, a scorer of many candidate
values at once by the paper's fitness, and the final figures as a model rebuilt from the
patch computes them.

The search: ``rounds`` passes; each pass tries, for every localised weight, the current
values with that one weight moved by each of ``steps`` (in units of the range max - min of
the layer's weights; all candidates of a pass scored as one batch) and moves to the best
candidate when its fitness is strictly higher.
Deterministic: the seed only draws the positives, as for every method.

A spec uses it by import path::

    repair:
      method: early_repair_testing.greedy_repair:repair
      classes: [3]
      options: {rounds: 2}

As a built-in method it would be this module in ``trainer_image/repair/``, one line in
``orchestrator.catalog.REPAIR_METHODS`` and ``GreedyOptions`` as a member of the spec's
``RepairConfig``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import BadInput
from trainer_image.repair.base import RepairResult, RepairTask
from trainer_image.repair.last_layer import SwarmFitness, best_fields, paper_fitness, set_up


class GreedyOptions(BaseModel):
    """The method's own config: the spec's ``repair.options``."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(2, gt=0, description="Passes over the localised weights.")
    steps: list[float] = Field(
        [-1.0, -0.25, 0.25, 1.0], min_length=1, description="Moves tried per weight (x range)."
    )
    n_positives: int = Field(200, gt=0, description="Positives the fitness keeps intact.")
    grad_factor: int = Field(20, gt=0, description="Fault localisation's N_g per negative.")


def repair(task: RepairTask, cfg: Any) -> RepairResult:
    """A ``trainer_image.repair.base.RepairMethod`` (module docstring)."""
    try:
        opts = GreedyOptions.model_validate(cfg.options)
    except ValidationError as e:
        raise BadInput(f"repair.options: {e.errors()[0]['msg']} (greedy_repair)") from e
    problem = set_up(
        "greedy",
        task,
        n_positives=opts.n_positives,
        sampling="uniform",
        grad_factor=opts.grad_factor,
    )
    if isinstance(problem, RepairResult):  # no negatives: nothing to repair
        return problem
    score = problem.evaluator(SwarmFitness, 2**26)
    best = score.initial.cpu()
    w = problem.weight.to("cpu", torch.float64)
    width = float(w.max() - w.min())
    best_scores = score(best[None])
    history = [{"iteration": 0, **best_fields(best_scores)}]
    k = best.numel()
    for it in range(1, opts.rounds + 1):
        # Row s*k + j: the current values with weight j moved by steps[s].
        candidates = best.repeat(len(opts.steps) * k, 1)
        for s, step in enumerate(opts.steps):
            candidates[s * k + torch.arange(k), torch.arange(k)] += step * width
        scores = score(candidates)
        i = int(torch.argmax(scores.fitness))
        if scores.fitness[i] > best_scores.fitness[0]:
            best, best_scores = candidates[i], scores.take(torch.tensor([i]))
        history.append({"iteration": it, **best_fields(best_scores)})
    patch = problem.localised_patch(best)
    return problem.finish(patch, opts.rounds, history, paper_fitness)
