"""A method under an acceptance rule lives in ``repair/<method>+<rule>/``: that key reads
back from S3 (moto in server mode, real HTTP through boto3) file by file and packed, as the
same two methods as from a folder."""

from __future__ import annotations

from pathlib import Path

from early_repair_testing.aggregate_tree import RunTree, write_tree
from early_repair_testing.s3_server import S3Target

from orchestrator.analysis.aggregate import aggregate
from orchestrator.results import layout
from orchestrator.store.file import FileStore
from orchestrator.store.s3 import S3Store

RULED = "arachne+fixes-some"


def runs() -> list[RunTree]:
    out = []
    for seed in (1, 2):
        repaired = {(e, 3, m): (0.5 + e / 100, 0.6) for e in (1, 5, 10) for m in ("arachne", RULED)}
        out.append(RunTree(f"r{seed}", 10, [1, 5, 10], [3], repaired, seed=seed, method_level=True))
    out[1].packed = True  # one run read from its records.arrow
    return out


def test_a_ruled_method_reads_back_from_s3_as_its_own_method(
    s3_bucket: S3Target, tmp_path: Path
) -> None:
    s3 = S3Store.from_uri(s3_bucket.uri("acc"), endpoint_url=s3_bucket.endpoint_url)
    write_tree(s3, "acc", runs())
    write_tree(FileStore(tmp_path / "local"), "acc", runs())
    key = layout.repair_metrics("acc", "r1", 5, 3, RULED)
    assert "/repair/arachne+fixes-some/class_3/" in key and s3.exists(key)
    assert key in set(s3.list("acc/r1/"))
    remote, local = aggregate(s3), aggregate(FileStore(tmp_path / "local"))
    assert remote.problems.empty and local.problems.empty
    for agg in (remote, local):
        got = agg.loaded.records.query("kind == 'repaired'").groupby("method").size().to_dict()
        assert got == {"arachne": 6, RULED: 6}
