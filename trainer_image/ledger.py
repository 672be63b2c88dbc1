"""A run's bookkeeping in the store: which steps are done, what was written, what to report.

The pipeline (``trainer_image.pipeline``) names the steps; this holds everything they share
that is not computation: the set of keys already in the store (a step is done when its
last key exists), writes that keep that set current, ``run.json`` with its timings, the
progress events on stdout and the log archived to the store. It also refuses to mix two
experiments' results under one run name.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ValidationError

from orchestrator.errors import BadInput, RunFailed
from orchestrator.results import events
from orchestrator.results import layout as keys

# What names the experiment (and so when stored results belong to another one) is shared
# with the local backend, which skips runs the store shows complete for this experiment.
from orchestrator.results.records import (
    EXPERIMENT_FIELDS,
    CostRow,
    RunInfo,
    TrainSummary,
    experiment,
)
from orchestrator.spec import RunSpec, SweepSpec
from orchestrator.store import Store, write_json
from trainer_image.costs import CostMeter
from trainer_image.train import HISTORY_COLUMNS
from trainer_image.versions import package_versions

log = logging.getLogger("trainer_image")

M = TypeVar("M", bound=BaseModel)
E = TypeVar("E", bound=events.Start | events.Epoch | events.Trained | events.Step | events.Done)

LOGFILE = "trainer.log"  # in the scratch folder; archived as logs/trainer.log


def emit(event: events.Event) -> None:
    """One progress event as a JSON line on stdout (logs go to stderr)."""
    try:
        sys.stdout.write(events.to_line(event) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (the local `run`) is gone: stop as on SIGTERM, quietly and resumable;
        # stdout now leads nowhere so that exiting does not trip over it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(128 + signal.SIGPIPE) from None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **package_versions("early-repair", "numpy", "scikit-learn", "pandas"),
    }


def _device_label(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Rows as CSV with a header; history columns in their documented order."""
    if not rows:
        return b""
    columns = list(rows[0])
    if set(HISTORY_COLUMNS) <= set(columns):
        columns = list(HISTORY_COLUMNS)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def archive_log(store: Store, key: str, logfile: Path) -> None:
    """Upload the log so far: after every step, so it outlives a pod that is killed."""
    for h in log.handlers:
        h.flush()
    if logfile.exists():
        store.upload_file(key, logfile)


class Ledger:
    """One run's view of the store; scratch files (checkpoints, the log) under ``workdir``."""

    def __init__(self, spec: SweepSpec, run: RunSpec, store: Store, workdir: Path) -> None:
        self.spec, self.run, self.store, self.workdir = spec, run, store, workdir
        self.sweep, self.name = run.sweep, run.name
        self.logfile = workdir / LOGFILE
        self.info: RunInfo | None = None
        self.timings: dict[str, float] = {}
        self.existing: set[str] = set()
        self._device: torch.device | None = None
        self.costs = CostMeter()  # wall, CPU and GPU seconds per stage (run.json's costs)

    @property
    def device(self) -> torch.device | None:
        return self._device

    @device.setter
    def device(self, device: torch.device) -> None:
        """Set by the pipeline's device step; from then on stages are charged to it."""
        self._device = device
        self.costs.use_device(device, self.run.resources.gpus)

    # --- what is done -----------------------------------------------------------------

    def open(self) -> None:
        """List what earlier attempts wrote; refuse another experiment's results."""
        self.existing = set(self.store.list(keys.run_prefix(self.sweep, self.name) + "/"))
        self.check_previous()

    def done(self, key: str) -> bool:
        return key in self.existing

    def record_done(self, metrics_key: str) -> bool:
        """A model's evaluation is done when its metrics.json and the predictions.npy
        beside it both exist (predictions are written first, metrics.json last)."""
        return self.done(metrics_key) and self.done(keys.predictions(metrics_key))

    def forget(self, key: str) -> None:
        self.store.delete_prefix(key)
        self.existing.discard(key)

    def check_previous(self) -> None:
        key = keys.run_json(self.sweep, self.name)
        if not self.done(key):
            return
        info = self.read_model(key, RunInfo)
        self.info = info
        self.timings = dict(info.timings)
        self.costs = CostMeter([c.model_dump() for c in info.costs])
        try:
            before = experiment(RunSpec.model_validate(info.run).model_dump(mode="json"))
        except ValidationError as e:
            raise BadInput(
                f"{self.store.uri}/{key} describes a run this version cannot read"
                f" ({e.errors()[0]['msg']}); use a new results location"
            ) from e
        now_ = experiment(self.run.model_dump(mode="json"))
        changed = [f for f in EXPERIMENT_FIELDS if before[f] != now_[f]]
        if changed:
            raise BadInput(
                f"{self.store.uri}/{key}: this run was started with a different"
                f" {', '.join(changed)}; use a new sweep name or results location,"
                " or delete the old run's results"
            )

    def read_summary(self) -> TrainSummary | None:
        key = keys.summary_json(self.sweep, self.name)
        return self.read_model(key, TrainSummary) if self.done(key) else None

    def pending(self, summary: TrainSummary) -> bool:
        """Whether a checkpoint still lacks its base metrics or a repair. A run finished
        before predictions were stored (metrics.json without predictions.npy) counts as
        finished: it is not redone for them."""
        return any(
            not self.done(keys.base_metrics(self.sweep, self.name, epoch))
            or self.pending_repairs(epoch, self.done)
            for epoch in summary.checkpoint_epochs
        )

    def pending_repairs(
        self, epoch: int, done: Callable[[str], bool] | None = None
    ) -> list[tuple[int, str]]:
        """The (class, method key) repairs of a checkpoint whose record is still missing
        (by default: its metrics.json or its predictions.npy)."""
        done = done or self.record_done
        return [
            (cls, cfg.key)
            for cls in self.run.repair_classes
            for cfg in self.run.repair.configs()
            if not done(keys.repair_metrics(self.sweep, self.name, epoch, cls, cfg.key))
        ]

    # --- writing ----------------------------------------------------------------------

    def put_json(self, key: str, obj: Any) -> None:
        write_json(self.store, key, obj)
        self.existing.add(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.store.write_bytes(key, data)
        self.existing.add(key)

    def put_file(self, key: str, path: Path) -> None:
        self.store.upload_file(key, path)
        self.existing.add(key)

    def read_model(self, key: str, cls: type[M]) -> M:
        try:
            return cls.model_validate_json(self.store.read_bytes(key))
        except ValidationError as e:
            raise RunFailed(
                f"{self.store.uri}/{key} is unreadable ({e.errors()[0]['msg']});"
                " delete it to redo that step"
            ) from e

    def checkpoint_path(self, epoch: int) -> Path:
        return self.workdir / "checkpoints" / f"epoch_{epoch:03d}.pt"

    # --- run.json, timings, events, the log -------------------------------------------

    def record_start(self) -> None:
        sweep_key = keys.sweep_json(self.sweep)
        if not self.store.exists(sweep_key):
            write_json(self.store, sweep_key, self.spec.model_dump(mode="json"))
        self.info = RunInfo(
            run=self.run.model_dump(mode="json"),
            versions=_versions(),
            device="not yet chosen",
            hostname=socket.gethostname(),
            started=now(),
        )
        self.write_run_info()

    def write_run_info(self, *, finished: bool = False) -> None:
        assert self.info is not None
        update: dict[str, Any] = {
            "timings": dict(self.timings),
            "costs": [CostRow(**r) for r in self.costs.rows()],
        }
        if self.device is not None:
            update["device"] = _device_label(self.device)
        if finished:
            update["finished"] = now()
        self.info = self.info.model_copy(update=update)
        self.put_json(keys.run_json(self.sweep, self.name), self.info.model_dump(mode="json"))

    def add_time(self, step: str, seconds: float) -> None:
        """Timings in run.json add up over attempts: a resumed step's time is not lost."""
        self.timings[step] = round(self.timings.get(step, 0.0) + seconds, 3)

    @contextmanager
    def timed(self, step: str, method: str | None = None) -> Iterator[None]:
        """``add_time`` of the block's wall time (not when it fails: its work is redone);
        its cost (``costs``) is charged to the stage ``step`` (and ``method``) either way."""
        t0 = time.perf_counter()
        with self.costs.stage(step, method):
            yield
        self.add_time(step, time.perf_counter() - t0)

    def event(self, kind: type[E], **fields: Any) -> None:
        emit(kind(run=self.name, index=self.run.index, **fields))

    def archive_log(self) -> None:
        archive_log(self.store, keys.log(self.sweep, self.name), self.logfile)
