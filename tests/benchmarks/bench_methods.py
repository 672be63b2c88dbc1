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

Run: ``python tests/benchmarks/bench_methods.py [--threads 1] [--repeat 3] [--device cpu]``
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
}


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
            res = repair(RepairTask(model.head, feats, labels, split, TARGET, 1, device), cfg)
            times.append(time.perf_counter() - t0)
            del feats
    else:
        feats, head = features(), model.head
        del model
        before = start_phase(device)
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = repair(RepairTask(head, feats, labels, split, TARGET, 1, device), cfg)
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


if __name__ == "__main__":
    main()
