"""The local backend and ``early-repair run``: whole sweeps as trainer processes, exit codes,
the results layout (README, "Results layout"), status/logs/cancel, and the real quickstart."""

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
from orchestrator.backends.local.backend import (
    STATE_VERSION,
    LocalBackend,
    _identity,
    default_workers,
)
from orchestrator.errors import BadInput
from orchestrator.results import layout as keys
from orchestrator.results.records import SCHEMA_VERSION, MetricsRecord, TrainSummary
from orchestrator.spec import SweepSpec, parse_spec
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
    """A state folder of this test's own (the session's is already not the user's)."""
    monkeypatch.setenv("EARLY_REPAIR_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def record(results: Path, sweep: str = SWEEP) -> Path:
    """The folder where the backend keeps ``sweep``'s record for ``results``."""
    return LocalBackend().record_dir(sweep, str(results))


def submit(spec: SweepSpec, backend: LocalBackend | None = None, **options: Any) -> Any:
    """``spec`` planned and submitted by ``backend`` (a default LocalBackend)."""
    backend = backend or LocalBackend()
    return backend.submit(backend.plan(spec), **options)


def write(path: Path, **changes: Any) -> Path:
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return path


def check_layout(root: Path | Store, sweep: str, run: str, classes: list[int]) -> TrainSummary:
    """Exactly the result layout (README, "Results layout") for one run, with valid records."""
    store = root if isinstance(root, Store) else FileStore(root)
    summary = TrainSummary.model_validate_json(store.read_bytes(keys.summary_json(sweep, run)))
    want = {
        keys.run_json(sweep, run),
        keys.history_csv(sweep, run),
        keys.summary_json(sweep, run),
        keys.log(sweep, run),
        keys.records(sweep, run),
        keys.success(sweep, run),
        keys.test_labels(sweep, run),
    }
    for e in summary.checkpoint_epochs:
        base = keys.base_metrics(sweep, run, e)
        want |= {keys.checkpoint(sweep, run, e), base, keys.predictions(base)}
        for c in classes:
            want |= {
                keys.repair_metrics(sweep, run, e, c),
                keys.predictions(keys.repair_metrics(sweep, run, e, c)),
                keys.repair_patch(sweep, run, e, c),
                keys.repair_search(sweep, run, e, c),
            }
    assert set(store.list(f"{sweep}/{run}/")) == want
    for key in want:
        if key.endswith("metrics.json"):
            rec = MetricsRecord.model_validate_json(store.read_bytes(key))
            assert (rec.sweep, rec.run, rec.schema_version) == (sweep, run, SCHEMA_VERSION)
    return summary


@pytest.mark.slow
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
        assert "run " + run in (record(results) / f"{run}.log").read_text()

    backend = LocalBackend()
    rows = backend.status(SWEEP)
    assert [(s.run, s.state, s.message) for s in rows] == [
        (run, RunState.SUCCEEDED, "done") for run in runs
    ]
    lines = list(backend.logs(SWEEP))
    assert any(x.startswith("[digits-small-cnn-s2] ") and "complete" in x for x in lines)
    only = list(backend.logs(SWEEP, "digits-small-cnn-s1"))
    assert only and not only[0].startswith("[")
    assert list(backend.logs(SWEEP, "1")) == list(backend.logs(SWEEP, "digits-small-cnn-s2"))
    with pytest.raises(BadInput, match=r"runs .*: digits-small-cnn-s1, digits-small-cnn-s2"):
        list(backend.logs(SWEEP, "nope"))
    with pytest.raises(BadInput, match="no run '2'"):
        list(backend.logs(SWEEP, "2"))
    with pytest.raises(BadInput, match="nothing is running"):
        backend.cancel(SWEEP)
    state = json.loads((record(results) / "state.json").read_text())
    assert state["pid"] is None and state["results"] == str(results)
    assert {v["state"] for v in state["runs"].values()} == {"SUCCEEDED"}
    assert set(os.listdir(cache)) == {SWEEP}  # nothing but this sweep's record

    # Run again: the store shows both runs complete, so no trainer process starts.
    r = cli("run", spec, "--results", results, "--workers", "2")
    assert r.code == 0, r.err
    assert "ok digits-small-cnn-s1 (complete before; not started)" in r.err
    state = json.loads((record(results) / "state.json").read_text())
    assert all("cmdline" not in v or v["cmdline"] is None for v in state["runs"].values())
    assert [s.state for s in backend.status(SWEEP)] == [RunState.SUCCEEDED] * 2


@pytest.mark.slow
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

    assert "Traceback" not in (record(results) / "digits-broken-s1.log").read_text()

    rows = {s.run: s for s in LocalBackend().status(SWEEP)}
    assert rows["digits-small-cnn-s1"].state is RunState.SUCCEEDED
    assert rows["digits-broken-s1"].state is RunState.FAILED
    assert rows["digits-broken-s1"].message.startswith("exit 2")


@pytest.mark.slow
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
    out = submit(spec, dry_run=True)
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


def write_record(
    results: Path, *, pid: int | None = None, runs: dict[str, Any] | None = None
) -> Path:
    """A record as `run` leaves it for ``results``: state.json (``pid``: the `run`
    process) and the sweep file; returns its folder."""
    folder = record(results)
    folder.mkdir(parents=True, exist_ok=True)
    spec = parse_spec({**SPEC, "results": str(results)})
    (folder / "sweep.json").write_text(spec.model_dump_json())
    state = {
        "version": STATE_VERSION,
        "sweep": SWEEP,
        "results": str(results),
        "spec_file": str(folder / "sweep.json"),
        **(_identity(pid) if pid else {"pid": None, "pid_start": None, "cmdline": None}),
        "runs": runs or {},
    }
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def gone_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    return int(done.stdout)


@pytest.fixture
def processes() -> Any:
    """Start processes that are killed at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        code = "import time; print('ready', flush=True); time.sleep(60)"
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)
        started.append(proc)
        # Its identity (start time, command line) is read from /proc next: only once it
        # prints is it sure to be past exec, and not still a copy of this process.
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_sweep_already_running_is_refused(tmp_path: Path, cache: Path) -> None:
    results = tmp_path / "results"
    spec = parse_spec({**SPEC, "results": str(results)})
    write_record(results, pid=os.getpid())  # this very process plays the `run`
    with pytest.raises(BadInput, match=f"sweep '{SWEEP}' is already running"):
        submit(spec)
    assert not results.exists()
    # The same sweep into another results folder is another sweep: not blocked.
    other = parse_spec({**SPEC, "results": str(tmp_path / "elsewhere")})
    assert submit(other, dry_run=True).runs
    # A record left by a process that is gone does not block.
    state = json.loads((record(results) / "state.json").read_text())
    state["pid"] = gone_pid()
    (record(results) / "state.json").write_text(json.dumps(state))
    assert LocalBackend().live_state(SWEEP, str(results)) is None
    assert submit(spec, dry_run=True).runs


def test_a_sweep_another_process_has_claimed_is_refused(tmp_path: Path, cache: Path) -> None:
    """Two `run`s started at the same moment both pass the state-file check; the lock that
    the first one takes is what stops the second before it writes or starts anything."""
    results = tmp_path / "results"
    spec = parse_spec({**SPEC, "results": str(results)})
    backend = LocalBackend()
    lock = backend.log_dir(SWEEP, str(results)) / "run.lock"
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
        assert backend.live_state(SWEEP, str(results)) is None  # the check alone would pass
        with pytest.raises(BadInput, match=f"sweep '{SWEEP}' is already running"):
            backend.submit(backend.plan(spec))
        assert not backend.state_file(SWEEP, str(results)).exists()
        assert not (backend.log_dir(SWEEP, str(results)) / "sweep.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_cancel_stops_runs_left_behind_by_a_killed_run_process(
    tmp_path: Path, cache: Path, processes: Any
) -> None:
    orphan = processes("trainer", "--sweep", "x", "--run-index", "0")
    results = tmp_path / "results"
    write_record(results, runs={"r": _identity(orphan.pid)})
    state = json.loads((record(results) / "state.json").read_text())
    state["pid"], state["pid_start"] = gone_pid(), "1"  # the `run` process was killed
    (record(results) / "state.json").write_text(json.dumps(state))
    LocalBackend().cancel(SWEEP)
    assert orphan.wait(timeout=10) == -15
    with pytest.raises(BadInput, match="nothing is running"):
        LocalBackend().cancel(SWEEP)


def test_only_the_recorded_trainer_is_ever_signalled(
    tmp_path: Path, cache: Path, processes: Any
) -> None:
    """A record may outlive its processes, and pids are reused: the pid is signalled only
    if /proc still shows the same start time and the same (trainer) command line."""
    bystander = processes()  # alive, but no trainer: e.g. the user's editor got the pid
    trainer = processes("trainer", "--sweep", "x", "--run-index", "0")
    results = tmp_path / "results"
    forged = [
        {**_identity(bystander.pid)},  # exactly recorded, but not a trainer command
        {**_identity(trainer.pid), "pid_start": "1"},  # the pid, started at another time
        {**_identity(trainer.pid), "cmdline": ["python", "trainer", "--run-index", "0"]},
        {"pid": trainer.pid, "pid_start": _identity(trainer.pid)["pid_start"]},  # no cmdline
        {"pid": True, "pid_start": "1", "cmdline": []},
    ]
    for rec in forged:
        write_record(results, runs={"r": rec})
        with pytest.raises(BadInput, match="nothing is running"):
            LocalBackend().cancel(SWEEP)
    # A `run` process recorded with another command line is not signalled either.
    write_record(results, pid=bystander.pid)
    state = json.loads((record(results) / "state.json").read_text())
    state["cmdline"] = ["early-repair", "run", "x.yaml"]
    (record(results) / "state.json").write_text(json.dumps(state))
    with pytest.raises(BadInput, match="nothing is running"):
        LocalBackend().cancel(SWEEP)
    assert bystander.poll() is None and trainer.poll() is None  # neither was touched


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "a/b", "Quick", "x" * 41, "a\n"])
def test_names_are_checked_before_they_become_paths(
    cli, name: str, tmp_path: Path, cache: Path
) -> None:
    # A state file where `../x` would lead, naming a live process: it must not be read.
    (cache / "x" / "k").mkdir(parents=True)
    (cache / "x.json").write_text(json.dumps({"sweep": "x", "pid": os.getpid()}))
    for command in ("cancel", "status", "logs"):
        r = cli(command, name, "--local")
        assert r.code == 2, (command, r.err)
        (line,) = r.err.strip().splitlines()
        # The CLI checks the name first; the backend checks it again before any path.
        assert line.startswith("error: ")
        assert "is not a sweep name" in line or "is not a valid Kubernetes name" in line
    with pytest.raises(BadInput, match="is not a sweep name"):
        LocalBackend().record_dir(name, str(tmp_path))


def test_one_sweep_name_in_two_results_locations(
    cli, tmp_path: Path, cache: Path, processes: Any
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for results, seed in ((a, "1"), (b, "2")):
        write_record(results)
        store = FileStore(results)
        spec = parse_spec({**SPEC, "results": str(results)})
        store.write_bytes(keys.sweep_json(SWEEP), spec.model_dump_json().encode())
        store.write_bytes(keys.log(SWEEP, f"digits-small-cnn-s{seed}"), f"log of {seed}\n".encode())
    assert record(a) != record(b) and record(a).parent == record(b).parent
    r = cli("status", SWEEP, "--local")
    assert r.code == 2
    assert r.err.strip() == (
        f"error: sweep '{SWEEP}' was run on this machine into 2 results locations"
        f" ({a}, {b}): pass --results URI to pick one"
    )
    assert cli("logs", SWEEP, "--local").code == 2
    r = cli("logs", SWEEP, "--local", "--results", b, "--run", "1")
    assert (r.code, r.out) == (0, "log of 2\n")
    r = cli("logs", SWEEP, "--local", "--results", f"file://{a}", "--run", "0")
    assert (r.code, r.out) == (0, "log of 1\n")
    r = cli("status", SWEEP, "--local", "--results", a, "--json")
    assert r.code == 0 and [x["state"] for x in json.loads(r.out)["runs"]] == ["PENDING"] * 2
    # Results location with no record here: the store alone answers.
    c = tmp_path / "c"
    FileStore(c).write_bytes(keys.sweep_json(SWEEP), parse_spec(SPEC).model_dump_json().encode())
    assert cli("status", SWEEP, "--local", "--results", c).code == 0
    r = cli("status", SWEEP, "--results", a)
    assert r.code == 2 and r.err.strip() == (
        "error: --results does not apply to the kubernetes backend; leave it out"
    )
    # cancel: only a record with something running is a candidate.
    trainer = processes("trainer", "--sweep", "x", "--run-index", "1")
    write_record(b, runs={"digits-small-cnn-s2": _identity(trainer.pid)})
    r = cli("cancel", SWEEP, "--local")
    assert r.code == 0, r.err
    assert trainer.wait(timeout=10) == -15


def test_logs_show_a_running_run_live_and_status_its_current_epoch(
    cli, tmp_path: Path, cache: Path, processes: Any
) -> None:
    results = tmp_path / "results"
    store = FileStore(results)
    run = "digits-small-cnn-s1"
    store.write_bytes(keys.log(SWEEP, run), b"archived at the last step\n")
    for epoch in (1, 5):
        store.write_bytes(keys.checkpoint(SWEEP, run, epoch), b"x")
    header = "epoch,loss,acc,val_loss,val_acc,lr,seconds\n"
    rows = "".join(f"{e},0.5,0.8,0.6,0.7,0.001,1.0\n" for e in range(1, 8))
    store.write_bytes(keys.history_csv(SWEEP, run), (header + rows).encode())
    trainer = processes("trainer", "--sweep", "x", "--run-index", "0")
    folder = record(results)
    live = folder / f"{run}.log"
    write_record(
        results,
        pid=os.getpid(),
        runs={run: {"state": "RUNNING", "log": str(live), **_identity(trainer.pid)}},
    )
    live.write_text("epoch 7/30: loss 0.5\n")
    r = cli("logs", SWEEP, "--local", "--run", "0")
    assert (r.code, r.out) == (0, "epoch 7/30: loss 0.5\n")
    r = cli("status", SWEEP, "--local", "--json")
    row = json.loads(r.out)["runs"][0]
    assert (row["state"], row["progress"]["epoch"], row["progress"]["checkpoint"]) == (
        "RUNNING",
        7,
        5,
    )
    assert row["message"].startswith("epoch 7")
    # A log path outside the record's folder is never read.
    state = json.loads((folder / "state.json").read_text())
    state["runs"][run]["log"] = str(tmp_path / "elsewhere.log")
    (tmp_path / "elsewhere.log").write_text("not ours\n")
    (folder / "state.json").write_text(json.dumps(state))
    assert cli("logs", SWEEP, "--local", "--run", run).out == "archived at the last step\n"
    # Once the trainer has ended, the archived log is the one shown.
    trainer.kill()
    trainer.wait()
    state["runs"][run]["log"] = str(live)
    (folder / "state.json").write_text(json.dumps(state))
    assert cli("logs", SWEEP, "--local", "--run", run).out == "archived at the last step\n"


def test_complete_runs_need_no_trainer_unless_work_is_left(tmp_path: Path) -> None:
    from orchestrator.results.records import RunInfo

    store = FileStore(tmp_path / "results")
    spec = parse_spec({**SPEC, "results": str(store.root)})
    runs = spec.runs()
    for run in runs:
        info = RunInfo(
            run=run.model_dump(mode="json"),
            versions={},
            device="cpu",
            hostname="h",
            started="2026-01-01T00:00:00+00:00",
        )
        store.write_bytes(keys.run_json(SWEEP, run.name), info.model_dump_json().encode())
        summary = {"checkpoint_epochs": [1, 5], "epochs_trained": 6}
        store.write_bytes(keys.summary_json(SWEEP, run.name), json.dumps(summary).encode())
        for e in (1, 5):
            store.write_bytes(keys.base_metrics(SWEEP, run.name, e), b"{}")
            store.write_bytes(keys.repair_metrics(SWEEP, run.name, e, 3), b"{}")
        store.write_bytes(keys.success(SWEEP, run.name), b"")
    backend = LocalBackend()
    assert backend._complete_runs(store, runs) == {r.name for r in runs}
    # A new class makes both unfinished again; so does a missing step of one run.
    wider = parse_spec(
        {**SPEC, "results": str(store.root), "repair": {**SPEC["repair"], "classes": [3, 4]}}
    )
    assert backend._complete_runs(store, wider.runs()) == set()
    store.delete_prefix(keys.base_metrics(SWEEP, runs[0].name, 5))
    assert backend._complete_runs(store, runs) == {runs[1].name}
    # Another experiment under the same names (another lr): the trainer must say so.
    other = parse_spec({**SPEC, "training": {**SPEC["training"], "lr": 0.5}})
    assert backend._complete_runs(store, other.runs()) == set()
    store.write_bytes(keys.run_json(SWEEP, runs[1].name), b"garbage")
    assert backend._complete_runs(store, runs) == set()


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
        env={**os.environ, "EARLY_REPAIR_STATE_DIR": str(cache)},
    )
    summary_key = results / keys.summary_json(SWEEP, "digits-small-cnn-s1")
    deadline = time.monotonic() + 120
    while not summary_key.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    state = json.loads((record(results) / "state.json").read_text())
    child = state["runs"]["digits-small-cnn-s1"]["pid"]
    assert child and state["pid"] == proc.pid

    LocalBackend().cancel(SWEEP)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # stopped by cancel's SIGTERM (README exit codes)
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_process_is_recorded_with_its_command_line_right_after_popen() -> None:
    # CPython's Popen returns when the child execs, at times before the kernel has set up
    # its arguments (/proc/PID/cmdline empty); about a third of 300 tries showed it here.
    cmd = [sys.executable, "-c", "import time; time.sleep(60)", "trainer", "--run-index", "0"]
    for _ in range(50):
        proc = subprocess.Popen(cmd)
        try:
            assert _identity(proc.pid)["cmdline"] == cmd
        finally:
            proc.kill()
            proc.wait()
