"""The local backend: every run of a sweep as a trainer process on this machine.

It runs exactly what a Kubernetes pod runs (``early-repair trainer --sweep FILE
--run-index N``), so a sweep that works here works on a cluster, and a crashed or cancelled
sweep is resumed by running it again (the trainer skips finished steps). Runs are separate
processes - at most ``workers`` at once, a failing run never stops the others - whose
JSON progress lines feed one rich progress display on stderr and whose stderr is kept in
a per-run log file. A run the store shows complete (``_SUCCESS`` and every output of its
current classes) starts no process at all.

A small record per (results location, sweep) lets ``cancel``, ``status`` and ``logs``
work from another shell. The backend is split by concern: ``records`` (where records live
and how they are read), ``processes`` (knowing a recorded process again before it is
signalled), ``follow`` (status, watch, logs and cancel from any shell) and this module
(planning and running a sweep: processes, GPU slots, the display, signals).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.backends.base import RunState, RunStatus, SubmitResult
from orchestrator.backends.local.display import Display, duration
from orchestrator.backends.local.follow import Following
from orchestrator.backends.local.parent import PARENT_ENV
from orchestrator.backends.local.plan import LocalPlan
from orchestrator.backends.local.processes import _identity, _last_line
from orchestrator.backends.local.records import (
    LOCK_FILE,
    SPEC_FILE,
    STATE_DIR_ENV,
    STATE_FILE,
    STATE_VERSION,
    canonical_results,
    state_dir,
)
from orchestrator.backends.progress import sweep_progress
from orchestrator.common.atomic import atomic_write
from orchestrator.errors import BadInput
from orchestrator.gpu.nvml import Nvml
from orchestrator.gpu.packing import GpuPool
from orchestrator.results import events
from orchestrator.results import layout as keys
from orchestrator.results.records import experiment
from orchestrator.spec import RunSpec, SweepSpec
from orchestrator.store import Store, open_results
from orchestrator.store.file import FileStore


def default_workers(spec: SweepSpec, n_runs: int, cpus: int | None = None) -> int:
    """As many runs at once as the CPUs allow given each run's torch threads."""
    cpus = cpus or os.cpu_count() or 1
    per_run = spec.training.num_threads or cpus
    return max(1, min(n_runs, cpus // per_run))


@dataclass
class LocalSubmitResult(SubmitResult):
    """What ``submit`` did: one ``RunStatus`` per run, in run order."""

    results: str = ""
    runs: list[RunStatus] = field(default_factory=list)
    seconds: float = 0.0
    log_dir: str = ""

    @property
    def failed(self) -> list[RunStatus]:
        return [r for r in self.runs if r.state is not RunState.SUCCEEDED]

    def summary(self) -> str:
        """One line for stderr."""
        n, bad = len(self.runs), self.failed
        took = duration(self.seconds)
        if self.dry_run:
            return f"{n} run(s) of sweep {self.sweep} would run; nothing started (dry run)"
        if not bad:
            return f"{n} of {n} runs of sweep {self.sweep} succeeded in {took}"
        first = bad[0]
        return (
            f"{len(bad)} of {n} runs of sweep {self.sweep} did not succeed in {took};"
            f" first: {first.run} {first.state.value.lower()}: {first.message}"
            f" (logs in {self.log_dir})"
        )


class LocalBackend(Following):
    """Runs sweeps as local trainer processes; ``status``/``logs``/``cancel`` by sweep name.

    ``results`` picks the record of that results location when one sweep name was run
    into several (``--results``); ``store`` overrides where ``status`` and ``logs`` look
    (default: the results location recorded when the sweep was submitted on this machine).
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        store: Store | None = None,
        state_root: Path | None = None,
        console: Console | None = None,
        python: str = sys.executable,
        poll_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        nvml: Nvml | None = None,
        results: str | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise BadInput(f"--workers must be at least 1, got {workers}")
        super().__init__(
            state_root or state_dir(),
            None if results is None else canonical_results(results),
            store=store,
            poll_s=poll_s,
            sleep=sleep,
        )
        self.workers = workers
        self.console = console or Console(stderr=True)
        self.python = python
        self._lock = threading.RLock()  # also taken by the signal handler, on the main thread
        self._cancelled = threading.Event()
        self.stopped_by: int | None = None  # the signal that stopped the last submit
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._state: dict[str, Any] = {}
        self._record: Path | None = None
        self.nvml = nvml  # None: the real NVML, asked once per submit
        self._gpus: GpuPool | None = None

    name = "local"

    # The CLI options this backend takes (``open_backend`` refuses the others); ``results``
    # picks one record when a sweep name was run into several results locations.
    options = ("workers", "results")

    def _save_state(self) -> None:
        with self._lock:
            assert self._record is not None
            text = json.dumps(self._state, indent=2, sort_keys=True)
            atomic_write(self._record / STATE_FILE, text + "\n")

    def _set_run(self, name: str, **fields: Any) -> None:
        with self._lock:
            self._state["runs"].setdefault(name, {}).update(fields)
        self._save_state()

    # --- per-run environment ----------------------------------------------------------

    @contextlib.contextmanager
    def _env_for(self, run: RunSpec, workers: int) -> Iterator[dict[str, str]]:
        """The child's environment, held for the run's lifetime (a GPU slot hooks in here)."""
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env[PARENT_ENV] = str(os.getpid())  # the trainer ends with us (backends.local.parent)
        if run.training.num_threads is None:
            # torch would take every core in every run; share them out instead.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        # GPU memory is promised until the run's process has ended (orchestrator.gpu.packing);
        # the slot sets CUDA_VISIBLE_DEVICES (GPU UUIDs, or "" when resources.gpus is 0).
        pool = self._gpus if self._gpus is not None else GpuPool([], run.resources)
        slot = pool.try_acquire(run.name)
        if slot is None:
            self._say(f"{run.name} waits for GPU memory held by other runs of this sweep")
            slot = pool.acquire(run.name)
        if slot.gpus:
            self._say(f"{run.name} on {slot.where}")
        env.update(slot.env)
        try:
            yield env
        finally:
            pool.release(slot)

    def _say(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    # --- submit -------------------------------------------------------------------------

    def check(self, spec: SweepSpec) -> Store:
        """Everything that can be checked before anything is created; returns the store."""
        store = self._store or open_results(spec.results, spec.storage)
        store.check()  # a file for a folder, a missing bucket, bad credentials: exit 2 now
        running = self.live_state(spec.name, store.uri)
        if running:
            raise BadInput(
                f"sweep {spec.name!r} is already running on this machine (pid {running['pid']});"
                " wait for it or cancel it first"
            )
        self._check_state_root()
        return store

    def _check_state_root(self) -> None:
        """BadInput, before anything is created, if the state folder cannot be made or
        written (XDG_CACHE_HOME read-only, or a file): its first existing ancestor decides."""
        where = self.state_root
        while not where.exists() and where != where.parent:
            where = where.parent
        problem = None
        if not where.is_dir():
            problem = f"{where} is not a folder"
        elif not os.access(where, os.W_OK | os.X_OK):
            problem = f"{where} is not writable"
        if problem:
            raise BadInput(
                f"cannot keep local state in {self.state_root}: {problem}; set"
                f" {STATE_DIR_ENV} to a writable folder"
            )

    @property
    def where(self) -> str:
        return "local"

    def plan(self, spec: SweepSpec) -> LocalPlan:
        """The sweep's runs as trainer processes here; nothing is checked or started."""
        return LocalPlan(spec)

    def submit(
        self, plan: LocalPlan, *, dry_run: bool = False, replace: bool = False
    ) -> LocalSubmitResult:
        """Run every run of the planned sweep; returns when all have ended."""
        if not isinstance(plan, LocalPlan):
            raise TypeError(f"submit takes this backend's plan(spec), not {type(plan).__name__}")
        if replace:
            raise BadInput("--replace does not apply to the local backend; leave it out")
        spec = plan.spec
        runs = spec.runs()
        store = self.check(spec)
        # Before anything is created: find the GPUs; a run none can hold is bad input.
        self._gpus = GpuPool.discover(spec.resources, nvml=self.nvml, log=self._say)
        out = LocalSubmitResult(
            sweep=spec.name,
            results=store.uri,
            dry_run=dry_run,
            log_dir=str(self.log_dir(spec.name, store.uri)),
            runs=[RunStatus(r.index, r.name, RunState.PENDING) for r in runs],
        )
        if dry_run:
            return out
        if isinstance(store, FileStore):
            try:
                store.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BadInput(
                    f"results: cannot create {store.root} ({e.strerror}); pass a writable folder"
                ) from e
        workers = self.workers or default_workers(spec, len(runs))
        workers = min(workers, len(runs))
        started = time.perf_counter()
        logs = self.log_dir(spec.name, store.uri)
        try:
            logs.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(
                f"cannot create the local state folder {logs} ({e.strerror or e}): set"
                f" {STATE_DIR_ENV} to a writable folder"
            ) from e
        claim = self._claim(spec.name, logs)
        try:
            out.runs = self._run_all(spec, runs, store, workers, logs)
        finally:
            os.close(claim)
        out.seconds = time.perf_counter() - started
        return out

    def _claim(self, sweep: str, logs: Path) -> int:
        """Lock the sweep for this process (released when it ends, even by a crash), so two
        `run`s of one sweep started at the same moment cannot both pass ``check``."""
        import fcntl

        fd = os.open(logs / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise BadInput(
                f"sweep {sweep!r} is already running on this machine; wait for it or cancel"
                " it first"
            ) from e
        return fd

    def _run_all(
        self, spec: SweepSpec, runs: list[RunSpec], store: Store, workers: int, logs: Path
    ) -> list[RunStatus]:
        spec_file = logs / SPEC_FILE
        effective = spec
        if isinstance(store, FileStore) and spec.results != store.uri:
            # Children (and a later `status` from another folder) must find the same place.
            effective = spec.model_copy(update={"results": store.uri})
        atomic_write(spec_file, effective.model_dump_json(indent=2) + "\n")
        self._cancelled.clear()
        self._record = logs
        self.stopped_by = None
        self._state = {
            "version": STATE_VERSION,
            "sweep": spec.name,
            **_identity(os.getpid()),
            "results": store.uri,
            "spec_file": str(spec_file),
            "workers": workers,
            "runs": {r.name: {"index": r.index, "state": RunState.PENDING.value} for r in runs},
        }
        self._save_state()
        # The store first: a run it shows complete needs no trainer (one that only starts,
        # imports torch and says "nothing to do" costs seconds per run on resume).
        complete = self._complete_runs(store, runs)
        restore = self._trap_signals()
        try:
            with (
                Display(self.console, spec, len(runs)) as display,
                ThreadPoolExecutor(workers, thread_name_prefix="run") as pool,
            ):
                futures = [
                    pool.submit(
                        self._run_one, run, spec_file, logs, workers, display, run.name in complete
                    )
                    for run in runs
                ]
                return [f.result() for f in futures]
        finally:
            restore()
            with self._lock:
                self._state.update(pid=None, pid_start=None, cmdline=None)  # nothing to stop
            self._save_state()

    def _complete_runs(self, store: Store, runs: list[RunSpec]) -> set[str]:
        """Runs the store shows complete for this very experiment (its run.json names the
        same dataset, model, seed, training and repair), so their trainer would do nothing.
        Anything unclear is left to the trainer, which says what is wrong."""
        progress = sweep_progress(store, runs)
        candidates = {
            keys.run_json(r.sweep, r.name): r for r in runs if progress[r.name]["complete"]
        }
        out = set()
        for key, blob in store.read_many(list(candidates)).items():
            run = candidates[key]
            if not isinstance(blob, bytes):
                continue
            try:
                stored = RunSpec.model_validate(json.loads(blob)["run"]).model_dump(mode="json")
            except (ValueError, KeyError, TypeError):  # pydantic's ValidationError included
                continue
            if experiment(stored) == experiment(run.model_dump(mode="json")):
                out.add(run.name)
        return out

    def _trap_signals(self) -> Callable[[], None]:
        """SIGTERM/SIGINT stop the sweep cleanly: children terminated, no new runs started."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum: int, _frame: Any) -> None:
            self.stopped_by = signum
            self._cancel_children()

        for s in previous:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    def _cancel_children(self) -> None:
        self._cancelled.set()
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()

    def _run_one(
        self,
        run: RunSpec,
        spec_file: Path,
        logs: Path,
        workers: int,
        display: Display,
        complete: bool = False,
    ) -> RunStatus:
        if self._cancelled.is_set():
            status = RunStatus(run.index, run.name, RunState.CANCELLED, message="not started")
            self._set_run(run.name, state=status.state.value)
            display.end(None, status, 0.0)
            return status
        if complete:
            status = RunStatus(
                run.index, run.name, RunState.SUCCEEDED, message="complete before; not started"
            )
            status.progress = {"seconds": 0.0, "exit_code": None, "log": None}
            self._set_run(run.name, state=status.state.value, exit_code=None, pid=None)
            display.end(None, status, 0.0)
            return status
        log_path = logs / f"{run.name}.log"
        cmd = [
            self.python,
            "-m",
            "orchestrator.cli",
            "trainer",
            "--sweep",
            str(spec_file),
            "--run-index",
            str(run.index),
        ]
        t0 = time.perf_counter()
        progress: dict[str, Any] = {"classes": len(run.repair_classes)}
        task = display.start(run, progress)
        with self._env_for(run, workers) as env, log_path.open("w") as log:
            try:
                proc = subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=log, env=env, text=True, bufsize=1
                )
            except OSError as e:
                status = RunStatus(
                    run.index, run.name, RunState.FAILED, message=f"cannot start {cmd[0]}: {e}"
                )
                self._set_run(run.name, state=status.state.value)
                display.end(task, status, 0.0)
                return status
            with self._lock:
                self._procs[run.name] = proc
            # Popen returns once the child has exec'd: /proc shows the trainer's command.
            self._set_run(
                run.name, state=RunState.RUNNING.value, log=str(log_path), **_identity(proc.pid)
            )
            if self._cancelled.is_set():
                proc.terminate()  # cancelled between the check above and the start
            assert proc.stdout is not None
            for line in proc.stdout:
                ev = events.from_line(line)
                if ev is not None:  # else a library printing to stdout; stderr is in the log
                    display.event(task, ev, progress)
            code = proc.wait()
            with self._lock:
                self._procs.pop(run.name, None)
        seconds = time.perf_counter() - t0
        if code == 0:
            status = RunStatus(run.index, run.name, RunState.SUCCEEDED)
        elif self._cancelled.is_set():
            status = RunStatus(run.index, run.name, RunState.CANCELLED, message="cancelled")
        else:
            why = _last_line(log_path) or "no output"
            status = RunStatus(run.index, run.name, RunState.FAILED, message=f"exit {code}: {why}")
        status.progress = {"seconds": round(seconds, 3), "exit_code": code, "log": str(log_path)}
        self._set_run(run.name, state=status.state.value, exit_code=code, pid=None, pid_start=None)
        display.end(task, status, seconds)
        return status
