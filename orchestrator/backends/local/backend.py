"""The local backend: every run of a sweep as a trainer process on this machine.

It runs exactly what a Kubernetes pod runs (``early-repair trainer --sweep FILE
--run-index N``), so a sweep that works here works on a cluster, and a crashed or cancelled
sweep is resumed by running it again (the trainer skips finished steps). Runs are separate
processes - at most ``workers`` at once, a failing run never stops the others - whose
JSON progress lines feed one rich progress display on stderr and whose stderr is kept in
a per-run log file. A run the store shows complete (``_SUCCESS`` and every output of its
current classes) starts no process at all.

A small record per (results location, sweep) - ``<state dir>/<sweep>/<16 hex of the
results URI>/`` holding ``state.json``, the sweep file the trainers read and their logs -
lets ``cancel``, ``status`` and ``logs`` work from another shell. The state dir is
``$EARLY_REPAIR_STATE_DIR``, else ``$XDG_CACHE_HOME/early-repair/local`` (``~/.cache/...``),
so the same sweep name in two results folders (two projects, or the test suite next to a
user's quickstart) never shares a record; the tests point it at a temporary folder. Sweep
names are checked (DNS labels, as in a spec) before they become paths, and a pid read from
a record is signalled only when /proc shows the very process recorded: the same start
time and the same command line, which for a run is our trainer command.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from orchestrator.backends.local.state_file import read_json_object, read_state
from orchestrator.backends.progress import describe, sweep_progress
from orchestrator.errors import BadInput, EarlyRepairError, StoreError
from orchestrator.gpu.nvml import Nvml
from orchestrator.gpu.packing import GpuPool
from orchestrator.results import events
from orchestrator.results import layout as keys
from orchestrator.results.records import experiment
from orchestrator.spec import (
    RunSpec,
    SweepSpec,
    check_sweep_name,
    parse_spec,
)
from orchestrator.store import KeyMissing, Store, open_results, open_store, read_json
from orchestrator.store.file import FileStore

STATE_VERSION = 2
STATE_DIR_ENV = "EARLY_REPAIR_STATE_DIR"
STATE_FILE = "state.json"
SPEC_FILE = "sweep.json"
LOCK_FILE = "run.lock"
KEY_CHARS = 16


def state_dir() -> Path:
    """Where local sweeps keep their records and per-run logs: ``$EARLY_REPAIR_STATE_DIR``,
    else per user (not per project) in the XDG cache folder."""
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "early-repair" / "local"


def results_key(results: str) -> str:
    """The record folder's name for a results location (its canonical URI)."""
    return hashlib.sha256(results.encode()).hexdigest()[:KEY_CHARS]


def canonical_results(uri: str, source: str = "--results") -> str:
    """The URI a store reports for ``uri``: an absolute path, or s3://bucket/prefix."""
    try:
        return open_store(uri).uri
    except BadInput as e:
        raise BadInput(f"{source}: {e}") from e


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
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


_CMDLINE_WAIT_S = 5.0  # a bound for a process that never gets its arguments, not a delay


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1] if raw else None


def _identity(pid: int) -> dict[str, Any]:
    """What a record keeps of a process to know it again: pid, start time, command line."""
    cmdline = _proc_cmdline(pid)
    # Popen returns as soon as the child execs (CPython vforks), which can be before the
    # kernel has set up the new program's arguments: /proc/PID/cmdline then reads empty
    # for a moment. Recorded so, the process could never be recognised (cancel --local).
    deadline = time.monotonic() + _CMDLINE_WAIT_S
    while cmdline is None and _proc_start(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.001)
        cmdline = _proc_cmdline(pid)
    return {"pid": pid, "pid_start": _proc_start(pid), "cmdline": cmdline}


def _ours(rec: dict[str, Any], *, trainer: bool = False) -> bool:
    """Whether the process a record names is still that very process: alive, same start
    time, same command line (and, for a run, our trainer command). A record without both
    (another version's, or one written by hand) never matches: nothing is signalled on
    a guess."""
    pid, start, cmdline = rec.get("pid"), rec.get("pid_start"), rec.get("cmdline")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if not isinstance(start, str) or not isinstance(cmdline, list):
        return False
    if trainer and not ("trainer" in cmdline and "--run-index" in cmdline):
        return False
    return _proc_start(pid) == start and _proc_cmdline(pid) == cmdline


def _terminate(rec: dict[str, Any], *, trainer: bool) -> bool:
    """SIGTERM the process ``rec`` names if it is still that process (``_ours``). A pidfd
    taken before the check pins the process, so a pid recycled between the check and the
    signal cannot be hit."""
    pid = rec["pid"]
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd (old kernel): the narrow window remains
        fd = None
    try:
        if not _ours(rec, trainer=trainer):
            return False
        if fd is None:
            os.kill(pid, signal.SIGTERM)
        else:
            signal.pidfd_send_signal(fd, signal.SIGTERM)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd is not None:
            os.close(fd)


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
        self.workers = workers
        self._store = store
        self.results = None if results is None else canonical_results(results)
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
        self._record: Path | None = None
        self.nvml = nvml  # None: the real NVML, asked once per submit
        self._gpus: GpuPool | None = None

    name = "local"

    # The CLI options this backend takes (``open_backend`` refuses the others); ``results``
    # picks one record when a sweep name was run into several results locations.
    options = ("workers", "results")

    # --- records: one folder per (sweep, results location) --------------------------------

    def record_dir(self, sweep: str, results: str) -> Path:
        """The record of ``sweep`` run into ``results`` (a store's canonical URI)."""
        return self.state_root / check_sweep_name(sweep) / results_key(results)

    def state_file(self, sweep: str, results: str) -> Path:
        return self.record_dir(sweep, results) / STATE_FILE

    def log_dir(self, sweep: str, results: str) -> Path:
        return self.record_dir(sweep, results)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        # Another version's record is not ours to act on (None); a damaged one is BadInput.
        return read_state(path, STATE_VERSION)

    def read_state(self, sweep: str, results: str) -> dict[str, Any] | None:
        return self._read(self.state_file(sweep, results))

    def records(self, sweep: str) -> list[dict[str, Any]]:
        """Every record of ``sweep`` on this machine (one per results location)."""
        folder = self.state_root / check_sweep_name(sweep)
        found = []
        for path in sorted(folder.glob(f"*/{STATE_FILE}")):
            state = self._read(path)
            if (
                state
                and state.get("sweep") == sweep
                and isinstance(state.get("results"), str)
                and path.parent.name == results_key(state["results"])
            ):
                found.append(state)
        return sorted(found, key=lambda st: st["results"])

    def _candidates(self, sweep: str) -> list[dict[str, Any]]:
        if self.results is None:
            return self.records(sweep)
        state = self.read_state(sweep, self.results)
        return [state] if state and state.get("results") == self.results else []

    @staticmethod
    def _one(sweep: str, found: list[dict[str, Any]]) -> dict[str, Any] | None:
        if len(found) > 1:
            shown = ", ".join(s["results"] for s in found[:3]) + (", ..." if len(found) > 3 else "")
            raise BadInput(
                f"sweep {sweep!r} was run on this machine into {len(found)} results locations"
                f" ({shown}): pass --results URI to pick one"
            )
        return found[0] if found else None

    def find_state(self, sweep: str) -> dict[str, Any] | None:
        """The one record ``sweep`` (and ``results``, if given) names, None if there is
        none; BadInput when several results locations hold that sweep and none is picked."""
        return self._one(sweep, self._candidates(sweep))

    def live_state(self, sweep: str, results: str) -> dict[str, Any] | None:
        """The record of a sweep whose ``run`` process is still alive, else None."""
        state = self.read_state(sweep, results)
        return state if state and _ours(state) else None

    def _save_state(self) -> None:
        with self._lock:
            assert self._record is not None
            text = json.dumps(self._state, indent=2, sort_keys=True)
            _atomic_write(self._record / STATE_FILE, text + "\n")

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
        _atomic_write(spec_file, effective.model_dump_json(indent=2) + "\n")
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

    # --- status, logs, cancel -----------------------------------------------------------

    def _locate(self, sweep: str) -> tuple[Store, list[RunSpec], dict[str, Any] | None]:
        """The sweep's store and runs: from this machine's record, else from the store."""
        check_sweep_name(sweep)
        state = self.find_state(sweep)
        spec: SweepSpec | None = None
        if state and isinstance(state.get("spec_file"), str):
            with contextlib.suppress(OSError, ValueError, BadInput):
                spec = parse_spec(read_json_object(Path(state["spec_file"]), "sweep_json"))
        if spec is not None and spec.name != sweep:
            spec = None
        store = self._store
        if store is None and spec is None and self.results is not None:
            store = open_store(self.results)  # no record here: the store alone must do
        if store is None:
            if spec is None:
                raise BadInput(
                    f"sweep {sweep!r} was not run on this machine (no record in"
                    f" {self.state_root}); check the name, pass --results URI, or drop"
                    " --local for a cluster sweep"
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
        live = bool(state and _ours(state))
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
            state = self.find_state(sweep)
            if not (state and _ours(state)) or all(s.state.terminal for s in states):
                return
            self.sleep(self.poll_s)

    @staticmethod
    def _select(sweep: str, runs: list[RunSpec], run: str | None) -> list[RunSpec]:
        """Every run, or the one ``run`` names by name or index (as ``--run`` says)."""
        if run is None:
            return runs
        for r in runs:
            if run in (r.name, str(r.index)):
                return [r]
        names = ", ".join(r.name for r in runs[:5]) + (", ..." if len(runs) > 5 else "")
        raise BadInput(
            f"--run: sweep {sweep!r} has no run {run[:80]!r}; runs (or their index"
            f" 0..{len(runs) - 1}): {names}"
        )

    def _live_logs(self, state: dict[str, Any] | None) -> dict[str, Path]:
        """The stderr log file of each run whose trainer is running now (kept in the
        record's own folder: a path elsewhere in a record is not read)."""
        if not state:
            return {}
        folder = self.record_dir(state["sweep"], state["results"])
        out = {}
        for name, rec in (state.get("runs") or {}).items():
            log = rec.get("log") if isinstance(rec, dict) else None
            if isinstance(log, str) and Path(log).parent == folder and _ours(rec, trainer=True):
                out[name] = Path(log)
        return out

    def logs(self, sweep: str, run: str | None = None, *, follow: bool = False) -> Iterator[str]:
        """Each run's log, prefixed with the run name when there are several: the live log
        of a run that is running now (its trainer's stderr), else the one archived in the
        store (``<run>/logs/trainer.log``, which also holds earlier attempts)."""
        store, runs, state = self._locate(sweep)
        wanted = [r.name for r in self._select(sweep, runs, run)]
        live = {n: p for n, p in self._live_logs(state).items() if n in wanted}
        seen = dict.fromkeys(wanted, 0)
        while True:
            blobs = store.read_many([keys.log(sweep, n) for n in wanted if n not in live])
            for name in wanted:
                if name in live:
                    try:
                        blob: Any = live[name].read_bytes()
                    except OSError:
                        continue
                else:
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
                    yield line if len(wanted) == 1 else f"[{name}] {line}"
            state = self.find_state(sweep) if follow else None
            if not follow or not (state and _ours(state)):
                return
            self.sleep(self.poll_s)

    def cancel(self, sweep: str) -> list[str]:
        """Stop a running local sweep: its runs end as CANCELLED and can be resumed later.

        Returns what was signalled (``pid/N``)."""
        check_sweep_name(sweep)

        def trainers(state: dict[str, Any]) -> list[dict[str, Any]]:
            runs = state.get("runs") or {}
            return [r for r in runs.values() if isinstance(r, dict) and _ours(r, trainer=True)]

        # Only records with something running are candidates: the finished ones of the
        # same sweep name elsewhere make nothing ambiguous.
        active = [s for s in self._candidates(sweep) if _ours(s) or trainers(s)]
        state = self._one(sweep, active)
        # The `run` process terminates its runs and starts no more; runs that outlived a
        # killed `run` are stopped one by one.
        targets = [] if state is None else [state] if _ours(state) else trainers(state)
        stopped = [
            f"pid/{rec['pid']}" for rec in targets if _terminate(rec, trainer=rec is not state)
        ]
        if not stopped:
            raise BadInput(f"nothing is running for sweep {sweep!r} on this machine")
        return stopped
