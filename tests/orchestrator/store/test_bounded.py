"""Bounded reading in the store layer: regular files only, never through a link out of
the folder, never past a size limit per kind of object - in a folder and in S3 (moto)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from early_repair_testing.s3_server import S3Target

from orchestrator.store.base import KeyMissing, NotARegularFile, ObjectTooLarge
from orchestrator.store.file import FileStore
from orchestrator.store.limits import LIMITS, MiB, kind_of, limit_for, read_bounded
from orchestrator.store.s3 import S3Store

KEY = "sw/r/epoch_001/base/metrics.json"


def test_limits_per_kind_of_object() -> None:
    assert kind_of(KEY) == "base"
    assert kind_of("r/epoch_001/base/metrics.json", root=False) == "base"
    assert limit_for(KEY) == LIMITS["base"] == 1 * MiB
    assert limit_for("sw/r/records.arrow") == LIMITS["records"]
    assert limit_for("sw/sweep.json") == LIMITS["sweep_json"]
    # Objects layout.parse does not know are found by name; any other gets the default.
    assert limit_for("sw/r/epoch_001/base/predictions.npy") == LIMITS["predictions"]
    assert limit_for("sw/r/test_labels.npy") == LIMITS["test_labels"]
    assert limit_for("sw/r/anything.bin", "predictions") == LIMITS["predictions"]
    assert limit_for("sw/r/anything.bin") == 1 * MiB


def test_a_file_over_its_limit_is_refused_and_one_within_is_read(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.write_bytes(KEY, b"x" * 100)
    assert store.read_bytes(KEY, max_bytes=100) == b"x" * 100
    with pytest.raises(ObjectTooLarge, match="100 bytes, over the 99-byte limit"):
        store.read_bytes(KEY, max_bytes=99)
    assert store.read_bytes(KEY) == b"x" * 100  # no limit asked for: the writer's own reads
    big = "sw/r/epoch_002/base/metrics.json"
    store.write_bytes(big, b"{" + b" " * (LIMITS["base"] + 1))
    with pytest.raises(ObjectTooLarge):
        read_bounded(store, big)


def test_what_is_no_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    store.write_bytes(KEY, b"{}")
    folder = tmp_path / "root" / "sw" / "r"
    os.mkfifo(folder / "run.json")  # opening it for reading would wait for a writer
    (folder / "train").mkdir()
    (folder / "train" / "summary.json").symlink_to("/dev/zero")
    (folder / "records.arrow").mkdir()
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    (folder / "epoch_001" / "base" / "inside.json").symlink_to(
        folder / "epoch_001" / "base" / "metrics.json"
    )
    (folder / "epoch_005").mkdir()
    (folder / "epoch_005" / "base").mkdir()
    (folder / "epoch_005" / "base" / "metrics.json").symlink_to(outside)
    start = time.monotonic()
    for key, what in [
        ("sw/r/run.json", "FIFO"),
        ("sw/r/train/summary.json", "leads out of"),  # /dev/zero
        ("sw/r/records.arrow", "folder"),
        ("sw/r/epoch_005/base/metrics.json", "leads out of"),
    ]:
        with pytest.raises(NotARegularFile, match=what):
            store.read_bytes(key, max_bytes=1000)
    assert time.monotonic() - start < 30  # (a FIFO would have blocked forever)
    assert store.read_bytes("sw/r/epoch_001/base/inside.json") == b"{}"  # a link inside
    with pytest.raises(KeyMissing):
        store.read_bytes("sw/r/epoch_009/base/metrics.json")
    # The folder named like a data file is listed, so its reader says what it is.
    assert "sw/r/records.arrow" in store.list("sw/")
    assert "sw/r/records.arrow" in store.list("sw/", delimiter="/epoch_")
    got = store.read_many(["sw/r/run.json", KEY], max_bytes=lambda k: 1000)
    assert isinstance(got["sw/r/run.json"], NotARegularFile) and got[KEY] == b"{}"


def test_a_run_folder_linked_out_of_the_tree_is_not_read(tmp_path: Path) -> None:
    elsewhere = FileStore(tmp_path / "elsewhere")
    elsewhere.write_bytes("r/epoch_001/base/metrics.json", b"{}")
    (tmp_path / "root" / "sw").mkdir(parents=True)
    (tmp_path / "root" / "sw" / "r").symlink_to(tmp_path / "elsewhere" / "r")
    with pytest.raises(NotARegularFile, match="outside"):
        FileStore(tmp_path / "root").read_bytes(KEY)


def test_s3_refuses_an_object_over_its_limit_from_its_headers(s3_bucket: S3Target) -> None:
    store = S3Store.from_uri(s3_bucket.uri("p"), endpoint_url=s3_bucket.endpoint_url)
    store.write_bytes(KEY, b"x" * 5000)
    with pytest.raises(ObjectTooLarge, match="5,000 bytes, over the 4,999-byte limit"):
        store.read_bytes(KEY, max_bytes=4999)
    assert store.read_bytes(KEY, max_bytes=5000) == b"x" * 5000
    got = store.read_many([KEY], max_bytes=lambda k: 10)
    assert isinstance(got[KEY], ObjectTooLarge)


def test_s3_keys_that_name_other_objects_are_not_listed(s3_bucket: S3Target) -> None:
    client = s3_bucket.client()
    for key in ("p/sw/../sw/r/run.json", "p/sw/r//run.json", "p/sw/./r/run.json", "p/sw/r/ok"):
        client.put_object(Bucket=s3_bucket.bucket, Key=key, Body=b"{}")
    store = S3Store.from_uri(s3_bucket.uri("p"), endpoint_url=s3_bucket.endpoint_url)
    assert store.list("") == ["sw/r/ok"]
    assert sorted(store.refused) == ["sw/../sw/r/run.json", "sw/./r/run.json", "sw/r//run.json"]
    assert all(why.startswith("its key holds") for why in store.refused.values())
    assert store.list("", delimiter="/epoch_") == ["sw/r/ok"]
