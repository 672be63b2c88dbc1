"""The local backend and ``early-repair run``: whole sweeps as trainer processes, exit codes,
the DESIGN.md layout, status/logs/cancel, and the real quickstart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.backends.base import RunState
from orchestrator.backends.local.backend import LocalBackend, _proc_start, default_workers
from orchestrator.errors import BadInput
from orchestrator.results import layout as keys
from orchestrator.results.records import SCHEMA_VERSION, MetricsRecord, TrainSummary
from orchestrator.spec import parse_spec
from orchestrator.store import Store, open_store
from orchestrator.store.file import FileStore

SWEEP = "local-test"
SPEC: dict[str, Any] = {
    "name": SWEEP,
    "datasets": ["digits"],
    "models": ["small_cnn"],
    "seeds": [1, 2],
    "training": {"max_epochs": 6, "device": "cpu", "num_threads": 1},
    "repair": {"classes": [3], "particles": 20, "iterations": 10},
}


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the backend's state and logs out of the real ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "early-repair" / "local"


def write(path: Path, **changes: Any) -> Path:
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return path


def check_layout(root: Path | Store, sweep: str, run: str, classes: list[int]) -> TrainSummary:
    """Exactly the DESIGN.md result layout for one run, with valid records."""
    store = root if isinstance(root, Store) else FileStore(root)
    summary = TrainSummary.model_validate_json(store.read_bytes(keys.summary_json(sweep, run)))
    want = {
        keys.run_json(sweep, run),
        keys.history_csv(sweep, run),
        keys.summary_json(sweep, run),
        keys.log(sweep, run),
        keys.records(sweep, run),
        keys.success(sweep, run),
    }
    for e in summary.checkpoint_epochs:
        want |= {keys.checkpoint(sweep, run, e), keys.base_metrics(sweep, run, e)}
        for c in classes:
            want |= {
                keys.repair_metrics(sweep, run, e, c),
                keys.repair_patch(sweep, run, e, c),
                keys.repair_search(sweep, run, e, c),
            }
    assert set(store.list(f"{sweep}/{run}/")) == want
    for key in want:
        if key.endswith("metrics.json"):
            rec = MetricsRecord.model_validate_json(store.read_bytes(key))
            assert (rec.sweep, rec.run, rec.schema_version) == (sweep, run, SCHEMA_VERSION)
    return summary


def test_run_end_to_end(cli, tmp_path: Path, cache: Path) -> None:
    spec = write(tmp_path / "sweep.yaml")
    results = tmp_path / "results"
    r = cli("run", spec, "--results", results, "--workers", "2")
    assert r.code == 0, r.err
    assert r.out == f"{results}\n"
    assert r.err.strip().splitlines()[-1].startswith(f"2 of 2 runs of sweep {SWEEP} succeeded")
    assert "ok digits-small-cnn-s1" in r.err and "ok digits-small-cnn-s2" in r.err
    runs = ["digits-small-cnn-s1", "digits-small-cnn-s2"]
    assert sorted(p.name for p in (results / SWEEP).iterdir()) == sorted([*runs, "sweep.json"])
    swept = parse_spec(json.loads((results / keys.sweep_json(SWEEP)).read_text()))
    assert swept.seeds == [1, 2] and swept.results == str(results)
    for run in runs:
        check_layout(results, SWEEP, run, [3])
        assert "run " + run in (cache / SWEEP / f"{run}.log").read_text()

    backend = LocalBackend()
    rows = backend.status(SWEEP)
    assert [(s.run, s.state, s.message) for s in rows] == [
        (run, RunState.SUCCEEDED, "done") for run in runs
    ]
    lines = list(backend.logs(SWEEP))
    assert any(x.startswith("[digits-small-cnn-s2] ") and "complete" in x for x in lines)
    only = list(backend.logs(SWEEP, "digits-small-cnn-s1"))
    assert only and not only[0].startswith("[")
    with pytest.raises(BadInput, match="runs: digits-small-cnn-s1, digits-small-cnn-s2"):
        list(backend.logs(SWEEP, "nope"))
    with pytest.raises(BadInput, match="nothing is running"):
        backend.cancel(SWEEP)
    state = json.loads((cache / f"{SWEEP}.json").read_text())
    assert state["pid"] is None
    assert {v["state"] for v in state["runs"].values()} == {"SUCCEEDED"}


def test_one_failing_run_exits_1_and_the_others_finish(cli, tmp_path: Path, cache: Path) -> None:
    # torch.nn.Identity accepts any arguments but has no Linear head: a user's bad model.
    spec = write(
        tmp_path / "sweep.yaml",
        seeds=[1],
        models=["small_cnn", {"name": "torch.nn:Identity", "label": "broken"}],
    )
    results = tmp_path / "results"
    r = cli("run", spec, "--results", results, "--workers", "2")
    assert r.code == 1, r.err
    assert r.out == f"{results}\n"
    summary = r.err.strip().splitlines()[-1]
    assert summary.startswith(f"1 of 2 runs of sweep {SWEEP} did not succeed")
    assert "digits-broken-s1 failed: exit 2: error: model Identity cannot be repaired" in summary
    check_layout(results, SWEEP, "digits-small-cnn-s1", [3])
    assert not (results / keys.success(SWEEP, "digits-broken-s1")).exists()
    archived = (results / keys.log(SWEEP, "digits-broken-s1")).read_text()
    assert "cannot be repaired" in archived
    assert "Traceback" not in (cache / SWEEP / "digits-broken-s1.log").read_text()

    rows = {s.run: s for s in LocalBackend().status(SWEEP)}
    assert rows["digits-small-cnn-s1"].state is RunState.SUCCEEDED
    assert rows["digits-broken-s1"].state is RunState.FAILED
    assert rows["digits-broken-s1"].message.startswith("exit 2")


def test_run_to_s3_with_an_endpoint_override(cli, tmp_path: Path, s3_bucket) -> None:
    """The same sweep into object storage (moto over HTTP): nothing assumes a folder."""
    spec = write(tmp_path / "sweep.yaml", seeds=[1])
    uri = s3_bucket.uri("exp/results")
    r = cli("run", spec, "--results", uri, "--endpoint-url", s3_bucket.endpoint_url)
    assert r.code == 0, r.err
    assert r.out == f"{uri}\n"
    store = open_store(uri, endpoint_url=s3_bucket.endpoint_url)
    check_layout(store, SWEEP, "digits-small-cnn-s1", [3])
    swept = parse_spec(json.loads(store.read_bytes(keys.sweep_json(SWEEP))))
    assert swept.storage.endpoint_url == s3_bucket.endpoint_url
    assert not (tmp_path / "exp").exists() and not Path("exp").exists()
    rows = LocalBackend().status(SWEEP)
    assert [(s.run, s.state) for s in rows] == [("digits-small-cnn-s1", RunState.SUCCEEDED)]


def test_dry_run_creates_nothing(tmp_path: Path, cache: Path) -> None:
    spec = parse_spec({**SPEC, "results": str(tmp_path / "results")})
    out = LocalBackend().submit(spec, dry_run=True)
    assert [(s.run, s.state) for s in out.runs] == [
        ("digits-small-cnn-s1", RunState.PENDING),
        ("digits-small-cnn-s2", RunState.PENDING),
    ]
    assert "nothing started" in out.summary()
    assert not (tmp_path / "results").exists() and not cache.exists()


def test_child_environment_and_worker_count() -> None:
    spec = parse_spec(SPEC)
    backend = LocalBackend()
    run = spec.runs()[0]
    with backend._env_for(run, workers=2) as env:
        assert env["CUDA_VISIBLE_DEVICES"] == "" and env["PYTHONUNBUFFERED"] == "1"
        assert "OMP_NUM_THREADS" not in env or env["OMP_NUM_THREADS"] == os.environ.get(
            "OMP_NUM_THREADS"
        )
    gpu = parse_spec({**SPEC, "resources": {"gpus": 1}, "training": {"max_epochs": 2}})
    with backend._env_for(gpu.runs()[0], workers=4) as env:
        assert env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
        assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 4))
    assert default_workers(spec, 2, cpus=8) == 2
    assert default_workers(parse_spec({**SPEC, "seeds": list(range(9))}), 9, cpus=8) == 8
    assert default_workers(gpu, 5, cpus=8) == 1  # torch would use all 8 cores per run


def test_a_sweep_already_running_is_refused(tmp_path: Path, cache: Path) -> None:
    spec = parse_spec({**SPEC, "results": str(tmp_path / "results")})
    cache.mkdir(parents=True)
    state = {"sweep": SWEEP, "pid": os.getpid(), "pid_start": _proc_start(os.getpid()), "runs": {}}
    (cache / f"{SWEEP}.json").write_text(json.dumps(state))
    with pytest.raises(BadInput, match=f"sweep '{SWEEP}' is already running"):
        LocalBackend().submit(spec)
    assert not (tmp_path / "results").exists()
    # A record left by a process that is gone does not block.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    state["pid"] = int(dead.stdout)
    (cache / f"{SWEEP}.json").write_text(json.dumps(state))
    assert LocalBackend().live_state(SWEEP) is None
    assert LocalBackend().submit(spec, dry_run=True).runs


def test_a_sweep_another_process_has_claimed_is_refused(tmp_path: Path, cache: Path) -> None:
    """Two `run`s started at the same moment both pass the state-file check; the lock that
    the first one takes is what stops the second before it writes or starts anything."""
    spec = parse_spec({**SPEC, "results": str(tmp_path / "results")})
    backend = LocalBackend()
    lock = backend.log_dir(SWEEP) / "run.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_CREAT | os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert backend.live_state(SWEEP) is None  # no state file: the check alone would pass
        with pytest.raises(BadInput, match=f"sweep '{SWEEP}' is already running"):
            backend.submit(spec)
        assert not backend.state_file(SWEEP).exists()
        assert not (backend.log_dir(SWEEP) / "sweep.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_cancel_stops_runs_left_behind_by_a_killed_run_process(cache: Path) -> None:
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
        )
        state = {
            "sweep": SWEEP,
            "pid": int(gone.stdout),
            "pid_start": "1",
            "runs": {"r": {"pid": orphan.pid, "pid_start": _proc_start(orphan.pid)}},
        }
        cache.mkdir(parents=True)
        (cache / f"{SWEEP}.json").write_text(json.dumps(state))
        LocalBackend().cancel(SWEEP)
        assert orphan.wait(timeout=10) == -15
        with pytest.raises(BadInput, match="nothing is running"):
            LocalBackend().cancel(SWEEP)
    finally:
        orphan.kill()
        orphan.wait()


@pytest.mark.slow
def test_cancel_stops_a_running_sweep_and_a_rerun_resumes(
    cli, tmp_path: Path, cache: Path, repo: Path
) -> None:
    # Full-length searches: the repairs last a few seconds, time enough to cancel them.
    slow = {"classes": [0, 1, 2, 3, 4], "particles": 100, "iterations": 50, "patience": 50}
    spec = write(tmp_path / "sweep.yaml", seeds=[1], repair=slow)
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--results", str(results)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=repo,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    summary_key = results / keys.summary_json(SWEEP, "digits-small-cnn-s1")
    deadline = time.monotonic() + 120
    while not summary_key.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    state = json.loads((cache / f"{SWEEP}.json").read_text())
    child = state["runs"]["digits-small-cnn-s1"]["pid"]
    assert child and state["pid"] == proc.pid

    LocalBackend().cancel(SWEEP)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "did not succeed" in err and "cancelled" in err
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert not (results / keys.success(SWEEP, "digits-small-cnn-s1")).exists()
    assert LocalBackend().status(SWEEP)[0].state is RunState.CANCELLED
    # The trainer caught SIGTERM and still archived its log.
    archived = (results / keys.log(SWEEP, "digits-small-cnn-s1")).read_text()
    assert "stopped (exit 143); run it again to resume" in archived
    with pytest.raises(BadInput, match="nothing is running"):
        LocalBackend().cancel(SWEEP)

    trained_at = summary_key.stat().st_mtime_ns
    r = cli("run", spec, "--results", results)
    assert r.code == 0, r.err
    assert summary_key.stat().st_mtime_ns == trained_at  # resumed, not retrained
    check_layout(results, SWEEP, "digits-small-cnn-s1", slow["classes"])


@pytest.mark.slow
def test_the_real_quickstart(cli, repo: Path, tmp_path: Path) -> None:
    results = tmp_path / "qs"
    r = cli("run", repo / "settings/quickstart.yaml", "--results", results)
    assert r.code == 0, r.err
    assert r.out == f"{results}\n"
    spec = yaml.safe_load((repo / "settings/quickstart.yaml").read_text())
    for seed in spec["seeds"]:
        run = f"digits-small-cnn-s{seed}"
        summary = check_layout(results, "quickstart", run, spec["repair"]["classes"])
        # The paper's situation: stopped early, checkpoints before a distinct convergence.
        assert summary.stopped_early and summary.epochs_trained < 30
        assert summary.convergence_epoch in summary.checkpoint_epochs
        assert summary.checkpoint_epochs[:3] == [1, 5, 10]
        conv = MetricsRecord.model_validate_json(
            (results / keys.base_metrics("quickstart", run, summary.convergence_epoch)).read_bytes()
        )
        assert conv.accuracy > 0.9
