"""Aggregating from S3 (moto in server mode on loopback, real HTTP through boto3) takes the
same code path as a local folder and gives the same tables - also when the S3 side is read
from one records.arrow per finished run and the local side file by file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from early_repair_testing.aggregate_tree import paper_table1_runs, write_tree
from early_repair_testing.s3_server import S3Target, free_port

from orchestrator.errors import EXIT_TRANSIENT
from orchestrator.store.file import FileStore
from orchestrator.store.s3 import S3Store

TABLES = ("quality.csv", "switch_points.csv", "patterns.csv", "problems.csv", "runs.csv")


@pytest.mark.slow
def test_s3_and_local_give_the_same_tables(cli, s3_bucket: S3Target, tmp_path: Path):
    runs = paper_table1_runs()
    write_tree(FileStore(tmp_path / "local"), "paper", runs)
    s3 = S3Store.from_uri(s3_bucket.uri("team/results"), endpoint_url=s3_bucket.endpoint_url)
    write_tree(s3, "paper", paper_table1_runs(), packed=True)  # one records.arrow per run
    broken = "paper/gtsrb-vgg16-s2048/epoch_005/repair/class_20/metrics.json"
    for store in (FileStore(tmp_path / "local"), s3):
        store.write_bytes(broken, b'{"schema_version": 1, "swe')  # same damage on both sides
    # packed before the damage: that run's records.arrow would hide it, so it goes
    s3.delete_prefix("paper/gtsrb-vgg16-s2048/records.arrow")

    local = cli("aggregate", tmp_path / "local", "--out", tmp_path / "a", "--max-figures", "1")
    assert local.code == 0, local.err
    # the URI of the sweep's own folder, as users copy it from the bucket browser
    remote = cli(
        "aggregate",
        s3_bucket.uri("team/results/paper"),
        "--endpoint-url",
        s3_bucket.endpoint_url,
        "--out",
        tmp_path / "b",
        "--max-figures",
        "1",
    )
    assert remote.code == 0, remote.err
    for name in TABLES:
        a, b = pd.read_csv(tmp_path / "a" / name), pd.read_csv(tmp_path / "b" / name)
        if name == "problems.csv":
            a["key"] = a["key"].str.removeprefix("paper/")  # relative to the sweep's folder
        pd.testing.assert_frame_equal(a, b, obj=name)
    rec_a = pd.read_parquet(tmp_path / "a" / "records.parquet").drop(columns="key")
    rec_b = pd.read_parquet(tmp_path / "b" / "records.parquet").drop(columns="key")
    pd.testing.assert_frame_equal(rec_a, rec_b)
    problems = pd.read_csv(tmp_path / "b" / "problems.csv")
    assert problems["kind"].tolist() == ["damaged", "partial"]
    assert (tmp_path / "b" / "report.html").is_file()


def test_unreachable_endpoint_is_one_line_and_retriable(cli, s3_env: None, tmp_path: Path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = cli("aggregate", "s3://bucket/results", "--endpoint-url", dead, "--out", tmp_path / "o")
    assert r.code == EXIT_TRANSIENT  # the server may be back later: not bad input
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert r.out == "" and not (tmp_path / "o").exists()
