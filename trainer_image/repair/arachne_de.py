"""Arachne with differential evolution, as in its TOSEM 2023 version (coinse/arachne).

Why this module exists: the paper repaired with Arachne v1 (a particle swarm, arachne.py);
Arachne's journal version searches the same weights with differential evolution (DE) and
a different fitness. Whether "repair early" holds for a repair method is the first thing a
comparison across checkpoints must show, so both searches run on the same problem.

Shared with ``arachne.py`` through the last-layer toolkit
(:mod:`~trainer_image.repair.last_layer`, reused, not re-implemented): the input checks, the
fault localisation (the same localised weights for the same checkpoint and class), the
positives (the same sampler, the first draw of the generator: a seed gives both methods the
same positives), the vectorised scoring from cached penultimate features (:class:`DEFitness`
is a :class:`~trainer_image.repair.last_layer.SwarmFitness`: a whole population is scored
with one batched matrix product per changed row of the layer), and the final figures,
recomputed with the patch applied to the layer in its own dtype.

The search (:func:`evolve`), from the TOSEM code (``arachne/search/de_vk.py``,
``searcher_vk.py``):

- **Population** of ``population`` (100) vectors of the K localised weights' values; each
  value ~ Normal(mean, std) of the *whole layer's* weights (population std) - not centred on
  the weight's own value as in the PSO. Initial values are not clipped (as in TOSEM).
- **Bounds**, the same for every weight: ``[min x 2 if min < 0 else min / 2,
  max x 2 if max > 0 else max / 2]`` of the layer's weights; mutant values are clipped.
- **One generation** (DE/rand/1/bin): a scale factor ``F ~ U(mutation)`` drawn once; for
  each target ``i``: three distinct other members ``a, b, c`` (uniformly), the mutant
  ``clip(a + F (b - c))``, binomial crossover (each dimension from the mutant with
  probability ``recombination``, one uniformly drawn dimension always), and greedy
  replacement: the trial replaces its target when its fitness is ``>=`` the target's.
- **Fitness** ``N_intact' + patch_aggr x N_patched'`` with ``N' = N + sum over the still
  misclassified inputs of 1 / (CE + 1)`` (CE: that input's cross-entropy), over the sampled
  positives and all the class's negatives. Higher is better; a misclassified input counts
  for less the less sure the layer is of its wrong answer.
- **Stop** after ``generations`` generations, or after ``patience`` consecutive generations
  in which the best fitness did not strictly increase. Scoring the initial population is
  generation 0 and is not counted. TOSEM's off-by-ones are not reproduced: it took its
  baseline best at the end of generation 1, compared bests rounded to float32 and stopped
  only after *more than* 10 unchanged generations.

Not reproduced either: TOSEM's search scored *all* correctly classified inputs (it sampled
positives only for localisation); here the search sees the ``n_positives`` sampled
positives, as the PSO does (raise ``n_positives`` to use all of them).

**Update order** (``update``; the default is ``batched``, for speed: the asynchronous
order scores more trials in more, smaller batches, about 2-3x the time of ``batched`` on
the quickstart's small layer and about 1.5-2x on a VGG16-shaped head):

- ``asynchronous`` (TOSEM's order): targets are visited in order ``0..P-1`` and a trial
  replaces its target at once, so later targets of the same generation draw ``a, b, c``
  from the partly updated population. To score in batches all the same, the trials are
  scored in rounds: first all of them, built from the population as it was at the start of
  the generation; walking through the targets in order, a target is decided (kept or
  replaced, exactly as in the sequential loop) as soon as the fates of its donors that
  come before it are known and none of those was replaced; a trial one of whose earlier
  donors was replaced is rebuilt from the donors' new values (later donors keep their old
  ones, as in the sequential loop) and scored with the other rebuilt ones in the next
  round. Every trial and every decision is the sequential order's; each trial is scored at
  most twice, in a few rounds per generation instead of P scoring calls.
- ``batched``: all trials of a generation are built from the population as it was at the
  start of the generation, scored together as one batch, and replace their targets
  together (classic synchronous DE, as Storn and Price defined it). Faster, but a
  different search from TOSEM's.

Random numbers all come from one CPU ``torch.Generator`` seeded with ``seed``: the positives,
then the initial population (P x K normals), then per generation, in this order: ``F`` (one
uniform), the donors (P x (P-1) uniforms, whose ranks order the other members; the first
three are ``a, b, c``), the forced dimensions (P integers below K) and the crossover
uniforms (P x K). Both update orders consume exactly the same numbers, so they differ only
in which population the donors are read from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from orchestrator.spec import ArachneDERepairSpec
from trainer_image.repair.base import RepairResult, RepairTask
from trainer_image.repair.last_layer import (
    SEARCH_DTYPE,
    Search,
    SwarmFitness,
    SwarmScores,
    best_fields,
    set_up,
)

log = logging.getLogger(__name__)


def soft_fitness(
    correct: torch.Tensor, nll: torch.Tensor, n_neg: int, patch_aggr: float
) -> torch.Tensor:
    """``N_intact' + patch_aggr x N_patched'`` per row of (.., N) terms, negatives first."""
    soft = torch.where(correct.bool(), 1.0, 1.0 / (nll + 1.0))
    return soft[..., n_neg:].sum(dim=-1) + patch_aggr * soft[..., :n_neg].sum(dim=-1)


class DEFitness(SwarmFitness):
    """The toolkit's vectorised scorer with TOSEM's fitness."""

    def __init__(self, *args: Any, patch_aggr: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.patch_aggr = float(patch_aggr)

    def fitness(
        self,
        correct: torch.Tensor,
        nll: torch.Tensor,
        n_patched: torch.Tensor,
        loss_neg: torch.Tensor,
        n_intact: torch.Tensor,
        loss_pos: torch.Tensor,
    ) -> torch.Tensor:
        return soft_fitness(correct, nll, self.n_neg, self.patch_aggr)


def _final_fitness(
    logits: torch.Tensor, labels: torch.Tensor, n_neg: int, *, patch_aggr: float
) -> float:
    nll = F.cross_entropy(logits, labels, reduction="none")
    return float(soft_fitness(logits.argmax(dim=1) == labels, nll, n_neg, patch_aggr))


def bounds_of(weight: torch.Tensor) -> tuple[float, float]:
    """TOSEM's clipping range of a layer's weights (module docstring)."""
    low, high = float(weight.min()), float(weight.max())
    return (low * 2 if low < 0 else low / 2, high * 2 if high > 0 else high / 2)


@dataclass(frozen=True)
class Draws:
    """The random numbers of one generation (module docstring), on the CPU."""

    f: float
    donors: torch.Tensor  # (P, 3) indices of a, b, c, never the target itself
    cross: torch.Tensor  # (P, K) True where the trial takes the mutant's value


def draw_generation(
    generator: torch.Generator, p: int, k: int, mutation: tuple[float, float], rate: float
) -> Draws:
    low, high = mutation
    f = low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64))
    # The three smallest of P - 1 uniforms per target: a uniform ordered draw of 3 others.
    u = torch.rand(p, p - 1, generator=generator, dtype=torch.float64)
    ranks = u.topk(3, dim=1, largest=False, sorted=True).indices
    # Ranks index the P - 1 others: skip the target's own index.
    donors = ranks + (ranks >= torch.arange(p)[:, None]).long()
    forced = torch.randint(k, (p,), generator=generator)
    cross = torch.rand(p, k, generator=generator, dtype=torch.float64) < rate
    cross[torch.arange(p), forced] = True
    return Draws(f=f, donors=donors, cross=cross)


Fitness = Callable[[torch.Tensor], SwarmScores]


def _batched(
    fitness: Fitness,
    pop: torch.Tensor,
    scores: SwarmScores,
    d: Draws,
    bounds: tuple[float, float],
) -> tuple[torch.Tensor, SwarmScores, int]:
    donors, cross = d.donors.to(pop.device), d.cross.to(pop.device)
    a, b, c = pop[donors[:, 0]], pop[donors[:, 1]], pop[donors[:, 2]]
    trial = torch.where(cross, (a + d.f * (b - c)).clamp(*bounds), pop)
    new = fitness(trial)
    keep = new.fitness >= scores.fitness
    pop = torch.where(keep.to(pop.device)[:, None], trial, pop)
    return pop, new.where(keep, scores), int(keep.sum())


def _asynchronous(
    fitness: Fitness,
    pop: torch.Tensor,
    scores: SwarmScores,
    d: Draws,
    bounds: tuple[float, float],
) -> tuple[torch.Tensor, SwarmScores, int]:
    """TOSEM's in-place order, scored in rounds of batches (module docstring)."""
    p = len(pop)
    start, new = pop, pop.clone()
    out = SwarmScores(*(t.clone() for t in scores.parts()))
    idx_all = torch.arange(p)
    cross = d.cross.to(pop.device)

    def build(js: torch.Tensor) -> torch.Tensor:
        # What target j sees in the sequential order: donors before it as decided this
        # generation, donors after it as they were at its start.
        dn = d.donors[js].to(pop.device)
        seen = torch.where((dn < js.to(pop.device)[:, None])[..., None], new[dn], start[dn])
        mutant = (seen[:, 0] + d.f * (seen[:, 1] - seen[:, 2])).clamp(*bounds)
        return torch.where(cross[js.to(pop.device)], mutant, start[js.to(pop.device)])

    trials = build(idx_all)
    offered = fitness(trials)
    offered = SwarmScores(*(t.clone() for t in offered.parts()))
    offered_fit, target_fit = offered.fitness.tolist(), scores.fitness.tolist()
    earlier = [[x for x in row if x < j] for j, row in enumerate(d.donors.tolist())]
    decided, replaced, rebuilt = [False] * p, [False] * p, [False] * p
    pending = list(range(p))
    while pending:
        rebuild, accepted, waiting = [], [], []
        for j in pending:
            if not all(decided[x] for x in earlier[j]):
                waiting.append(j)  # an earlier donor's fate is not known yet
            elif not rebuilt[j] and any(replaced[x] for x in earlier[j]):
                rebuild.append(j)  # its trial was built from a donor's old value
                waiting.append(j)
            else:
                decided[j] = True
                if offered_fit[j] >= target_fit[j]:
                    replaced[j] = True
                    accepted.append(j)
        if accepted:
            at = torch.tensor(accepted)
            new[at.to(pop.device)] = trials[at.to(pop.device)]
            for mine, theirs in zip(out.parts(), offered.parts(), strict=True):
                mine[at] = theirs[at]
        if rebuild:
            at = torch.tensor(rebuild)
            trials[at.to(pop.device)] = build(at)
            again = fitness(trials[at.to(pop.device)])
            for mine, theirs in zip(offered.parts(), again.parts(), strict=True):
                mine[at] = theirs
            for j, f in zip(rebuild, again.fitness.tolist(), strict=True):
                offered_fit[j], rebuilt[j] = f, True
        pending = waiting
    return new, out, sum(replaced)


def evolve(
    fitness: Fitness,
    k: int,
    mean: float,
    std: float,
    bounds: tuple[float, float],
    cfg: ArachneDERepairSpec,
    generator: torch.Generator,
    device: torch.device,
) -> Search:
    """Maximise ``fitness`` over K values by DE (module docstring); ``iterations`` counts
    generations."""
    p, dt = cfg.population, SEARCH_DTYPE
    step = _batched if cfg.update == "batched" else _asynchronous
    pop = (mean + std * torch.randn(p, k, generator=generator, dtype=dt)).to(device)
    scores = fitness(pop)
    g = int(torch.argmax(scores.fitness))
    best_x, best = pop[g].clone(), scores.take(torch.tensor([g]))
    history = [_record(0, best, scores, 0.0, 0, improved=False, stall=0)]
    stall = gen = 0
    for gen in range(1, cfg.generations + 1):
        draws = draw_generation(generator, p, k, cfg.mutation, cfg.recombination)
        pop, scores, replaced = step(fitness, pop, scores, draws, bounds)
        g = int(torch.argmax(scores.fitness))
        improved = bool(scores.fitness[g] > best.fitness[0])
        if improved:
            best_x, best = pop[g].clone(), scores.take(torch.tensor([g]))
            stall = 0
        else:
            stall += 1
        history.append(_record(gen, best, scores, draws.f, replaced, improved, stall))
        log.debug("arachne-de generation %d: best fitness %.6f", gen, float(best.fitness[0]))
        if stall >= cfg.patience:
            break
    return Search(best=best_x.cpu(), scores=best, iterations=gen, history=history)


def _record(
    gen: int,
    best: SwarmScores,
    pop: SwarmScores,
    f: float,
    replaced: int,
    improved: bool,
    stall: int,
) -> dict[str, float]:
    return {
        "iteration": gen,
        **best_fields(best),
        "population_mean_fitness": float(pop.fitness.mean()),
        "f": f,
        "replaced": replaced,
        "improved": int(improved),
        "stall": stall,
    }


def repair(task: RepairTask, cfg: ArachneDERepairSpec) -> RepairResult:
    """Repair ``task.head`` for ``task.target_class`` with Arachne's DE (module docstring).

    Same contract as :func:`trainer_image.repair.arachne.repair`: the patch holds every
    localised weight, ``iterations`` the generations run, ``fitness`` TOSEM's fitness of
    the patched layer in its own dtype.
    """
    problem = set_up(
        "arachne-de",
        task,
        n_positives=cfg.n_positives,
        sampling=cfg.positives,
        grad_factor=cfg.grad_factor,
    )
    if isinstance(problem, RepairResult):
        return problem
    evaluator = problem.evaluator(
        DEFitness, int(cfg.max_batch_bytes), patch_aggr=float(cfg.patch_aggr)
    )
    w64 = problem.weight.to("cpu", torch.float64)
    mean, std = float(w64.mean()), float(w64.std(correction=0))
    k = int(evaluator.initial.numel())
    search = evolve(evaluator, k, mean, std, bounds_of(w64), cfg, problem.generator, problem.device)
    patch = problem.localised_patch(search.best)
    final = partial(_final_fitness, patch_aggr=float(cfg.patch_aggr))
    return problem.finish(patch, search.iterations, search.history, final)
