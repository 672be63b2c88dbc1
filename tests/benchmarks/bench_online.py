"""Benchmark: the per-epoch cost of dense online repair relative to the training epoch.

Why: repairing at *every* epoch while the model trains (``training.repair_every: 1``) is
only worth offering if it costs a fraction of the epoch it follows. Target: the
online repair of one epoch - features of the repair, validation and test splits once, then
3 classes x 1 method with their test and validation evaluations - costs <= 0.5x the
training epoch, and each further class or method adds <= 5% of the epoch.

Network: the project's own VGG16 (``trainer_image.zoo.vgg16``, random init: features ->
Flatten -> Linear(512, 4096) -> ReLU -> Linear(4096, 43)) on 32x32x3 uint8 images.
Splits: GTSRB's sizes (PAPER.md: 39,209 official training images -> 70% train, of which
20% validation, 30% repair; 12,630 test) times ``--scale``, so that an epoch fits 2 CPU
cores; their ratios - which fix the ratio measured here - are GTSRB's. Images and the
training labels are random (the cost of an epoch does not depend on what it learns). After
the measured training epochs the repair set is labelled with the network's own predictions,
except ``--negatives`` inputs per target class relabelled to that class, so every target
class has negatives to repair and the 200 positives Arachne samples exist (the cost of a
repair depends on these counts, not on the labels' meaning). Arachne with the paper's
defaults (``ArachneSpec()``: 100 particles, at most 50 iterations, patience 10); the
"further method" is Arachne's textbook variant standing in for a second method.

Measured, one process, side by side: the last of ``--epochs`` training epochs (SGD steps
plus the validation pass, i.e. ``train``'s own epoch, whose validation pass also yields the
validation features as it does with ``repair_every``), and ``repair_epoch`` given those
features (so its own forward passes are the repair and test splits') for no class (features
and base metrics only), 3 classes x 1 method, 4 classes x 1 method and 3 classes x 2
methods; a marginal cost is the difference of two of these. Times are this process's CPU
time (``time.process_time``: with one thread, what the wall clock shows on an idle machine,
and not inflated by other processes sharing the cores) and, for reference, wall time.

Run: ``python tests/benchmarks/bench_online.py [--threads 1] [--scale 0.0625]``
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from orchestrator.spec import ArachneSpec, TrainingSpec
from trainer_image.data import Split, Splits
from trainer_image.models import Repairable
from trainer_image.online import Method, OnlineEpoch, repair_epoch
from trainer_image.repair.arachne import repair
from trainer_image.train import forward_split, make_deterministic, train
from trainer_image.zoo import vgg16

GTSRB = {"train": 21957, "val": 5489, "repair": 11763, "test": 12630}  # 39,209 x .7 x .8 ...
CLASSES = 43
PAPER_CLASSES = [20, 27, 30]  # GTSRB classes the paper repaired


def splits_of(scale: float, seed: int) -> Splits:
    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        return Split(x, rng.integers(0, CLASSES, size=n).astype(np.int64))

    sizes = {k: max(1, round(v * scale)) for k, v in GTSRB.items()}
    return Splits(
        **{k: split(n) for k, n in sizes.items()},
        num_classes=CLASSES,
        meta={"image_shape": [3, 32, 32]},
    )


def relabel_repair_set(model: Repairable, splits: Splits, negatives: int) -> tuple[Splits, list]:
    """Repair labels = the model's predictions, except ``negatives`` inputs per target class
    (4 classes: the paper's three, then the next ones, skipping a class the model predicts
    for nearly everything - it could have no negatives)."""
    logits, _ = forward_split(model, splits.repair, torch.device("cpu"))
    pred = logits.argmax(1).numpy()
    y = pred.copy()
    free = np.ones(len(y), dtype=bool)
    targets = []
    for cls in [*PAPER_CLASSES, *range(CLASSES)]:
        idx = np.flatnonzero(free & (pred != cls))[:negatives]
        if cls in targets or len(idx) < negatives:
            continue
        y[idx] = cls
        free[idx] = False
        targets.append(cls)
        if len(targets) == 4:
            break
    return replace(splits, repair=Split(splits.repair.x, y)), targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--scale", type=float, default=1 / 16, help="fraction of GTSRB's splits")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs (the last is timed)")
    ap.add_argument("--negatives", type=int, default=15, help="negatives per target class")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be >= 2: the first epoch is a warm-up")

    cpu = torch.device("cpu")
    make_deterministic(0, cpu, args.threads)
    splits = splits_of(args.scale, 0)
    model = vgg16(3, CLASSES, 32, pretrained=False)
    cfg = TrainingSpec(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        early_stopping=False,
        device="cpu",
        num_threads=args.threads,
        repair_every=args.epochs,  # the last epoch's validation pass yields its features
    )
    val_features: list[torch.Tensor] = []
    cpu_marks: list[float] = []

    def keep_val_features(_epoch: int, _model: object, feats: torch.Tensor) -> dict:
        val_features.append(feats)
        return {}

    result = train(
        model,
        splits,
        cfg,
        0,
        cpu,
        on_epoch=lambda _row: cpu_marks.append(time.process_time()),
        on_repair=keep_val_features,
    )
    epoch = Timing(result.history[-1]["seconds"], cpu_marks[-1] - cpu_marks[-2])
    splits, targets = relabel_repair_set(model, splits, args.negatives)
    three, extra = targets[:3], targets[3]

    v1 = ArachneSpec()
    methods = [
        Method("arachne", repair, v1, v1.seed),
        Method("arachne-textbook", repair, ArachneSpec(variant="textbook"), v1.seed),
    ]
    configs = {
        "features + base only": (methods[:1], []),
        "3 classes x 1 method": (methods[:1], three),
        "4 classes x 1 method": (methods[:1], [*three, extra]),
        "3 classes x 2 methods": (methods, three),
    }
    runs: dict[str, tuple[OnlineEpoch, Timing]] = {}
    for name, (ms, classes) in configs.items():
        t0, c0 = time.perf_counter(), time.process_time()
        online = repair_epoch(
            model,
            splits,
            args.epochs,
            ms,
            classes,
            run_seed=0,
            device=cpu,
            val_features=val_features[-1],
        )
        runs[name] = (online, Timing(time.perf_counter() - t0, time.process_time() - c0))

    sizes = {k: len(getattr(splits, k)) for k in GTSRB}
    print("# Online repair per epoch vs the training epoch: VGG16 (trainer_image.zoo, 43")
    print(f"# classes, 32x32), GTSRB splits x {args.scale:g} = {sizes}, batch {args.batch_size},")
    print(
        f"# threads={args.threads}, torch {torch.__version__}, load average"
        f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; Arachne ArachneSpec() defaults,"
        f" {args.negatives} negatives per class, classes {three} (+{extra})"
    )
    print(
        "# CPU = this process's CPU time (all its threads), robust to other processes' load;"
        " wall = elapsed"
    )
    print()
    head = f"{'':34}{'CPU [s]':>9}{'x epoch':>9}{'wall [s]':>10}{'x epoch':>9}"
    print(head)
    print("-" * len(head))
    print(f"{f'training epoch {args.epochs} (SGD + validation)':34}{epoch.row(epoch)}")
    for name, (_online, t) in runs.items():
        print(f"{'online repair: ' + name:34}{t.row(epoch)}")
    headline = runs["3 classes x 1 method"][1]
    print()
    print(f"{'marginal cost (CPU)':40}{'[s]':>8}{'% of epoch':>12}{'target':>9}")
    rows = [
        ("one more class", runs["4 classes x 1 method"][1].cpu - headline.cpu),
        ("one more method (on 3 classes)", runs["3 classes x 2 methods"][1].cpu - headline.cpu),
    ]
    rows.append(("one more method, per class", rows[1][1] / 3))
    for name, s in rows:
        print(f"{name:40}{s:8.2f}{100 * s / epoch.cpu:11.1f}%{'<= 5%':>9}")
    print(
        f"\nheadline: features + 3 classes x 1 method = {headline.cpu / epoch.cpu:.3f}x the epoch"
        f" (CPU), {headline.wall / epoch.wall:.3f}x (wall); target <= 0.5x"
    )
    online = runs["4 classes x 1 method"][0]
    counts = {
        c: (int(r.result.n_neg), len(r.result.patch), r.result.iterations, round(r.seconds, 2))
        for (_m, c), r in online.repairs.items()
    }
    print(f"(per class: negatives, localised weights, PSO iterations, wall s = {counts})")


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float

    def row(self, epoch: Timing) -> str:
        return (
            f"{self.cpu:9.2f}{self.cpu / epoch.cpu:8.3f}x{self.wall:10.2f}"
            f"{self.wall / epoch.wall:8.3f}x"
        )


if __name__ == "__main__":
    main()
