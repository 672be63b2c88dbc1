"""Benchmark: the per-epoch cost of dense online repair relative to the training epoch.

Why: repairing at *every* epoch while the model trains (``training.repair_every: 1``) is
only worth offering if it costs a fraction of the epoch it follows. Target (issue 15): the
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
defaults (``RepairSpec()``: 100 particles, at most 50 iterations, patience 10); the
"further method" is Arachne's textbook variant standing in for a second method.

Measured, one process, side by side: the last of ``--epochs`` training epochs (SGD steps
plus the validation pass, i.e. ``train``'s own epoch, whose validation pass also yields the
validation features as it does with ``repair_every``), and ``repair_epoch`` for 3 classes x
1 method, 4 classes x 1 method and 3 classes x 2 methods, given those validation features
(so "features" is the repair and test splits' forward passes); the marginal cost of one
more repair is that repair's own measured time (search + both evaluations).

Run: ``python tests/benchmarks/bench_online.py [--threads 1] [--scale 0.0625]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from orchestrator.spec import RepairSpec, TrainingSpec
from trainer_image.data import Split, Splits
from trainer_image.models import Repairable
from trainer_image.online import Method, repair_epoch
from trainer_image.repair.arachne import repair
from trainer_image.train import forward_split, make_deterministic, train
from trainer_image.zoo import vgg16

GTSRB = {"train": 21957, "val": 5489, "repair": 11763, "test": 12630}  # 39,209 x .7 x .8 ...
CLASSES = 43
TARGETS = [20, 27, 30]  # the paper's GTSRB classes
EXTRA_CLASS = 1


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


def relabel_repair_set(model: Repairable, splits: Splits, negatives: int) -> Splits:
    """Repair labels = the model's predictions, but ``negatives`` inputs per target class."""
    logits, _ = forward_split(model, splits.repair, torch.device("cpu"))
    pred = logits.argmax(1).numpy()
    y = pred.copy()
    free = np.ones(len(y), dtype=bool)
    for cls in [*TARGETS, EXTRA_CLASS]:
        idx = np.flatnonzero(free & (pred != cls))[:negatives]
        y[idx] = cls
        free[idx] = False
    return replace(splits, repair=Split(splits.repair.x, y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--scale", type=float, default=1 / 16, help="fraction of GTSRB's splits")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs (the last is timed)")
    ap.add_argument("--negatives", type=int, default=15, help="negatives per target class")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()

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

    def keep_val_features(_epoch: int, _model: object, feats: torch.Tensor) -> dict:
        val_features.append(feats)
        return {}

    result = train(model, splits, cfg, 0, cpu, on_repair=keep_val_features)
    epoch_s = result.history[-1]["seconds"]
    splits = relabel_repair_set(model, splits, args.negatives)

    v1 = RepairSpec()
    methods = [
        Method("arachne", repair, v1, v1.seed),
        Method("arachne-textbook", repair, RepairSpec(variant="textbook"), v1.seed),
    ]
    configs = {
        "3 classes x 1 method": (methods[:1], TARGETS),
        "4 classes x 1 method": (methods[:1], [*TARGETS, EXTRA_CLASS]),
        "3 classes x 2 methods": (methods, TARGETS),
    }
    runs = {}
    for name, (ms, classes) in configs.items():
        t0 = time.perf_counter()
        runs[name] = (
            repair_epoch(
                model,
                splits,
                args.epochs,
                ms,
                classes,
                run_seed=0,
                device=cpu,
                val_features=val_features[-1],
            ),
            time.perf_counter() - t0,
        )

    sizes = {k: len(getattr(splits, k)) for k in GTSRB}
    print("# Online repair per epoch vs the training epoch: VGG16 (trainer_image.zoo, 43")
    print(
        f"# classes, 32x32), GTSRB splits x {args.scale:g} = {sizes}, batch {args.batch_size},"
        f" threads={args.threads}, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"# training epoch {args.epochs} of {args.epochs} (SGD + validation): {epoch_s:.2f} s;"
        f" Arachne RepairSpec() defaults; {args.negatives} negatives per class"
    )
    print()
    head = (
        f"{'':24}{'total [s]':>10}{'x epoch':>9}{'features':>10}{'base':>7}{'repairs':>9}"
        f"{'per repair [s]':>16}"
    )
    print(head)
    print("-" * len(head))
    for name, (online, total) in runs.items():
        per = [r.seconds for r in online.repairs.values()]
        print(
            f"{name:24}{total:10.2f}{total / epoch_s:8.3f}x{online.seconds['features']:10.2f}"
            f"{online.seconds['base']:7.2f}{online.seconds['repairs']:9.2f}"
            f"{statistics.mean(per):10.2f} (max {max(per):.2f})"
        )
    more_class, _ = runs["4 classes x 1 method"]
    more_method, _ = runs["3 classes x 2 methods"]
    extra_class = more_class.repairs[("arachne", EXTRA_CLASS)].seconds
    extra_method = [more_method.repairs[("arachne-textbook", c)].seconds for c in TARGETS]
    print()
    print(f"{'marginal cost':40}{'[s]':>8}{'% of epoch':>12}{'target':>9}")
    rows = [
        ("one more class (class 1, arachne)", extra_class),
        ("one more method, per class (textbook)", max(extra_method)),
        ("one more method, all 3 classes", sum(extra_method)),
    ]
    for name, s in rows:
        print(f"{name:40}{s:8.2f}{100 * s / epoch_s:11.1f}%{'<= 5%':>9}")
    headline = runs["3 classes x 1 method"][1] / epoch_s
    print(f"\nheadline: online repair (features + 3 classes x 1 method) = {headline:.3f}x epoch")
    counts = {
        c: (int(r.result.n_neg), len(r.result.patch), r.result.iterations)
        for (m, c), r in more_class.repairs.items()
    }
    print(f"(per class: negatives, localised weights, PSO iterations = {counts})")


if __name__ == "__main__":
    main()
