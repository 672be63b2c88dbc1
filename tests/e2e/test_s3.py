"""End to end on S3: `early-repair run --results s3://...` and `early-repair aggregate s3://...`
against a real S3 protocol server (moto on loopback), through a fault proxy, and resumed
after a kill - always compared with the same sweep run into a local folder.

The spec is the quickstart, reduced (two seeds, six epochs, a small swarm) so the module
runs in about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from early_repair_testing.paths import REPO
from early_repair_testing.results_compare import comparable
from early_repair_testing.s3_faults import RECOVERABLE, FaultProxy, Request
from early_repair_testing.s3_server import SECRET_ACCESS_KEY, S3Target

from orchestrator.cli import main
from orchestrator.results import layout as keys
from orchestrator.store import open_store
from orchestrator.store.file import FileStore

QUICKSTART = REPO / "settings" / "quickstart.yaml"
TABLES = ("quality.csv", "switch_points.csv", "patterns.csv", "problems.csv", "runs.csv")
TIMING = {"seconds"}


def reduced_quickstart() -> dict[str, Any]:
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["name"] = "quickstart-s3"
    spec["seeds"] = spec["seeds"][:2]
    spec["training"] = {**spec["training"], "max_epochs": 6}
    spec["repair"] = {**spec["repair"], "classes": [3, 8], "particles": 20, "iterations": 10}
    return spec


SPEC = reduced_quickstart()
SWEEP = SPEC["name"]
RUN0 = f"digits-small-cnn-s{SPEC['seeds'][0]}"


@pytest.fixture(autouse=True)
def local_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the local backend's state and logs out of the real ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def spec_file(folder: Path) -> Path:
    path = folder / "quickstart-s3.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The reduced quickstart run into a local folder and aggregated: (results, report)."""
    base = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(base / "cache"))
        for args in (
            ["run", str(spec_file(base)), "--results", str(base / "results"), "--workers", "2"],
            [
                "aggregate",
                str(base / "results" / SWEEP),
                "--out",
                str(base / "report"),
                "--max-figures",
                "1",
            ],
        ):
            with pytest.raises(SystemExit) as done:
                main(args)
            assert done.value.code in (0, None), args
    yield base / "results", base / "report"


def assert_same_report(expected: Path, got: Path) -> None:
    for name in TABLES:
        a, b = pd.read_csv(expected / name), pd.read_csv(got / name)
        pd.testing.assert_frame_equal(a, b, obj=name)
    a = pd.read_parquet(expected / "records.parquet").drop(columns=list(TIMING))
    b = pd.read_parquet(got / "records.parquet").drop(columns=list(TIMING))
    assert len(a) == 2 * 3 * 3  # 2 runs x 3 checkpoints x (base + 2 repaired)
    pd.testing.assert_frame_equal(a, b, obj="records")


def one_line_error(r: Any) -> str:
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert SECRET_ACCESS_KEY not in r.err + r.out
    return r.err


# -- the quickstart on S3 gives the local folder's tables ------------------------------------


@pytest.mark.slow
def test_run_and_aggregate_on_s3_equal_local(
    cli, s3_bucket: S3Target, reference: tuple[Path, Path], tmp_path: Path
) -> None:
    uri = s3_bucket.uri("team/x")
    r = cli(
        "run",
        spec_file(tmp_path),
        "--results",
        uri,
        "--workers",
        "2",
        "--endpoint-url",
        s3_bucket.endpoint_url,
    )
    assert r.code == 0, r.err
    assert r.out.strip() == uri
    r = cli(
        "aggregate",
        f"{uri}/{SWEEP}",
        "--endpoint-url",
        s3_bucket.endpoint_url,
        "--out",
        tmp_path / "report",
        "--max-figures",
        "1",
    )
    assert r.code == 0, r.err
    assert_same_report(reference[1], tmp_path / "report")
    # The objects themselves match the local run's, key for key.
    s3 = open_store(uri, endpoint_url=s3_bucket.endpoint_url)
    local = FileStore(reference[0])
    assert comparable(s3, f"{SWEEP}/") == comparable(local, f"{SWEEP}/")


# -- through 500s, SlowDowns, dropped connections and cut bodies -----------------------------


@pytest.mark.slow
def test_run_and_aggregate_through_faults(
    cli, s3_bucket: S3Target, reference: tuple[Path, Path], tmp_path: Path
) -> None:
    uri = s3_bucket.uri("faulty")
    with FaultProxy(s3_bucket.endpoint_url, rate=0.1, seed=21, kinds=RECOVERABLE) as proxy:
        r = cli(
            "run",
            spec_file(tmp_path),
            "--results",
            uri,
            "--workers",
            "2",
            "--endpoint-url",
            proxy.endpoint_url,
        )
        assert r.code == 0, r.err
        r = cli(
            "aggregate",
            f"{uri}/{SWEEP}",
            "--endpoint-url",
            proxy.endpoint_url,
            "--out",
            tmp_path / "report",
            "--max-figures",
            "1",
        )
        assert r.code == 0, r.err
    assert sum(proxy.faults.values()) >= 10, proxy.faults
    assert len(proxy.faults) >= 3, proxy.faults
    assert_same_report(reference[1], tmp_path / "report")


# -- killed after some steps reached S3, local files gone, run again ------------------------


def _listing(target: S3Target, prefix: str) -> dict[str, tuple[Any, str]]:
    pages = target.client().get_paginator("list_objects_v2")
    return {
        o["Key"]: (o["LastModified"], o["ETag"])
        for page in pages.paginate(Bucket=target.bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    }


def _trainer(spec: Path, endpoint: str, workdir: Path) -> subprocess.Popen[bytes]:
    # As a pod would run it: the endpoint from AWS_ENDPOINT_URL (the standard chain), the
    # scratch folder under TMPDIR.
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "TMPDIR": str(workdir)}
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "trainer",
            "--sweep",
            str(spec),
            "--run-index",
            "0",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_killed_run_resumes_from_s3_without_redoing_steps(
    s3_bucket: S3Target, reference: tuple[Path, Path], tmp_path: Path
) -> None:
    uri = s3_bucket.uri("resume")
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({**SPEC, "results": uri}))
    stall_at = keys.base_metrics(SWEEP, RUN0, 5)

    def stall_second_checkpoint(request: Request) -> str | None:
        # Hang the trainer inside the upload of epoch 5's first result: training and
        # epoch 1 (base and repairs) are in the store by then, the rest is not.
        return "stall" if request.method == "PUT" and request.path.endswith(stall_at) else None

    work = tmp_path / "work"
    with FaultProxy(s3_bucket.endpoint_url, rule=stall_second_checkpoint) as first:
        proc = _trainer(spec, first.endpoint_url, work)
        try:
            deadline = time.monotonic() + 120
            while not first.faults["stall"]:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the trainer never reached epoch 5"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)  # preempted: no cleanup, no last log upload
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    scratch = list(work.glob(f"early-repair-{RUN0}-*"))
    assert scratch and list(scratch[0].rglob("*.pt")), "the killed run left no local files"
    shutil.rmtree(work)  # a new pod starts with nothing

    prefix = f"resume/{SWEEP}/{RUN0}/"
    before = _listing(s3_bucket, prefix)
    # The log and run.json are rewritten by design, and the stalled record's
    # predictions.npy (written just before it) belongs to the unfinished step; everything
    # else is a finished step.
    unfinished = f"resume/{keys.predictions(stall_at)}"
    done = {
        k: v
        for k, v in before.items()
        if not k.endswith(("trainer.log", "run.json")) and k != unfinished
    }
    assert f"resume/{keys.summary_json(SWEEP, RUN0)}" in done
    assert f"resume/{keys.repair_metrics(SWEEP, RUN0, 1, 8)}" in done
    assert f"resume/{stall_at}" not in before and f"{prefix}_SUCCESS" not in before

    with FaultProxy(s3_bucket.endpoint_url, rate=0.1, seed=5, kinds=RECOVERABLE) as second:
        proc = _trainer(spec, second.endpoint_url, tmp_path / "work2")
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert sum(second.faults.values()) > 0

    after = _listing(s3_bucket, prefix)
    assert f"{prefix}_SUCCESS" in after
    # Finished steps were not uploaded again: same objects, same timestamps, no PUTs.
    assert {k: after[k] for k in done} == done
    rewritten = {
        p.split("?")[0].split(f"/{s3_bucket.bucket}/")[-1]
        for m, p, _ in second.log
        if m in ("PUT", "POST")
    }
    assert not rewritten & set(done), sorted(rewritten & set(done))
    store = open_store(uri, endpoint_url=s3_bucket.endpoint_url)
    log = store.read_bytes(keys.log(SWEEP, RUN0)).decode()
    assert "step train: done before (summary.json exists); skipped" in log
    assert log.count("step train: small_cnn") == 1  # trained once, before the kill
    # And the results are those of the uninterrupted local run.
    run = f"{SWEEP}/{RUN0}/"
    assert comparable(store, run) == comparable(FileStore(reference[0]), run)


# -- errors through the CLI: exit 2, one line, the URI and the fix, never the secret --------


def test_aggregate_errors_are_one_line(
    cli, s3_bucket: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report"
    missing = "s3://no-such-bucket-e2e/results"
    err = one_line_error(
        cli("aggregate", missing, "--endpoint-url", s3_bucket.endpoint_url, "--out", out)
    )
    assert missing in err and "does not exist" in err
    err = one_line_error(cli("aggregate", "s3://Bad_Bucket/x", "--out", out))
    assert "not a valid bucket name" in err
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    err = one_line_error(
        cli("aggregate", s3_bucket.uri("x"), "--endpoint-url", s3_bucket.endpoint_url, "--out", out)
    )
    assert "no AWS credentials" in err
    assert not out.exists()


def test_run_with_a_malformed_uri_creates_nothing(cli, tmp_path: Path) -> None:
    before = set(tmp_path.rglob("*"))
    err = one_line_error(cli("run", spec_file(tmp_path), "--results", "s3:///results"))
    assert "names no bucket" in err
    assert set(tmp_path.rglob("*")) - before == {tmp_path / "quickstart-s3.yaml"}


def test_run_into_a_missing_bucket_is_bad_input(cli, s3_bucket: S3Target, tmp_path: Path) -> None:
    err = one_line_error(
        cli(
            "run",
            spec_file(tmp_path),
            "--results",
            "s3://no-such-bucket-e2e/x",
            "--endpoint-url",
            s3_bucket.endpoint_url,
        )
    )
    assert "does not exist" in err
