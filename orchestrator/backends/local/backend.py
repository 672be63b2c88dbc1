"""The local backend: every run of a sweep as a trainer process on this machine.

It runs exactly what a Kubernetes pod runs (``early-repair trainer --sweep FILE
--run-index N``), so a sweep that works here works on a cluster, and a crashed or cancelled
sweep is resumed by running it again (the trainer skips finished steps). Runs are separate
processes - at most ``workers`` at once, a failing run never stops the others - whose
JSON progress lines feed one rich progress display on stderr and whose stderr is kept in
a per-run log file. A small state file (``$XDG_CACHE_HOME/early-repair/local/<sweep>.json``)
records the running processes so that ``cancel`` and ``status`` work from another shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
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
from orchestrator.backends.local.parent import PARENT_ENV
from orchestrator.backends.progress import describe, sweep_progress
from orchestrator.errors import BadInput, EarlyRepairError, StoreError
from orchestrator.gpu.nvml import Nvml
from orchestrator.gpu.packing import GpuPool
from orchestrator.results import events
from orchestrator.results import layout as keys
from orchestrator.spec import RunSpec, SweepSpec, parse_spec
from orchestrator.store import KeyMissing, Store, open_results, read_json
from orchestrator.store.file import FileStore

STATE_VERSION = 1


def state_dir() -> Path:
    """Where local sweeps keep their state and per-run logs (per user, not per project)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "early-repair" / "local"


def default_workers(spec: SweepSpec, n_runs: int, cpus: int | None = None) -> int:
    """As many runs at once as the CPUs allow given each run's torch threads."""
    cpus = cpus or os.cpu_count() or 1
    per_run = spec.training.num_threads or cpus
    return max(1, min(n_runs, cpus // per_run))


def _proc_start(pid: int) -> str | None:
    """The process's start time (Linux), so a recycled pid is not mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int | None, start: str | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process now holds that pid
    return start is None or _proc_start(pid) in (None, start)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _last_line(path: Path) -> str:
    """The last non-empty line of a log: the trainer's one-line error, or a traceback's end."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


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


class LocalBackend:
    """Runs sweeps as local trainer processes; ``status``/``logs``/``cancel`` by sweep name.

    ``store`` overrides where ``status`` and ``logs`` look (default: the results location
    recorded when the sweep was submitted on this machine).
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
    ) -> None:
        if workers is not None and workers < 1:
            raise BadInput(f"--workers must be at least 1, got {workers}")
        self.workers = workers
        self._store = store
        self.state_root = state_root or state_dir()
        self.console = console or Console(stderr=True)
        self.python = python
        self.poll_s = poll_s
        self.sleep = sleep
        self._lock = threading.RLock()  # also taken by the signal handler, on the main thread
        self._cancelled = threading.Event()
        self.stopped_by: int | None = None  # the signal that stopped the last submit
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._state: dict[str, Any] = {}
        self.nvml = nvml  # None: the real NVML, asked once per submit
        self._gpus: GpuPool | None = None

    name = "local"

    # The CLI options this backend takes (``open_backend`` refuses the others).
    options = ("workers",)

    # --- state file -------------------------------------------------------------------

    def state_file(self, sweep: str) -> Path:
        return self.state_root / f"{sweep}.json"

    def log_dir(self, sweep: str) -> Path:
        return self.state_root / sweep

    def read_state(self, sweep: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file(sweep).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def live_state(self, sweep: str) -> dict[str, Any] | None:
        """The state of a sweep whose ``run`` process is still alive, else None."""
        state = self.read_state(sweep)
        if state and _alive(state.get("pid"), state.get("pid_start")):
            return state
        return None

    def _save_state(self) -> None:
        with self._lock:
            text = json.dumps(self._state, indent=2, sort_keys=True)
            _atomic_write(self.state_file(self._state["sweep"]), text + "\n")

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
        running = self.live_state(spec.name)
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
                f"cannot keep local state in {self.state_root}: {problem}; set XDG_CACHE_HOME"
                " to a writable folder"
            )

    def submit(self, spec: SweepSpec, *, dry_run: bool = False) -> LocalSubmitResult:
        """Run every run of the sweep; returns when all have ended."""
        runs = spec.runs()
        store = self.check(spec)
        # Before anything is created: find the GPUs; a run none can hold is bad input.
        self._gpus = GpuPool.discover(spec.resources, nvml=self.nvml, log=self._say)
        out = LocalSubmitResult(
            sweep=spec.name,
            results=store.uri,
            dry_run=dry_run,
            log_dir=str(self.log_dir(spec.name)),
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
        logs = self.log_dir(spec.name)
        try:
            logs.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(
                f"cannot keep local state in {logs} ({e.strerror or e}); set XDG_CACHE_HOME"
                " to a writable folder"
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

        fd = os.open(logs / "run.lock", os.O_CREAT | os.O_RDWR, 0o600)
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
        spec_file = logs / "sweep.json"
        effective = spec
        if isinstance(store, FileStore) and spec.results != store.uri:
            # Children (and a later `status` from another folder) must find the same place.
            effective = spec.model_copy(update={"results": store.uri})
        _atomic_write(spec_file, effective.model_dump_json(indent=2) + "\n")
        self._cancelled.clear()
        self.stopped_by = None
        self._state = {
            "version": STATE_VERSION,
            "sweep": spec.name,
            "pid": os.getpid(),
            "pid_start": _proc_start(os.getpid()),
            "results": store.uri,
            "spec_file": str(spec_file),
            "workers": workers,
            "runs": {r.name: {"index": r.index, "state": RunState.PENDING.value} for r in runs},
        }
        self._save_state()
        restore = self._trap_signals()
        try:
            with (
                Display(self.console, spec, len(runs)) as display,
                ThreadPoolExecutor(workers, thread_name_prefix="run") as pool,
            ):
                futures = [
                    pool.submit(self._run_one, run, spec_file, logs, workers, display)
                    for run in runs
                ]
                return [f.result() for f in futures]
        finally:
            restore()
            with self._lock:
                self._state["pid"] = None  # ended: nothing for `cancel` to stop
            self._save_state()

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
        self, run: RunSpec, spec_file: Path, logs: Path, workers: int, display: Display
    ) -> RunStatus:
        if self._cancelled.is_set():
            status = RunStatus(run.index, run.name, RunState.CANCELLED, message="not started")
            self._set_run(run.name, state=status.state.value)
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
            self._set_run(
                run.name,
                state=RunState.RUNNING.value,
                pid=proc.pid,
                pid_start=_proc_start(proc.pid),
                log=str(log_path),
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
        self._set_run(run.name, state=status.state.value, exit_code=code, pid=None)
        display.end(task, status, seconds)
        return status

    # --- status, logs, cancel -----------------------------------------------------------

    def _locate(self, sweep: str) -> tuple[Store, list[RunSpec], dict[str, Any] | None]:
        """The sweep's store and runs: from this machine's record, else from the store."""
        state = self.read_state(sweep)
        spec: SweepSpec | None = None
        if state and state.get("spec_file"):
            with contextlib.suppress(OSError, ValueError, BadInput):
                spec = parse_spec(json.loads(Path(state["spec_file"]).read_text()))
        if spec is not None and spec.name != sweep:
            spec = None
        store = self._store
        if store is None:
            if spec is None:
                raise BadInput(
                    f"sweep {sweep!r} was not run on this machine (no record in"
                    f" {self.state_root}); check the name, or drop --local for a cluster sweep"
                )
            # With the S3 endpoint and region it ran with.
            store = open_results(spec.results, spec.storage)
        if spec is None:
            try:
                spec = parse_spec(read_json(store, keys.sweep_json(sweep)), "sweep.json")
            except KeyMissing as e:
                raise BadInput(f"no sweep {sweep!r} in {store.uri}") from e
        return store, spec.runs(), state

    def status(self, sweep: str) -> list[RunStatus]:
        store, runs, state = self._locate(sweep)
        live = bool(state and _alive(state.get("pid"), state.get("pid_start")))
        recorded = (state or {}).get("runs", {})
        progress = sweep_progress(store, runs)
        out = []
        for run in runs:
            p = progress[run.name]
            rec = recorded.get(run.name, {})
            if p["done"]:
                st = RunState.SUCCEEDED
            elif live and rec.get("state") == RunState.RUNNING.value:
                st = RunState.RUNNING
            elif live and rec.get("state") in (None, RunState.PENDING.value):
                st = RunState.PENDING
            elif rec.get("state") in (RunState.FAILED.value, RunState.CANCELLED.value):
                st = RunState(rec["state"])
            elif p["epoch"] is not None or p["trained"]:
                st = RunState.FAILED  # started, not running, not done: a crash
            else:
                st = RunState.PENDING
            message = describe(p)
            if st is RunState.FAILED and rec.get("exit_code") not in (None, 0):
                message = f"exit {rec['exit_code']}; {message}"
            out.append(RunStatus(run.index, run.name, st, message=message, progress=p))
        return out

    def watch(self, sweep: str) -> Iterator[list[RunStatus]]:
        """``status`` every ``poll_s`` seconds while the sweep's processes are alive."""
        while True:
            states = self.status(sweep)
            yield states
            if self.live_state(sweep) is None or all(s.state.terminal for s in states):
                return
            self.sleep(self.poll_s)

    def logs(self, sweep: str, run: str | None = None, *, follow: bool = False) -> Iterator[str]:
        """The archived trainer logs (``<run>/logs/trainer.log``), prefixed with the run name."""
        store, runs, _state = self._locate(sweep)
        names = [r.name for r in runs]
        if run is not None and run not in names:
            raise BadInput(f"run {run!r} is not in sweep {sweep!r}; runs: {', '.join(names)}")
        wanted = [run] if run else names
        seen = dict.fromkeys(wanted, 0)
        while True:
            blobs = store.read_many([keys.log(sweep, n) for n in wanted])
            for name in wanted:
                blob = blobs[keys.log(sweep, name)]
                if isinstance(blob, KeyMissing):
                    continue  # no log archived yet
                if isinstance(blob, EarlyRepairError):  # wrong credentials, no bucket, ...
                    raise blob
                if isinstance(blob, Exception):  # an OSError from a folder store
                    raise StoreError(f"{store.uri}/{keys.log(sweep, name)}: cannot read ({blob})")
                # While following, hold back a partial last line until it is complete.
                end = blob.rfind(b"\n", seen[name]) + 1 if follow else len(blob)
                chunk, seen[name] = blob[seen[name] : max(end, seen[name])], max(end, seen[name])
                for line in chunk.decode(errors="replace").splitlines():
                    yield line if run else f"[{name}] {line}"
            if not follow or not self.live_state(sweep):
                return
            self.sleep(self.poll_s)

    def cancel(self, sweep: str) -> list[str]:
        """Stop a running local sweep: its runs end as CANCELLED and can be resumed later.

        Returns what was signalled (``pid/N``)."""
        state = self.read_state(sweep) or {}
        if _alive(state.get("pid"), state.get("pid_start")):
            targets = [state["pid"]]  # it terminates its runs and starts no more
        else:
            # Runs outlive a `run` process that was killed; stop them one by one.
            targets = [
                rec["pid"]
                for rec in state.get("runs", {}).values()
                if _alive(rec.get("pid"), rec.get("pid_start"))
            ]
        if not targets:
            raise BadInput(f"nothing is running for sweep {sweep!r} on this machine")
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        return [f"pid/{pid}" for pid in targets]
