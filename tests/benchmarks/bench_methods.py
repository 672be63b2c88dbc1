"""Benchmark: every repair method on the VGG16-shaped head, side by side in one run.

Why: a sweep repairs every checkpoint x class with each method, so a method much slower
than Arachne's PSO would dominate the sweep; the target is each method within 2x of
``arachne``'s time. Same network and repair set as ``bench_arachne.py`` (reused from it):
torchvision VGG16 ``features`` at 32x32x3 -> Linear(512, 4096) -> ReLU -> Linear(4096, 43),
seeded random weights, 200 positives and 60 negatives of class 20; each method's defaults.

Per method, each in a fresh process (like ``bench_arachne.py``):

- full repair: one forward pass for the penultimate activations, then the method's
  ``repair`` - what the trainer does per checkpoint x class (the forward pass is shared
  by all classes and methods of a checkpoint in the trainer, so it is counted here once
  per repair, which favours slow methods);
- search only: ``repair`` on the cached features.

Times are the best of ``--repeat`` runs in the process (the machine may be shared; the
minimum is the least disturbed run).

Memory: peak RSS of the phase (``/proc/self/clear_refs`` reset once the inputs exist), and
the part above the RSS at the start of the phase; on CUDA also the allocator's peak.

``neurecover`` is given a training history: the same network with its head perturbed by a
seeded 5% of the weights' spread as the earlier model (the bench has no training run).

Then (unless ``--no-lp``) ``provable``'s linear program alone on a GTSRB-shaped problem
(43 classes, 512 features, 200 positives, 60 negatives; seeded random ReLU-like features
and head): for ``rows`` target and all and both norms, the program's size (variables,
constraints and nonzeros of the last lazy round, all constraints, rounds), the solve
time and the outcome.

Run: ``python tests/benchmarks/bench_methods.py [--threads 1] [--repeat 3] [--device cpu]
[--lp-time-limit 120] [--no-lp]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# A sibling script, not a package: import it from its folder.
from bench_arachne import (
    N_NEG,
    N_POS,
    TARGET,
    peak_rss_mib,
    repair_set,
    start_phase,
    vgg_shaped,
)

# name -> (module with `repair`, spec class, spec fields)
METHODS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "arachne": ("arachne", "ArachneSpec", {}),
    "arachne-de": ("arachne_de", "ArachneDERepairSpec", {}),
    "arachne-de async": ("arachne_de", "ArachneDERepairSpec", {"update": "asynchronous"}),
    "finetune": ("finetune", "FinetuneRepairSpec", {}),
    "finetune localised": ("finetune", "FinetuneRepairSpec", {"weights": "localised"}),
    "neurecover": ("neurecover", "NeurecoverRepairSpec", {}),
    "provable": ("provable", "ProvableRepairSpec", {}),
    "provable linf": ("provable", "ProvableRepairSpec", {"norm": "linf"}),
}

# The GTSRB-shaped linear programs of provable (``--lp``): classes, features, positives,
# negatives of class LP_TARGET.
LP_SHAPE = (43, 512, 200, 60)
LP_TARGET = 3


def reference_for(model: Any, x: torch.Tensor, device: torch.device) -> Any:
    """neurecover's earlier model: the same network with its head moved back by a seeded
    perturbation (5% of the weights' spread), as if one training stretch earlier; its
    predictions come from the network with that head."""
    import copy

    from trainer_image.repair.history import Reference, TrainingHistory

    g = torch.Generator().manual_seed(11)
    earlier = copy.deepcopy(model)
    with torch.no_grad():
        w = earlier.head.weight
        w += 0.05 * w.std() * torch.randn(w.shape, generator=g).to(w.device)
        pred = earlier(x.to(device)).argmax(1).cpu().numpy()
    ref = Reference(1, earlier.head.weight.detach().cpu(), earlier.head.bias.detach().cpu(), pred)
    return TrainingHistory(epoch=5, kept=[1, 5], initial=True, load=lambda _e: ref)


def _child(name: str, phase: str, args: argparse.Namespace, q: Any) -> None:
    import importlib

    import orchestrator.spec as spec
    from trainer_image.repair.base import RepairTask, TargetSplit

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    module, kind, fields = METHODS[name]
    repair = importlib.import_module(f"trainer_image.repair.{module}").repair
    cfg = getattr(spec, kind)(**fields)
    model = vgg_shaped().to(device)
    x, y, pred = repair_set(model, device)
    split, labels = TargetSplit(y=y, pred=pred), torch.as_tensor(y)
    history = reference_for(model, x, device) if module == "neurecover" else None

    def features() -> torch.Tensor:
        with torch.no_grad():
            return model.penultimate(x.to(device))

    out: dict[str, Any] = {}
    times = []
    if phase == "full":
        before = start_phase(device)
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            feats = features()
            task = RepairTask(model.head, feats, labels, split, TARGET, 1, device, history)
            res = repair(task, cfg)
            times.append(time.perf_counter() - t0)
            del feats
    else:
        feats, head = features(), model.head
        del model
        before = start_phase(device)
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = repair(RepairTask(head, feats, labels, split, TARGET, 1, device, history), cfg)
            times.append(time.perf_counter() - t0)
    out["seconds"] = min(times)
    if device.type == "cuda":
        torch.cuda.synchronize()
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out.update(
        rss_peak_mib=peak_rss_mib(),
        rss_extra_mib=peak_rss_mib() - before,
        iterations=res.iterations,
        patch=len(res.patch),
        rr=res.rr,
        br=res.br,
        fitness=res.fitness,
        certified=res.details.get("certified"),
    )
    q.put(out)


def measure(name: str, phase: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(name, phase, args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every process")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; best counts")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    ap.add_argument(
        "--lp-time-limit", type=float, default=120.0, help="provable's limit per program [s]"
    )
    ap.add_argument("--no-lp", action="store_true", help="skip the GTSRB-shaped programs")
    args = ap.parse_args()

    full = {m: measure(m, "full", args) for m in args.methods}
    search = {m: measure(m, "search", args) for m in args.methods}

    print(f"# Repair methods, VGG16-shaped network (43 classes), {N_POS} positives +")
    print(
        f"# {N_NEG} negatives, each method's defaults, device={args.device},"
        f" threads={args.threads}, torch {torch.__version__}"
    )
    width = max(20, *(len(m) + 2 for m in args.methods))
    head = f"{'':40}" + "".join(f"{m:>{width}}" for m in args.methods)
    print(head)
    print("-" * len(head))
    base_full = full.get("arachne", {}).get("seconds")
    base_search = search.get("arachne", {}).get("seconds")

    def row(label: str, values: list[str]) -> None:
        print(f"{label:40}" + "".join(f"{v:>{width}}" for v in values))

    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    ms = args.methods
    row(
        f"time, full repair, best of {args.repeat} [s]",
        [num(full[m]["seconds"], ".3f") for m in ms],
    )
    if base_full:
        row("  x arachne", [num(full[m]["seconds"] / base_full, ".2f") + "x" for m in ms])
    row(
        f"time, search only, best of {args.repeat} [s]",
        [num(search[m]["seconds"], ".3f") for m in ms],
    )
    if base_search:
        row("  x arachne", [num(search[m]["seconds"] / base_search, ".2f") + "x" for m in ms])
    row("peak RSS, full repair [MiB]", [num(full[m]["rss_peak_mib"], ".1f") for m in ms])
    row("  of which above its inputs [MiB]", [num(full[m]["rss_extra_mib"], ".1f") for m in ms])
    row("peak RSS above inputs, search [MiB]", [num(search[m]["rss_extra_mib"], ".1f") for m in ms])
    if args.device.startswith("cuda"):
        row("CUDA max allocated, full [MiB]", [num(full[m]["cuda_peak_mib"], ".1f") for m in ms])
    row("iterations / generations / steps", [str(full[m]["iterations"]) for m in ms])
    row("weights in the patch", [str(full[m]["patch"]) for m in ms])
    row("RR [%]", [num(full[m]["rr"], ".1f") for m in ms])
    row("BR [%]", [num(full[m]["br"], ".1f") for m in ms])
    row("fitness (each method's own)", [num(full[m]["fitness"], ".3f") for m in ms])
    row("certified (provable)", [str(full[m]["certified"]) for m in ms])
    if not args.no_lp:
        lp_table(args.lp_time_limit)


def lp_problem(rows: str) -> Any:
    """A GTSRB-shaped margin problem: ReLU-like features, a random head; the positives are
    inputs the head classifies right, the negatives inputs of LP_TARGET it gets wrong."""
    import numpy as np

    from trainer_image.repair.provable_lp import MarginProblem

    classes, d, n_pos, n_neg = LP_SHAPE
    rng = np.random.default_rng(0)
    weight = 0.05 * rng.normal(size=(classes, d))
    bias = 0.1 * rng.normal(size=classes)
    x = np.abs(rng.normal(size=(n_pos + n_neg, d)))
    pred = (x @ weight.T + bias).argmax(1)
    x = np.concatenate([x[:n_pos], x[n_pos:][pred[n_pos:] != LP_TARGET][:n_neg]])
    pred = (x @ weight.T + bias).argmax(1)
    targets = np.concatenate([pred[:n_pos], np.full(len(x) - n_pos, LP_TARGET)])
    free = np.arange(classes) if rows == "all" else np.array([LP_TARGET])
    return MarginProblem(x, targets, weight, bias, free, 0.1)


def lp_table(time_limit: float) -> None:
    from trainer_image.repair.provable_lp import certify, solve

    classes, d, n_pos, n_neg = LP_SHAPE
    print()
    print(
        f"# provable's linear program, GTSRB-shaped: {classes} classes, {d} features,"
        f" {n_pos} positives + {n_neg} negatives, margin 0.1, time limit {time_limit:g} s"
    )
    cols = ["variables", "constraints", "nonzeros", "all_constraints", "rounds"]
    print(f"{'rows':8}{'norm':6}" + "".join(f"{c:>16}" for c in cols) + f"{'seconds':>10}  status")
    for rows in ("target", "all"):
        problem = lp_problem(rows)
        for norm in ("l1", "linf"):
            t0 = time.perf_counter()
            sol = solve(problem, norm, time_limit)  # type: ignore[arg-type]
            seconds = time.perf_counter() - t0
            weight = problem.weight.copy()
            weight[problem.rows] += sol.delta
            ok = certify(problem, problem.x @ weight.T + problem.bias)
            status = f"{sol.status}{' -> ' + sol.fallback if sol.fallback else ''}, certified {ok}"
            sizes = "".join(f"{sol.size[c]:>16,}" for c in cols)
            print(f"{rows:8}{norm:6}{sizes}{seconds:>10.2f}  {status}")


if __name__ == "__main__":
    main()
