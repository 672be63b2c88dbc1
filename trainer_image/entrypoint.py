"""The trainer process: one run of a sweep, wherever it runs; the steps are in ``pipeline``.

The same function runs as a local process (``LocalBackend``) and as one index of a
Kubernetes Indexed Job (``early-repair trainer --sweep FILE``), so it assumes nothing about
where it runs: every output goes through the ``Store`` protocol (a folder or S3) and local
files live in a scratch folder that may vanish with the pod. This module is the process
around the steps: it picks the run, sets up logging (stderr and ``logs/trainer.log`` in
the store, uploaded after every step so it outlives the pod), restores torch's global
settings for in-process callers, and turns SIGTERM into a clean stop. Progress goes to
stdout as JSON lines (``orchestrator.results.events``).
"""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from orchestrator.errors import BadInput, EarlyRepairError
from orchestrator.results import layout as keys
from orchestrator.spec import RunSpec, SweepSpec, load_spec
from orchestrator.store import Store, open_results
from trainer_image.ledger import LOGFILE, archive_log
from trainer_image.pipeline import run_pipeline

log = logging.getLogger("trainer_image")


def select_run(spec: SweepSpec, run_index: int) -> RunSpec:
    runs = spec.runs()
    if not 0 <= run_index < len(runs):
        raise BadInput(
            f"run index {run_index} is out of range: sweep {spec.name!r} has runs"
            f" 0..{len(runs) - 1}"
        )
    return runs[run_index]


@contextmanager
def _logging(logfile: Path) -> Iterator[None]:
    """Log to stderr and to ``logfile`` (appended to the archived log of earlier attempts)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stderr),
        logging.FileHandler(logfile, encoding="utf-8"),
    ]
    old_level, old_propagate = log.level, log.propagate
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(old_level)
        log.propagate = old_propagate


@contextmanager
def _torch_settings() -> Iterator[None]:
    """Undo the run's process-wide torch settings, for callers that run it in-process."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


def run_trainer(
    sweep_file: str | Path,
    run_index: int,
    *,
    store: Store | None = None,
    workdir: str | Path | None = None,
) -> None:
    """Run (or resume) run ``run_index`` of the sweep in ``sweep_file`` (YAML or JSON)."""
    spec = load_spec(sweep_file)
    run = select_run(spec, run_index)
    store = store if store is not None else open_results(run.results, run.storage)
    with ExitStack() as stack:
        if workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix=f"early-repair-{run.name}-")
            workdir = stack.enter_context(tmp)
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
        logfile = wd / LOGFILE
        log_key = keys.log(run.sweep, run.name)
        if store.exists(log_key):
            store.download_file(log_key, logfile)  # keep earlier attempts' lines
        stack.enter_context(_logging(logfile))
        stack.enter_context(_torch_settings())
        try:
            run_pipeline(spec, run, store, wd)
        except EarlyRepairError as e:
            log.error("run %s failed: %s", run.name, e)
            raise
        except SystemExit as e:  # SIGTERM (see run_trainer_process): cancelled or evicted
            log.error("run %s stopped (exit %s); run it again to resume", run.name, e.code)
            raise
        except BaseException:
            log.exception("run %s failed", run.name)
            raise
        finally:
            try:
                archive_log(store, log_key, logfile)
            except Exception as e:  # the run's own error matters more than the log's
                print(f"warning: could not archive the log: {e}", file=sys.stderr)


def _terminate(signum: int, _frame: Any) -> None:
    # A second SIGTERM or SIGINT (Ctrl-C reaches the trainer and `run`, which then sends
    # SIGTERM) must not cut short the log upload the first one started; SIGKILL still ends
    # the process.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def run_trainer_process(sweep_file: str | Path, run_index: int) -> None:
    """``run_trainer`` as a process: SIGTERM (pod eviction, cancel) still archives the log."""
    if threading.current_thread() is not threading.main_thread():
        run_trainer(sweep_file, run_index)
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    interrupt = signal.signal(signal.SIGINT, _terminate)  # Ctrl-C reaches trainers too
    try:
        run_trainer(sweep_file, run_index)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, interrupt)
