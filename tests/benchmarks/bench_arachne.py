"""Benchmark: one Arachne repair of a VGG16-shaped network, vectorised vs the paper's way.

Why: the claim is that evaluating the swarm from cached penultimate activations
makes repair orders of magnitude cheaper than re-running the whole network for every
particle (what the paper's code did), with the same fitness values. This measures both.

Network: torchvision VGG16 ``features`` at 32x32x3 -> Flatten -> Linear(512, 4096) -> ReLU
-> Linear(4096, 43), random weights (seeded). Repair set: 260 random N(0, 1) images; the
network's own predictions label 200 of them (positives), 60 are labelled with class 20,
which it never predicts (negatives). Paper defaults otherwise (ArachneSpec()).

- vectorised: a full repair as the trainer does it - one forward pass for the penultimate
  activations, then ``trainer_image.repair.arachne.repair`` (all particles at once).
- reference: ``tests/arachne_reference.py`` - copy the model, set the particle's weights,
  run the whole network on all 260 inputs, per particle. Too slow to run whole, so it is
  timed on ``--ref-evals`` particles and EXTRAPOLATED to the number of fitness evaluations
  the vectorised search actually made (particles x (iterations + 1)); its fault
  localisation is not counted (which favours the reference).

Memory: peak resident set size, ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, each method
in a fresh process; its peak mark is reset (Linux ``/proc/self/clear_refs``) once the process
has built its inputs (model and images; for "search" only the head and cached features), so
the peak is that of the measured phase, and "above its inputs" subtracts the RSS at the
start of the phase. tracemalloc is not used: it does not see torch's tensor allocations.
On CUDA also ``torch.cuda.max_memory_allocated``.

Run: ``python tests/benchmarks/bench_arachne.py [--threads 1] [--ref-evals 3] [--device cpu]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TESTS = Path(__file__).resolve().parents[1]
N_POS, N_NEG, CLASSES, TARGET = 200, 60, 43, 20
SEED = 0


def vgg_shaped() -> Any:
    import torchvision
    from torch import nn

    from trainer_image.models import Repairable

    torch.manual_seed(SEED)
    body = nn.Sequential(
        torchvision.models.vgg16(weights=None).features,
        nn.Flatten(),
        nn.Linear(512, 4096),
        nn.ReLU(),
    )
    return Repairable(body, nn.Linear(4096, CLASSES)).eval()


def repair_set(model: Any, device: torch.device) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Images, labels and predictions: 200 positives then 60 negatives of TARGET."""
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(N_POS + N_NEG, 3, 32, 32, generator=g)
    with torch.no_grad():
        pred = torch.cat([model(b.to(device)).argmax(1).cpu() for b in x.split(64)]).numpy()
    if (pred == TARGET).any():
        raise SystemExit(f"the random network predicts class {TARGET}; change SEED")
    y = pred.copy()
    y[N_POS:] = TARGET
    return x, y, pred


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def start_phase(device: torch.device) -> float:
    """Reset the peak-RSS mark (Linux: ``5 > /proc/self/clear_refs``); return RSS now."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        print("warning: cannot reset the peak RSS mark; peaks include setup", file=sys.stderr)
    return rss_mib()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child(kind: str, threads: int, device_name: str, ref_evals: int, q: Any) -> None:
    sys.path.insert(0, str(TESTS / "support"))
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    from early_repair_testing.arachne_reference import reference_scores

    from orchestrator.spec import ArachneSpec
    from trainer_image.repair.arachne import repair
    from trainer_image.repair.base import RepairTask, TargetSplit
    from trainer_image.repair.selection import localise

    model = vgg_shaped().to(device)
    x, y, pred = repair_set(model, device)
    split = TargetSplit(y=y, pred=pred)
    cfg = ArachneSpec()
    labels = torch.as_tensor(y)
    out: dict[str, Any] = {}

    def features() -> torch.Tensor:
        # One pass over the whole repair set, as the trainer's forward_split does.
        with torch.no_grad():
            return model.penultimate(x.to(device))

    if kind == "vectorised":
        # Setup ends with the model and the images; the phase is features + search.
        before = start_phase(device)
        t0 = time.perf_counter()
        feats = features()
        out["features_s"] = time.perf_counter() - t0
        res = repair(RepairTask(model.head, feats, labels, split, TARGET, 1, device), cfg)
        out["seconds"] = time.perf_counter() - t0
    elif kind == "search":
        # Setup ends with the cached features and the head only; the phase is the search.
        feats, head = features(), model.head
        del model
        before = start_phase(device)
        t0 = time.perf_counter()
        res = repair(RepairTask(head, feats, labels, split, TARGET, 1, device), cfg)
        out["seconds"] = time.perf_counter() - t0
    else:
        neg, pos = torch.as_tensor(split.negatives(TARGET)), torch.as_tensor(split.positives())
        w = model.head.weight.detach()
        loc = localise(w, model.head.bias, features()[neg], TARGET, cfg.grad_factor)
        g = torch.Generator().manual_seed(SEED)
        init = w.double().cpu()[torch.as_tensor(loc.rows), torch.as_tensor(loc.cols)]
        positions = init + float(w.std()) * torch.randn(ref_evals, len(loc.rows), generator=g)
        xd = x.to(device)
        before = start_phase(device)
        t0 = time.perf_counter()
        reference_scores(
            model,
            xd[neg],
            TARGET,
            xd[pos],
            labels[pos].to(device),
            loc.rows,
            loc.cols,
            positions.to(device),
            dtype=torch.float32,
        )
        out["seconds"] = time.perf_counter() - t0
        out["per_eval_s"] = out["seconds"] / ref_evals
    if kind != "reference":
        out.update(
            iterations=res.iterations,
            evaluations=cfg.particles * (res.iterations + 1),
            localised=len(res.patch),
            rr=res.rr,
            br=res.br,
            fitness=res.fitness,
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["rss_before_mib"] = before
    out["rss_peak_mib"] = peak_rss_mib()
    out["rss_extra_mib"] = out["rss_peak_mib"] - before
    q.put(out)


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(kind, args.threads, args.device, args.ref_evals, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every process")
    ap.add_argument("--ref-evals", type=int, default=3, help="reference particles to time")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()

    vec = measure("vectorised", args)
    search = measure("search", args)
    ref = measure("reference", args)
    n_eval = vec["evaluations"]
    ref_total = ref["per_eval_s"] * n_eval
    paper_total = ref["per_eval_s"] * 100 * 51  # the paper's maximum: 50 iterations + initial

    print(f"# Arachne repair, VGG16-shaped network (43 classes), {N_POS} positives +")
    print(
        f"# {N_NEG} negatives, ArachneSpec() defaults, device={args.device}, "
        f"threads={args.threads}, torch {torch.__version__}"
    )
    print(
        f"vectorised search: {vec['iterations']} iterations = {n_eval} fitness evaluations,"
        f" {vec['localised']} weights localised, RR {vec['rr']:.1f}%, BR {vec['br']:.1f}%,"
        f" fitness {vec['fitness']:.3f}"
    )
    print(
        f"reference: {ref['per_eval_s']:.3f} s per fitness evaluation, measured on"
        f" {args.ref_evals} particles, EXTRAPOLATED to {n_eval} evaluations"
    )
    print()
    head = f"{'':38}{'vectorised':>14}{'reference':>16}{'ratio':>12}"
    print(head)
    print("-" * len(head))
    rows = [
        ("time, full repair [s]", vec["seconds"], ref_total),
        ("time, search only [s]", search["seconds"], ref_total),
    ]
    if n_eval != 100 * 51:
        rows.append(("time at the paper's max 5100 evals [s]", vec["seconds"], paper_total))
    for name, v, r in rows:
        print(f"{name:38}{v:14.3f}{r:16.1f}{r / v:11.0f}x")
    mem = [
        ("peak RSS during full repair [MiB]", vec["rss_peak_mib"], ref["rss_peak_mib"]),
        ("  of which above its inputs [MiB]", vec["rss_extra_mib"], ref["rss_extra_mib"]),
        ("peak RSS above inputs, search [MiB]", search["rss_extra_mib"], ref["rss_extra_mib"]),
    ]
    if "cuda_peak_mib" in vec:
        mem.append(("CUDA max allocated [MiB]", vec["cuda_peak_mib"], ref["cuda_peak_mib"]))
    for name, v, r in mem:
        ratio = f"{r / v:11.1f}x" if v > 0 else f"{'n/a':>12}"
        print(f"{name:38}{v:14.1f}{r:16.1f}{ratio}")
    print(
        f"\n(features forward pass inside the vectorised full repair: {vec['features_s']:.3f} s;"
        " reference time is extrapolated, its memory is measured)"
    )


if __name__ == "__main__":
    main()
