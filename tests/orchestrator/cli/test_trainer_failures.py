"""How a trainer process ends when the world fails it: storage that keeps failing
after botocore's retries exits 69 (retriable, the podFailurePolicy counts it against the
backoff), a missing bucket 2 (never retried), a full disk and a damaged checkpoint 1 with one
line naming the folder or file - never a traceback.

The exit codes the podFailurePolicy relies on and the full disk (a file-size limit) are
checked on real ``early-repair trainer`` processes, as a pod or the local backend runs them;
the rest in-process, through the same ``main``.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from early_repair_testing.paths import REPO
from early_repair_testing.s3_faults import FaultProxy
from early_repair_testing.s3_server import S3Target

from orchestrator.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_TRANSIENT
from orchestrator.results import layout as keys
from orchestrator.results.records import TrainSummary
from orchestrator.store.file import FileStore

SPEC = """\
name: failing
datasets: [digits]
models: [small_cnn]
seeds: [1]
training: {{max_epochs: 1, num_threads: 1, device: cpu}}
repair: {{classes: [3]}}
results: {results}
"""
RUN = "digits-small-cnn-s1"


def trainer(
    spec: Path, env: dict[str, str] | None = None, fsize: int | None = None
) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        # A full disk, as far as this process can tell: writes past `fsize` fail (EFBIG)
        # instead of killing it with SIGXFSZ.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))  # type: ignore[arg-type]

    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "trainer", "--sweep", str(spec)],
        cwd=REPO,
        env={**os.environ, "JOB_COMPLETION_INDEX": "0", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,  # a safety net only
        preexec_fn=limit if fsize else None,
    )


def last_error(err: str) -> str:
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err
    return line


def write_spec(tmp_path: Path, results: str, extra: str = "") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(SPEC.format(results=results) + extra)
    return path


@pytest.mark.slow
def test_storage_failing_past_the_retries_exits_retriable(
    s3_bucket: S3Target, tmp_path: Path
) -> None:
    with FaultProxy(s3_bucket.endpoint_url, rate=1.0, kinds=["500"]) as proxy:
        spec = write_spec(
            tmp_path, s3_bucket.uri("r"), f"storage: {{endpoint_url: '{proxy.endpoint_url}'}}\n"
        )
        proc = trainer(spec, {"AWS_MAX_ATTEMPTS": "2"})
    assert proc.returncode == EXIT_TRANSIENT == 69, proc.stderr
    line = last_error(proc.stderr)
    assert "HTTP 500" in line and "after 2 attempts" in line and "try again later" in line
    assert proxy.faults["500"] >= 2


def test_an_unreachable_endpoint_exits_retriable(
    cli, s3_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from early_repair_testing.s3_server import free_port

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    dead = f"http://127.0.0.1:{free_port()}"
    spec = write_spec(tmp_path, "s3://bucket/r", f"storage: {{endpoint_url: '{dead}'}}\n")
    r = cli("trainer", "--sweep", spec, "--run-index", "0")
    assert r.code == EXIT_TRANSIENT, r.err
    assert "cannot connect to the S3 endpoint" in last_error(r.err)


@pytest.mark.slow
def test_a_missing_bucket_exits_bad_input(moto_endpoint: str, s3_env: None, tmp_path: Path):
    spec = write_spec(
        tmp_path, "s3://no-such-bucket-here/r", f"storage: {{endpoint_url: '{moto_endpoint}'}}\n"
    )
    proc = trainer(spec)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert "does not exist" in last_error(proc.stderr)


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_names_the_folder(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, str(tmp_path / "results"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # A small_cnn checkpoint is ~150 KB; the logs and JSON records stay far below 64 KB.
    proc = trainer(spec, {"TMPDIR": str(scratch)}, fsize=64 * 1024)
    assert proc.returncode == EXIT_FAILED, proc.stderr
    line = last_error(proc.stderr)
    assert "cannot write" in line and str(scratch) in line and "TMPDIR" in line
    assert "epoch_001.pt" in line


def test_a_damaged_checkpoint_names_the_file(cli, tmp_path: Path) -> None:
    results = tmp_path / "results"
    store = FileStore(results)
    summary = TrainSummary(
        convergence_epoch=1,
        checkpoint_epochs=[1],
        epochs_trained=1,
        stopped_early=False,
        best_val_loss=1.0,
        seconds=1.0,
    )
    store.write_bytes(keys.summary_json("failing", RUN), summary.model_dump_json().encode())
    store.write_bytes(keys.checkpoint("failing", RUN, 1), b"PK\x03\x04 not a checkpoint")
    r = cli("trainer", "--sweep", write_spec(tmp_path, str(results)), "--run-index", "0")
    assert r.code == EXIT_FAILED, r.err
    line = last_error(r.err)
    assert f"{results}/{keys.checkpoint('failing', RUN, 1)} is not a usable checkpoint" in line
    assert f"delete {results}/{keys.run_prefix('failing', RUN)}" in line


@pytest.mark.parametrize("kind", ["403", "500"])
def test_logs_local_with_a_broken_store_is_not_a_silent_success(
    cli, s3_bucket: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from orchestrator.backends.local.backend import LocalBackend
    from orchestrator.spec import parse_spec

    monkeypatch.setenv("EARLY_REPAIR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    broken: list[str] = []
    with FaultProxy(s3_bucket.endpoint_url, rule=lambda _r: broken[0] if broken else None) as p:
        sweep = parse_spec(
            {
                "name": "failing",
                "datasets": ["digits"],
                "models": ["small_cnn"],
                "seeds": [1],
                "results": s3_bucket.uri("r"),
                "storage": {"endpoint_url": p.endpoint_url},
            }
        )
        # A sweep this machine ran (its trainer a no-op), whose log is not archived yet.
        backend = LocalBackend(python="/bin/true")
        backend.submit(backend.plan(sweep))
        ok = cli("logs", "failing", "--local")
        assert (ok.code, ok.out) == (0, ""), ok.err
        broken.append(kind)  # now the credentials are refused / the server fails
        r = cli("logs", "failing", "--local")
    expected = {"403": (EXIT_BAD_INPUT, "AccessDenied"), "500": (EXIT_TRANSIENT, "InternalError")}
    code, needle = expected[kind]
    assert r.code == code, r.err
    assert len(r.err.splitlines()) == 1 and needle in r.err and "Traceback" not in r.err
