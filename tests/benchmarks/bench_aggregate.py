"""Benchmark: aggregate 10,000 metrics records from a generated local results tree.

Target (issue 4): reading, validating and computing every table for 10,000 records takes a
few seconds on 2 cores. One run prints the measured times, records/s and the ratio to the
target side by side; the full CLI (tables + capped figures + report) is timed as well.

    python tests/benchmarks/bench_aggregate.py [--records 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from orchestrator.analysis import report, results  # noqa: E402
from orchestrator.analysis import tables as ag  # noqa: E402
from orchestrator.results.records import MetricsRecord, RunInfo, TrainSummary  # noqa: E402
from orchestrator.store.file import FileStore  # noqa: E402

TARGET_S = 5.0  # "a few seconds on 2 cores"
EPOCHS = (1, 5, 10, 15, 20, 25, 30, 12)  # the paper's checkpoints plus a convergence epoch
CLASSES = (3, 8, 9, 5)
SWEEP = "bench"


def generate(root: Path, n_records: int, seed: int = 0) -> int:
    """A sweep of runs x 8 checkpoints x (base + 4 repaired classes) = 40 records per run.

    Files are written plainly (no fsync per file as the trainer's atomic writes do): the
    benchmark measures the aggregator, not how fast a disk can sync 10,000 files.
    """
    rng = np.random.default_rng(seed)
    per_run = len(EPOCHS) * (1 + len(CLASSES))
    n_runs = -(-n_records // per_run)
    written = 0

    def put(key: str, obj: dict) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    put(results.sweep_json(SWEEP), {"name": SWEEP, "description": "benchmark tree"})
    for i in range(n_runs):
        dataset, model, s = ("digits", "gtsrb")[i % 2], f"m{(i // 2) % 5}", 1000 + i
        run = f"{dataset}-{model}-s{s}"
        conv = 12 if i % 3 else 20
        epochs = sorted(EPOCHS)
        info = RunInfo(
            run={"repair_classes": list(CLASSES), "seed": s},
            versions={"python": "3.11"},
            device="cpu",
            hostname="bench",
            started="2024-01-01T00:00:00Z",
        )
        put(results.run_json(SWEEP, run), info.model_dump(mode="json"))
        summary = TrainSummary(
            convergence_epoch=conv,
            checkpoint_epochs=epochs,
            epochs_trained=30,
            stopped_early=False,
            best_val_loss=0.2,
            seconds=60.0,
        )
        put(results.summary_json(SWEEP, run), summary.model_dump(mode="json"))
        for epoch in epochs:
            for cls in (None, *CLASSES):
                if written >= n_records:
                    break
                acc = rng.uniform(0.5, 1.0, size=10).round(4).tolist()
                rec = MetricsRecord(
                    sweep=SWEEP,
                    run=run,
                    dataset=dataset,
                    model=model,
                    seed=s,
                    epoch=epoch,
                    convergence_epoch=conv,
                    kind="base" if cls is None else "repaired",
                    repair_class=cls,
                    method=None if cls is None else "arachne",
                    accuracy=float(np.mean(acc)),
                    per_class_accuracy=acc,
                    f1_macro=0.8,
                    recall_macro=0.8,
                    auc_macro=0.95,
                    rr=None if cls is None else 40.0,
                    br=None if cls is None else 2.0,
                    n_neg=None if cls is None else 12,
                    n_pos=None if cls is None else 200,
                    fitness=None if cls is None else 3.1,
                    n_patched=None if cls is None else 5,
                    n_intact=None if cls is None else 196,
                    iterations=None if cls is None else 20,
                    seconds=None if cls is None else 1.5,
                )
                key = (
                    results.base_metrics(SWEEP, run, epoch)
                    if cls is None
                    else results.repair_metrics(SWEEP, run, epoch, cls)
                )
                put(key, rec.model_dump(mode="json"))
                written += 1
        (root / results.success(SWEEP, run)).write_bytes(b"")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="write the tree and report here and keep them")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-aggregate-"))
    tree, out = work / "results", work / "report"
    shutil.rmtree(tree, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        n = generate(tree, args.records)
        t_gen = time.perf_counter() - t0

        store = FileStore(tree)
        t0 = time.perf_counter()
        loaded = ag.load(store)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        agg = ag.aggregate(store)
        t_agg = time.perf_counter() - t0  # list + bulk read + validate + every table
        assert len(agg.loaded.records) == n == len(loaded.records), "records lost"
        t0 = time.perf_counter()
        ag.write_tables(agg, out)
        t_tables = time.perf_counter() - t0
        t0 = time.perf_counter()
        report.write_report(agg, out)
        t_report = time.perf_counter() - t0
        n_figs = len(list((out / "figures").glob("*.png")))

        rate = n / t_agg
        print(f"records                         {n:>10,}  (generated in {t_gen:.1f} s)")
        print(f"list + read + validate          {t_load:>10.2f} s")
        print(f"aggregate (load + all tables)   {t_agg:>10.2f} s   {rate:>9,.0f} records/s")
        print(f"  target                        {TARGET_S:>10.2f} s   ratio {t_agg / TARGET_S:.2f}")
        print(f"write CSV + parquet             {t_tables:>10.2f} s")
        print(f"figures ({n_figs:>3}) + report        {t_report:>10.2f} s")
        total = t_agg + t_tables + t_report
        print(f"whole command (excl. start-up)  {total:>10.2f} s")
        pairs = len(agg.switch_points.drop_duplicates(["run", "repair_class"]))
        print(
            f"(run, class) pairs {pairs}, switch points {len(agg.switch_points)},"
            f" quality rows {len(agg.quality)}"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
