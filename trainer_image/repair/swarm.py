"""Arachne's particle swarm over the values of localised final-layer weights.

Why this module exists: the search of Arachne v1 (``arachne.py``; its rules are step 3 of
that module's docstring) is also NeuRecover's (``neurecover.py``), which extends Arachne.
Methods do not import one another (an import-linter contract), so the swarm lives here,
next to the rest of the last-layer toolkit, and both methods use it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from trainer_image.repair.last_layer import SEARCH_DTYPE, Search, SwarmScores, best_fields

log = logging.getLogger("trainer_image.repair.arachne")


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
    cfg: Any,
    generator: torch.Generator,
    device: torch.device,
) -> Search:
    """Maximise ``fitness`` around ``initial`` (K,) - see ``arachne.py``'s docstring, step 3.

    ``cfg`` has Arachne's PSO fields: particles, iterations, patience, phi, variant,
    update_order, stagnation_start.

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
