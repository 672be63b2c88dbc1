"""Benchmark: reading 10,000 small records from an S3 server, concurrently versus one by one.

Why: the aggregator reads every metrics.json of a sweep. One GET after another is bounded
by round trips; ``S3Store.read_many`` (a thread pool around one boto3 client) should be
bounded by bandwidth and CPU instead. The target is at least 5x on 2 cores.

Setup: a moto S3 server in its own process (in this one it would share the GIL with the
client being measured), ``--records`` (default 10,000) metrics-sized JSON records in the
sweep layout (runs x epochs x base/repaired), written concurrently and not timed.

Measured, both ways in the same run, on the same keys:
- sequential: ``for key in keys: client.get_object(...)["Body"].read()`` with a plain
  boto3 client;
- concurrent: ``S3Store.read_many(keys)`` with ``--workers`` threads (default 32);
each against two endpoints:
- loopback: the moto server directly - no network at all, so every request costs only
  CPU (boto3 + moto, both Python, 2 cores between them): the floor for the ratio;
- network: the same backend on a second port that sleeps ``--latency-ms`` (default 10 ms)
  before answering each request, standing in for the round trip to S3 (tens of ms from a
  laptop or another region) or to a MinIO across a cluster network (a few ms).
The bytes read both ways are compared, and the listing of all keys is timed as well.

Run: ``python tests/benchmarks/bench_s3.py [--records 10000] [--latency-ms 10] [--workers 32]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "support"))
sys.path.insert(0, str(TESTS.parent))

from early_repair_testing.s3_server import (  # noqa: E402
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    boto_client,
    moto_subprocess,
)

from orchestrator.store.s3 import S3Store  # noqa: E402

BUCKET = "bench"
SWEEP = "bench-sweep"


def record_keys(n: int) -> list[str]:
    """Sweep layout: 10 records per epoch (base + 9 repaired classes), 10 epochs per run."""
    keys = []
    for i in range(n):
        run, rest = divmod(i, 100)
        epoch, slot = divmod(rest, 10)
        leaf = "base" if slot == 0 else f"repair/class_{slot}"
        keys.append(f"{SWEEP}/run-{run:04d}/epoch_{epoch + 1:03d}/{leaf}/metrics.json")
    return keys


def record(key: str, rng: random.Random) -> bytes:
    # About the size of a real MetricsRecord (~600 bytes).
    return json.dumps(
        {
            "schema_version": 1,
            "key": key,
            "accuracy": rng.random(),
            "per_class_accuracy": [rng.random() for _ in range(10)],
            "f1_macro": rng.random(),
            "recall_macro": rng.random(),
            "auc_macro": rng.random(),
            "rr": rng.random() * 100,
            "br": rng.random() * 10,
        },
        sort_keys=True,
    ).encode()


def sequential(client: object, keys: list[str]) -> dict[str, bytes]:
    out = {}
    for key in keys:
        out[key] = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
    return out


def measure(name: str, endpoint: str, keys: list[str], workers: int) -> tuple[float, float]:
    client = boto_client(endpoint, max_pool_connections=workers)
    store = S3Store.from_uri(f"s3://{BUCKET}", endpoint_url=endpoint, max_workers=workers)
    started = time.perf_counter()
    listed = store.list(SWEEP)
    t_list = time.perf_counter() - started
    assert listed == sorted(keys), "listing differs"

    started = time.perf_counter()
    seq = sequential(client, keys)
    t_seq = time.perf_counter() - started

    started = time.perf_counter()
    conc = store.read_many(keys)
    t_conc = time.perf_counter() - started
    assert conc == seq, "concurrent and sequential reads differ"
    n = len(keys)
    print(
        f"{name:<22} sequential {t_seq:7.2f} s ({n / t_seq:6.0f}/s)   concurrent"
        f" {t_conc:7.2f} s ({n / t_conc:6.0f}/s)   ratio {t_seq / t_conc:5.2f}x"
        f"   (list {t_list:.2f} s)",
        flush=True,
    )
    return t_seq, t_conc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
    )
    keys = record_keys(args.records)
    rng = random.Random(0)
    data = {k: record(k, rng) for k in keys}
    print(
        f"cores: {os.cpu_count()}  records: {len(keys)} ({sum(map(len, data.values())):,} bytes)"
        f"  workers: {args.workers}  emulated latency: {args.latency_ms:g} ms",
        flush=True,
    )
    with moto_subprocess(args.latency_ms / 1000) as (direct, delayed):
        client = boto_client(direct, max_pool_connections=16)
        client.create_bucket(Bucket=BUCKET)
        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=data[k]), keys))
        print(f"setup: wrote {len(keys)} records in {time.perf_counter() - started:.1f} s")
        measure("loopback (no network)", direct, keys, args.workers)
        measure(f"network ({args.latency_ms:g} ms/request)", delayed, keys, args.workers)


if __name__ == "__main__":
    main()
