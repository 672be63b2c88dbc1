"""Benchmark: aggregate 100,000 metrics records, read one file per record versus one
records.arrow per finished run, from a local folder and from S3.

Targets: every table for 100,000 records in <= 2 s from a local folder and
<= 5 s from S3 (moto in its own process, each request delayed 10 ms as in bench_s3.py).
One run prints both ways side by side (from the folder each twice, the faster pass in the
table: the first may read from disk rather than the page cache), checks that they give
the same tables, and times the figures and report as well. Where a second core is free the
aggregator uses it (analysis/forked.py); records.arrow is then also read with
EARLY_REPAIR_PROCESSES=1, one process, for comparison.

Tree: runs x 8 checkpoints x (base + 4 repaired classes) = 40 records per run (2,500 runs
for 100,000 records), each run with run.json, train/summary.json, _SUCCESS and the
records.arrow the trainer writes when it finishes. Every record has its predictions.npy
(360 test examples, 36 per class, as digits' test split; each model right on the easiest
k_c examples of class c, so that its metrics are exactly those the predictions give; a
repaired model differs from its checkpoint's on a few images of its class and one other) and
each run its test_labels.npy, unless ``--no-predictions`` (a tree as written before they
were stored: the per-example tests are then skipped). Files are written plainly (no fsync per
file as the trainer's atomic writes do): this measures the aggregator, not the disk. The
S3 server gets the same tree loaded straight into its backend (uploading 110,000 objects
over HTTP would take minutes and measure nothing of interest).

    python tests/benchmarks/bench_aggregate.py [--records 100000] [--latency-ms 10]
        [--no-s3] [--no-s3-per-file] [--keep DIR]

``--no-s3-per-file`` skips the slowest measurement (one request per record from S3: on
2 cores, minutes).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "support"))
sys.path.insert(0, str(TESTS.parent))

from early_repair_testing.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY  # noqa: E402

from orchestrator.analysis import aggregate as ag  # noqa: E402
from orchestrator.analysis import forked, output, report  # noqa: E402
from orchestrator.analysis import load as loading  # noqa: E402
from orchestrator.results import layout  # noqa: E402
from orchestrator.results import predictions as predicted  # noqa: E402
from orchestrator.results.records import (  # noqa: E402
    MetricsRecord,
    RunInfo,
    TrainSummary,
    dump_run_records,
)
from orchestrator.store.file import FileStore  # noqa: E402

LOCAL_TARGET_S = 2.0
S3_TARGET_S = 5.0
EPOCHS = (1, 5, 10, 15, 20, 25, 30, 12)  # the paper's checkpoints plus a convergence epoch
CLASSES = (3, 8, 9, 5)
SWEEP = "bench"
BUCKET = "bench"
ONE_PROCESS = "records.arrow, one process"
FRAMES = ("quality", "switch_points", "patterns", "effects", "methods", "headline", "problems")


N_PER_CLASS = 36


def generate(
    root: Path, n_records: int, seed: int = 0, predictions: bool = True
) -> tuple[int, int]:
    """The tree described above; returns (records, runs)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), N_PER_CLASS)
    labels_npy = predicted.dump(labels, 10)
    per_run = len(EPOCHS) * (1 + len(CLASSES))
    n_runs = -(-n_records // per_run)
    written = 0

    def put(key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def put_json(key: str, obj: dict) -> bytes:
        data = json.dumps(obj).encode()
        put(key, data)
        return data

    put_json(layout.sweep_json(SWEEP), {"name": SWEEP, "description": "benchmark tree"})
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
        files = {"run.json": put_json(layout.run_json(SWEEP, run), info.model_dump(mode="json"))}
        summary = TrainSummary(
            convergence_epoch=conv,
            checkpoint_epochs=epochs,
            epochs_trained=30,
            stopped_early=False,
            best_val_loss=0.2,
            seconds=60.0,
        )
        files["train/summary.json"] = put_json(
            layout.summary_json(SWEEP, run), summary.model_dump(mode="json")
        )
        records, keys, vectors = [], [], []
        # How easy each test example is for this run's models: a model right on k_c
        # examples of class c is right on the k_c easiest.
        rank = np.empty(len(labels), dtype=np.int64)
        for c in range(10):
            rank[labels == c] = rng.permutation(N_PER_CLASS)
        if predictions:
            put(layout.test_labels(SWEEP, run), labels_npy)
        for epoch in epochs:
            for cls in (None, *CLASSES):
                if written >= n_records:
                    break
                if cls is None:  # the checkpoint's model
                    base_k = rng.integers(N_PER_CLASS // 2, N_PER_CLASS + 1, size=10)
                    k = base_k
                else:  # a repair moves a few images: of its class, and of one other
                    k = base_k.copy()
                    k[cls] += rng.integers(-1, 4)
                    k[(cls + 1 + rng.integers(0, 9)) % 10] -= rng.integers(0, 3)
                    k = np.clip(k, 0, N_PER_CLASS)
                right = rank < k[labels]
                pred = np.where(right, labels, (labels + 1) % 10)
                acc = (k / N_PER_CLASS).tolist()
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
                    accuracy=float(right.mean()),
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
                ).model_dump(mode="json")
                key = (
                    layout.base_metrics(SWEEP, run, epoch)
                    if cls is None
                    else layout.repair_metrics(SWEEP, run, epoch, cls)
                )
                put_json(key, rec)
                if predictions:
                    put(layout.predictions(key), predicted.dump(pred, 10))
                vectors.append(pred if predictions else None)
                records.append(rec)
                keys.append(key[len(layout.run_prefix(SWEEP, run)) + 1 :])
                written += 1
        packed = dump_run_records(records, keys, files, vectors, labels if predictions else None)
        put(layout.records(SWEEP, run), packed)
        put(layout.success(SWEEP, run), b"")
    return written, n_runs


class Counted:
    """Counts the requests a store is asked for (reads and listings), also those of the
    child aggregation forks to read its share of a folder: the counts live in memory
    shared with it (one slot for this process, one for a child)."""

    def __init__(self) -> None:
        self._slots = np.frombuffer(mmap.mmap(-1, 16), dtype=np.int64)
        self._pid = os.getpid()

    @property
    def n(self) -> int:
        return int(self._slots.sum())

    @n.setter
    def n(self, value: int) -> None:
        self._slots[:] = [value, 0]

    def _add(self, k: int) -> None:
        self._slots[0 if os.getpid() == self._pid else 1] += k

    def wrap(self, store: Any) -> Any:
        list_, read_many = store.list, store.read_many

        def counted_list(prefix: str = "", delimiter: str | None = None) -> list[str]:
            self._add(1)
            return list_(prefix, delimiter=delimiter)

        def counted_read(
            keys: Iterable[str], max_bytes: Any = None
        ) -> dict[str, bytes | Exception]:
            keys = list(keys)
            self._add(len(keys))
            return read_many(keys, max_bytes)

        store.list, store.read_many = counted_list, counted_read
        return store


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def same_tables(a: ag.Aggregation, b: ag.Aggregation) -> None:
    pd.testing.assert_frame_equal(a.loaded.records, b.loaded.records, check_exact=True)
    for name in FRAMES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)


# The same tree in a moto server of its own process: loaded straight into its backend, then
# served with every request delayed (an emulated network round trip; a sleeping server
# costs no CPU, unlike a proxy hop).
_SERVER = """
import logging, os, sys, threading, time
from werkzeug.serving import make_server
from moto.core import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
from moto.s3.models import s3_backends
logging.getLogger("werkzeug").setLevel(logging.ERROR)
folder, bucket, latency = sys.argv[1], sys.argv[2], float(sys.argv[3])
backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
backend.create_bucket(bucket, "us-east-1")
n = 0
for dirpath, _, files in os.walk(folder):
    for name in files:
        path = os.path.join(dirpath, name)
        with open(path, "rb") as f:
            backend.put_object(bucket, os.path.relpath(path, folder), f.read())
        n += 1
app = DomainDispatcherApplication(create_backend_app)
def delayed(environ, start_response):
    time.sleep(latency)
    return app(environ, start_response)
server = make_server("127.0.0.1", 0, delayed, threaded=True, request_handler=MotoRequestHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", "http://127.0.0.1:%d" % server.server_port, n, flush=True)
sys.stdin.read()
server.shutdown()
"""


def s3_store(endpoint: str, counter: Counted) -> Any:
    from orchestrator.store.s3 import S3Store

    store = S3Store.from_uri(f"s3://{BUCKET}", endpoint_url=endpoint)
    # every HTTP request the client sends, retries included
    store.client.meta.events.register(
        "before-send.s3", lambda **_: counter.__setattr__("n", counter.n + 1)
    )
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--no-s3", action="store_true", help="local folder only")
    parser.add_argument("--no-s3-per-file", action="store_true", help="skip the slowest run")
    parser.add_argument("--keep", type=Path, help="write the tree and report here and keep them")
    parser.add_argument(
        "--no-predictions", action="store_true", help="a tree without per-example predictions"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="with --keep: use the tree a previous run left"
    )
    args = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
    )
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-aggregate-"))
    tree, out = work / "results", work / "report"
    reuse = args.reuse and args.keep is not None and (work / "tree.json").is_file()
    if not reuse:
        shutil.rmtree(tree, ignore_errors=True)
    try:
        if reuse:
            t_gen, (n, n_runs) = 0.0, tuple(json.loads((work / "tree.json").read_text()))
        else:
            t_gen, (n, n_runs) = timed(
                lambda: generate(tree, args.records, predictions=not args.no_predictions)
            )
            (work / "tree.json").write_text(json.dumps([n, n_runs]))
        print(
            f"cores {os.cpu_count()} ({'a second process' if forked.may_fork() else 'one process'}"
            f" for aggregation); {n:,} records in {n_runs:,} runs (40 per run), each"
            f" finished run with its records.arrow; generated in {t_gen:.1f} s",
            flush=True,
        )
        rows: list[tuple[str, str, float, int]] = []

        def measure(where: str, how: str, store: Any, counter: Counted, packed: bool) -> Any:
            """One ``aggregate`` call, its reading part timed on the way."""
            counter.n = 0
            t: dict[str, float] = {}

            def timed_load(*a: Any, **kw: Any) -> Any:
                t["load"], out = timed(lambda: loading.load(*a, **kw))
                return out

            ag.load = timed_load  # what aggregate() calls
            try:
                t_all, agg = timed(lambda: ag.aggregate(store, packed=packed))
            finally:
                ag.load = loading.load
            t_load = t["load"]
            assert len(agg.loaded.records) == n, "records lost"
            rows.append((where, how, t_load, t_all, counter.n))
            print(
                f"  {where:<26} {how:<26} list+read+validate {t_load:7.2f} s   all tables"
                f" {t_all:7.2f} s   {counter.n:>7,} requests",
                flush=True,
            )
            return agg

        # Each way twice from the folder: the first pass may find the files still on disk
        # rather than in the page cache (it measures the disk then); the table keeps the
        # faster pass, and both are printed. records.arrow first, while this process is as
        # fresh as `early-repair aggregate`'s: after the passes over 200,000 single files
        # its heap is larger and scattered, and a forked child's copy-on-write costs more.
        # Neither pass holds the other's tables (a gigabyte): a fork copies the page tables
        # of everything held, and `aggregate` holds nothing when it starts.
        local = Counted()
        store = local.wrap(FileStore(tree))
        for _ in range(2):
            packed = None
            packed = measure("local folder", "records.arrow per run", store, local, True)
        # The same in one process (no second core used): what the second one buys.
        os.environ[forked.PROCESSES_ENV] = "1"
        try:
            for _ in range(2):
                alone = measure("local folder", ONE_PROCESS, store, local, True)
        finally:
            del os.environ[forked.PROCESSES_ENV]
        same_tables(packed, alone)
        for _ in range(2):
            per_file = measure("local folder", "one file per record", store, local, False)
        same_tables(per_file, packed)

        if not args.no_s3:
            proc = subprocess.Popen(
                [sys.executable, "-c", _SERVER, str(tree), BUCKET, str(args.latency_ms / 1000)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stdout is not None
                t_up, line = timed(proc.stdout.readline)
                ready, endpoint, count = [*line.split(), "", "", ""][:3]
                assert ready == "ready", "the moto server did not start"
                print(f"  (moto server: {int(count):,} objects loaded in {t_up:.1f} s)")
                where = f"S3, {args.latency_ms:g} ms/request"
                remote = Counted()
                s3 = s3_store(endpoint, remote)
                s3_packed = measure(where, "records.arrow per run", s3, remote, True)
                same_tables(packed, s3_packed)
                # The floor on this machine: as many bare GETs of empty objects (_SUCCESS),
                # and the listing that finds the runs, each on its own.
                tiny = [layout.success(SWEEP, r) for r in packed.loaded.runs["run"]]
                t_floor, _ = timed(lambda: s3.read_many(tiny))
                remote.n = 0
                listing = layout.RUN_FILES_DELIMITER
                t_list, _ = timed(lambda: s3.list(f"{SWEEP}/", delimiter=listing))
                print(
                    f"  (floor: {len(tiny):,} GETs of empty objects alone take {t_floor:.2f} s"
                    f" here, {len(tiny) / t_floor:,.0f} requests/s; listing the sweep alone"
                    f" {t_list:.2f} s in {remote.n} requests)",
                    flush=True,
                )
                if not args.no_s3_per_file:
                    s3_plain = measure(where, "one file per record", s3, remote, False)
                    same_tables(s3_plain, s3_packed)
            finally:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=60)

        t_tables, _ = timed(lambda: output.write_tables(packed, out))
        t_report, _ = timed(lambda: report.write_report(packed, out))
        n_figs = len(list((out / "figures").glob("*.png")))
        print()
        print(
            f"{'':<28}{'one file per record':>22}{'records.arrow per run':>24}"
            f"{'(one process)':>16}{'target':>9}"
        )
        for where, target in (
            ("local folder", LOCAL_TARGET_S),
            (f"S3, {args.latency_ms:g} ms/request", S3_TARGET_S),
        ):
            got: dict[str, tuple[float, int]] = {}
            for w, how, _, t, req in rows:
                if w == where and t <= got.get(how, (float("inf"), 0))[0]:
                    got[how] = (t, req)
            if not got:
                continue
            cells = []
            for how in ("one file per record", "records.arrow per run"):
                t, req = got.get(how, (float("nan"), 0))
                cells.append(f"{t:8.2f} s ({req:>7,} req)" if req else f"{'not run':>22}")
            one = got.get(ONE_PROCESS, (float("nan"), 0))[0]
            cells.append(f"{one:8.2f} s" if one == one else f"{'':>10}")
            packed_t = got.get("records.arrow per run", (float("nan"), 0))[0]
            verdict = "met" if packed_t <= target else "MISSED"
            print(
                f"{where:<28}{cells[0]:>22}{cells[1]:>24}{cells[2]:>16}{target:>7.1f} s  {verdict}"
            )
        print(
            f"tables identical both ways: yes; write CSV + parquet {t_tables:.2f} s;"
            f" figures ({n_figs}) + report {t_report:.2f} s"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
