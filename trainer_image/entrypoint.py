"""The trainer entrypoint: one run of a sweep, from data to repaired-model metrics.

The same function runs as a local process (``LocalBackend``) and as one index of a
Kubernetes Indexed Job (``early-repair trainer --sweep FILE``), so it assumes nothing about
where it runs: every output goes through the ``Store`` protocol (a folder or S3), local
files live in a scratch folder that may vanish with the pod, and every step is skipped
when its *last* file already exists in the store - a run killed at any point is resumed
by running it again, and redoes only the step it was in.

Steps: record (sweep.json, run.json) -> train (history.csv, checkpoints, summary.json)
-> per checkpoint: base metrics and the target split -> per class: Arachne repair
(patch.json, search.csv, metrics.json) -> ``_SUCCESS``. Progress goes to stdout as JSON
lines (the local backend's progress display reads them), logs to stderr and to
``logs/trainer.log`` in the store, uploaded after every step so they outlive the pod.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import platform
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from orchestrator.errors import BadInput, EarlyRepairError, RunFailed
from orchestrator.results import layout as keys
from orchestrator.results.records import MetricsRecord, RunInfo, TrainSummary
from orchestrator.spec import RunSpec, SweepSpec, load_spec
from orchestrator.store import Store, open_results, write_json
from trainer_image.data import Splits, load_splits
from trainer_image.metrics import classification_metrics
from trainer_image.models import Repairable, build_model
from trainer_image.readiness import build as build_readiness
from trainer_image.repair.base import RepairResult, TargetSplit, apply_patch, repair_seed
from trainer_image.resume import TrainState, load_state, save_state
from trainer_image.train import (
    HISTORY_COLUMNS,
    forward_split,
    make_deterministic,
    resolve_device,
    train,
)
from trainer_image.versions import package_versions

log = logging.getLogger("trainer_image")

M = TypeVar("M", bound=BaseModel)

# What a run computes; a different value in an existing run.json means the stored results
# belong to another experiment. Repair classes are left out: adding a class to a finished
# run only adds outputs, and the steps below compute exactly the missing ones.
EXPERIMENT_FIELDS = ("dataset", "model", "seed", "training", "repair")
CLASS_FIELDS = {"dataset": {"repair_classes"}, "repair": {"classes"}}


def emit(event: str, **fields: Any) -> None:
    """One progress event as a JSON line on stdout (logs go to stderr)."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _now() -> str:
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


def _experiment(run: dict[str, Any]) -> dict[str, Any]:
    return {
        f: {k: v for k, v in run[f].items() if k not in CLASS_FIELDS.get(f, ())}
        if isinstance(run[f], dict)
        else run[f]
        for f in EXPERIMENT_FIELDS
    }


def select_run(spec: SweepSpec, run_index: int) -> RunSpec:
    runs = spec.runs()
    if not 0 <= run_index < len(runs):
        raise BadInput(
            f"run index {run_index} is out of range: sweep {spec.name!r} has runs"
            f" 0..{len(runs) - 1}"
        )
    return runs[run_index]


class RunJob:
    """One run's steps against one store; scratch files under ``workdir``."""

    def __init__(self, spec: SweepSpec, run: RunSpec, store: Store, workdir: Path) -> None:
        self.spec, self.run, self.store, self.workdir = spec, run, store, workdir
        self.sweep, self.name = run.sweep, run.name
        self.logfile = workdir / "trainer.log"
        self.info: RunInfo | None = None
        self.timings: dict[str, float] = {}
        self.existing: set[str] = set()
        self._splits: Splits | None = None
        self._device: torch.device | None = None
        self._model: Repairable | None = None

    # --- helpers --------------------------------------------------------------------

    def done(self, key: str) -> bool:
        return key in self.existing

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

    def event(self, event: str, **fields: Any) -> None:
        emit(event, run=self.name, index=self.run.index, **fields)

    def archive_log(self) -> None:
        for h in log.handlers:
            h.flush()
        if self.logfile.exists():
            self.store.upload_file(keys.log(self.sweep, self.name), self.logfile)

    def add_time(self, step: str, seconds: float) -> None:
        self.timings[step] = round(self.timings.get(step, 0.0) + seconds, 3)

    @property
    def device(self) -> torch.device:
        if self._device is None:
            training = self.run.training
            if training.device != "cpu":
                # The GPU guard waits for VRAM headroom; it must run before CUDA is touched.
                from trainer_image.guard import wait_for_gpus

                wait_for_gpus(self.run.resources, log=log.info)
            self._device = resolve_device(training.device)
            make_deterministic(self.run.seed, self._device, training.num_threads)
            log.info("device %s, %d CPU threads", self._device, torch.get_num_threads())
        return self._device

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            t0 = time.perf_counter()
            ds = self.run.dataset
            self._splits = load_splits(
                ds, self.run.training.validation_split, storage=self.run.storage
            )
            for part in ("train", "val", "repair", "test"):
                if len(getattr(self._splits, part)) == 0:
                    raise BadInput(f"dataset {ds.name!r}: its {part} split is empty")
            log.info("data %s: %s", ds.name, self._splits.counts())
            self.add_time("data", time.perf_counter() - t0)
        return self._splits

    @property
    def model(self) -> Repairable:
        if self._model is None:
            device = self.device  # seeds torch: the initial weights depend on the run seed
            shape = self.splits.meta.get("image_shape")
            if not shape or len(shape) != 3:
                raise BadInput(
                    f"dataset {self.run.dataset.name!r}: its splits lack meta['image_shape']"
                    " = [channels, height, width]"
                )
            channels, height, _width = shape
            torch.manual_seed(self.run.seed)
            self._model = build_model(self.run.model, channels, self.splits.num_classes, height).to(
                device
            )
        return self._model

    # --- the run ----------------------------------------------------------------------

    def execute(self) -> None:
        started = time.perf_counter()
        prefix = keys.run_prefix(self.sweep, self.name) + "/"
        self.existing = set(self.store.list(prefix))
        log.info(
            "run %s (index %d of sweep %s) -> %s",
            self.name,
            self.run.index,
            self.sweep,
            self.store.uri,
        )
        self.check_previous()
        summary = self.read_summary()
        if self.done(keys.success(self.sweep, self.name)):
            if summary is not None and not self.pending(summary):
                log.info("run already complete (_SUCCESS exists); nothing to do")
                self.event("done", skipped=True, seconds=0.0)
                return
            # New repair classes since it finished: it is unfinished again.
            self.store.delete_prefix(keys.success(self.sweep, self.name))
            self.existing.discard(keys.success(self.sweep, self.name))
        self.record_start()
        self.event(
            "start",
            max_epochs=self.run.training.max_epochs,
            classes=self.run.repair_classes,
        )
        if summary is None:
            summary = self.train_step()
        else:
            log.info("step train: done before (summary.json exists); skipped")
            self.drop_state()  # left over when a kill fell between the two writes
            self.trained_event(summary, skipped=True)
        self.archive_log()
        total = len(summary.checkpoint_epochs) * (1 + len(self.run.repair_classes))
        n = 0
        for epoch in summary.checkpoint_epochs:
            n = self.checkpoint_step(epoch, summary, n, total)
            self.write_run_info()
            self.archive_log()
        self.add_time("total", time.perf_counter() - started)
        self.write_run_info(finished=True)
        self.put_bytes(keys.success(self.sweep, self.name), (_now() + "\n").encode())
        log.info("run %s complete in %.1f s", self.name, time.perf_counter() - started)
        self.event("done", skipped=False, seconds=round(time.perf_counter() - started, 3))

    def check_previous(self) -> None:
        """Refuse to mix results of two different experiments under one run name."""
        key = keys.run_json(self.sweep, self.name)
        if not self.done(key):
            return
        info = self.read_model(key, RunInfo)
        self.info = info
        self.timings = dict(info.timings)
        try:
            before = _experiment(RunSpec.model_validate(info.run).model_dump(mode="json"))
        except ValidationError as e:
            raise BadInput(
                f"{self.store.uri}/{key} describes a run this version cannot read"
                f" ({e.errors()[0]['msg']}); use a new results location"
            ) from e
        now = _experiment(self.run.model_dump(mode="json"))
        changed = [f for f in EXPERIMENT_FIELDS if before[f] != now[f]]
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
        for epoch in summary.checkpoint_epochs:
            if not self.done(keys.base_metrics(self.sweep, self.name, epoch)):
                return True
            for cls in self.run.repair_classes:
                if not self.done(keys.repair_metrics(self.sweep, self.name, epoch, cls)):
                    return True
        return False

    def record_start(self) -> None:
        sweep_key = keys.sweep_json(self.sweep)
        if not self.store.exists(sweep_key):
            write_json(self.store, sweep_key, self.spec.model_dump(mode="json"))
        self.info = RunInfo(
            run=self.run.model_dump(mode="json"),
            versions=_versions(),
            device="not yet chosen",
            hostname=socket.gethostname(),
            started=_now(),
        )
        self.write_run_info()

    def write_run_info(self, *, finished: bool = False) -> None:
        assert self.info is not None
        update: dict[str, Any] = {"timings": dict(self.timings)}
        if self._device is not None:
            update["device"] = _device_label(self._device)
        if finished:
            update["finished"] = _now()
        self.info = self.info.model_copy(update=update)
        self.put_json(keys.run_json(self.sweep, self.name), self.info.model_dump(mode="json"))

    # --- step 1: training -------------------------------------------------------------

    def train_step(self) -> TrainSummary:
        t0 = time.perf_counter()
        run, cfg = self.run, self.run.training
        model, splits, device = self.model, self.splits, self.device
        log.info(
            "step train: %s, %d train / %d val images, at most %d epochs",
            run.model.name,
            len(splits.train),
            len(splits.val),
            cfg.max_epochs,
        )
        history: list[dict[str, float]] = []
        history_key = keys.history_csv(self.sweep, self.name)
        state_key, state_path = keys.train_state(self.sweep, self.name), self.workdir / "state.pt"
        resume = self.read_state(state_key, state_path)
        if resume is not None:
            history.extend(resume.history)  # history.csv keeps the epochs trained before
            log.info("step train: resuming after epoch %d (train/state.pt)", resume.epoch)

        def on_state(state: TrainState) -> None:
            save_state(state, state_path)
            self.put_file(state_key, state_path)

        def on_epoch(row: dict[str, float]) -> None:
            history.append(row)
            # Rewritten every epoch so `status` can show how far training got.
            self.put_bytes(history_key, _csv(history))
            log.info(
                "epoch %d/%d: loss %.4f acc %.4f val_loss %.4f val_acc %.4f lr %.2g (%.1f s)",
                row["epoch"],
                cfg.max_epochs,
                row["loss"],
                row["acc"],
                row["val_loss"],
                row["val_acc"],
                row["lr"],
                row["seconds"],
            )
            self.event("epoch", max_epochs=cfg.max_epochs, **row)

        def on_checkpoint(epoch: int, state: dict[str, torch.Tensor]) -> None:
            path = self.checkpoint_path(epoch)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, path)
            self.put_file(keys.checkpoint(self.sweep, self.name, epoch), path)

        readiness = (
            None
            if cfg.readiness is None
            else build_readiness(cfg.readiness, [run.repair.method], run.repair_classes)
        )
        result = train(
            model,
            splits,
            cfg,
            run.seed,
            device,
            on_epoch=on_epoch,
            on_checkpoint=on_checkpoint,
            readiness=readiness,
            resume=resume,
            on_state=on_state,
        )
        self.put_bytes(history_key, _csv(result.history))
        summary = TrainSummary(
            convergence_epoch=result.convergence_epoch,
            checkpoint_epochs=result.checkpoint_epochs,
            epochs_trained=result.epochs_trained,
            stopped_early=result.stopped_early,
            best_val_loss=result.best_val_loss,
            seconds=round(result.seconds, 3),
            readiness=result.readiness,
        )
        self.put_json(keys.summary_json(self.sweep, self.name), summary.model_dump(mode="json"))
        self.drop_state()
        self.add_time("train", time.perf_counter() - t0)
        log.info(
            "step train: %d epochs%s, convergence epoch %d (val loss %.4f), checkpoints %s",
            result.epochs_trained,
            " (stopped early)" if result.stopped_early else "",
            result.convergence_epoch,
            result.best_val_loss,
            result.checkpoint_epochs,
        )
        self.trained_event(summary, skipped=False)
        self.write_run_info()
        return summary

    def read_state(self, key: str, path: Path) -> TrainState | None:
        """The latest resumable training state in the store, if training was cut short."""
        if not self.done(key):
            return None
        self.store.download_file(key, path)
        try:
            return load_state(path)
        except ValueError as e:
            raise RunFailed(
                f"{self.store.uri}/{key} is unreadable ({e}); delete it to train from epoch 1"
            ) from e

    def drop_state(self) -> None:
        """summary.json marks training done: its resumable state is of no further use."""
        key = keys.train_state(self.sweep, self.name)
        if self.done(key):
            self.store.delete_prefix(key)
            self.existing.discard(key)

    def trained_event(self, summary: TrainSummary, *, skipped: bool) -> None:
        self.event(
            "trained",
            skipped=skipped,
            epochs=summary.epochs_trained,
            convergence_epoch=summary.convergence_epoch,
            checkpoints=summary.checkpoint_epochs,
        )

    def checkpoint_path(self, epoch: int) -> Path:
        return self.workdir / "checkpoints" / f"epoch_{epoch:03d}.pt"

    def load_checkpoint(self, epoch: int) -> Repairable:
        path = self.checkpoint_path(epoch)
        if not path.exists():
            self.store.download_file(keys.checkpoint(self.sweep, self.name, epoch), path)
        state = torch.load(path, map_location=self.device, weights_only=True)
        model = self.model
        model.load_state_dict(state)
        model.eval()
        return model

    # --- steps 2 and 3: per checkpoint, base metrics then one repair per class --------

    def checkpoint_step(self, epoch: int, summary: TrainSummary, n: int, total: int) -> int:
        sweep, name, classes = self.sweep, self.name, self.run.repair_classes
        base_key = keys.base_metrics(sweep, name, epoch)
        todo = [c for c in classes if not self.done(keys.repair_metrics(sweep, name, epoch, c))]
        if self.done(base_key) and not todo:
            log.info(
                "epoch %d: base metrics and %d repair(s) done before; skipped", epoch, len(classes)
            )
            self.event("step", step="base", epoch=epoch, n=n + 1, of=total, skipped=True)
            for i, cls in enumerate(classes):
                self.event(
                    "step",
                    step="repair",
                    epoch=epoch,
                    n=n + 2 + i,
                    of=total,
                    skipped=True,
                    **{"class": cls},
                )
            return n + 1 + len(classes)

        t0 = time.perf_counter()
        splits, device = self.splits, self.device
        num_classes = splits.num_classes
        model = self.load_checkpoint(epoch)
        repair_logits, repair_feats = forward_split(model, splits.repair, device, features=True)
        test_logits, test_feats = forward_split(model, splits.test, device, features=True)
        assert repair_feats is not None and test_feats is not None
        split = TargetSplit(y=splits.repair.y, pred=repair_logits.argmax(1).cpu().numpy())
        n += 1
        self.event("step", step="base", epoch=epoch, n=n, of=total, skipped=self.done(base_key))
        common = {
            "sweep": sweep,
            "run": name,
            "dataset": self.run.dataset.key,
            "model": self.run.model.key,
            "seed": self.run.seed,
            "epoch": epoch,
            "convergence_epoch": summary.convergence_epoch,
        }
        if not self.done(base_key):
            record = MetricsRecord(
                kind="base",
                **common,
                **classification_metrics(test_logits, splits.test.y, num_classes),
            )
            self.put_json(base_key, record.model_dump(mode="json"))
            log.info(
                "epoch %d: test accuracy %.4f; repair set %d positives, negatives per class %s",
                epoch,
                record.accuracy,
                int(split.correct.sum()),
                np.bincount(split.y[~split.correct], minlength=num_classes).tolist(),
            )
        self.add_time("evaluate", time.perf_counter() - t0)

        y_repair = torch.from_numpy(splits.repair.y).to(device)
        for cls in classes:
            n += 1
            if cls not in todo:
                self.event(
                    "step",
                    step="repair",
                    epoch=epoch,
                    n=n,
                    of=total,
                    skipped=True,
                    **{"class": cls},
                )
                continue
            self.event(
                "step", step="repair", epoch=epoch, n=n, of=total, skipped=False, **{"class": cls}
            )
            self.repair_one(model, epoch, cls, repair_feats, y_repair, split, test_feats, common)
            self.archive_log()
        return n

    def repair_one(
        self,
        model: Repairable,
        epoch: int,
        cls: int,
        features: torch.Tensor,
        y: torch.Tensor,
        split: TargetSplit,
        test_feats: torch.Tensor,
        common: dict[str, Any],
    ) -> None:
        from trainer_image.repair.arachne import repair

        t0 = time.perf_counter()
        cfg, device = self.run.repair, self.device
        seed = repair_seed(cfg.seed, self.run.seed, epoch, cls)
        result: RepairResult = repair(model.head, features, y, split, cls, cfg, seed, device)
        head = apply_patch(model.head, result.patch)
        with torch.no_grad():
            test_logits = head(test_feats)
        num_classes = self.splits.num_classes
        record = MetricsRecord(
            kind="repaired",
            repair_class=cls,
            method=cfg.method,
            **common,
            **classification_metrics(test_logits, self.splits.test.y, num_classes),
            rr=result.rr,
            br=result.br,
            n_neg=result.n_neg,
            n_pos=result.n_pos,
            fitness=result.fitness,
            n_patched=result.n_patched,
            n_intact=result.n_intact,
            iterations=result.iterations,
            seconds=round(result.seconds, 3),
        )
        sweep, name = self.sweep, self.name
        self.put_json(keys.repair_patch(sweep, name, epoch, cls), result.patch_json())
        self.put_bytes(keys.repair_search(sweep, name, epoch, cls), _csv(result.history))
        self.put_json(keys.repair_metrics(sweep, name, epoch, cls), record.model_dump(mode="json"))
        self.add_time("repair", time.perf_counter() - t0)
        if result.status == "nothing_to_repair":
            log.info("epoch %d class %d: no negatives; nothing to repair", epoch, cls)
        else:
            log.info(
                "epoch %d class %d: RR %.1f%% BR %.1f%%, test accuracy %.4f, %d weights,"
                " %d iterations, %.1f s",
                epoch,
                cls,
                result.rr or 0.0,
                result.br or 0.0,
                record.accuracy,
                len(result.patch),
                result.iterations,
                result.seconds,
            )


def _csv(rows: list[dict[str, Any]]) -> bytes:
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
        job = RunJob(spec, run, store, wd)
        log_key = keys.log(run.sweep, run.name)
        if store.exists(log_key):
            store.download_file(log_key, job.logfile)  # keep earlier attempts' lines
        stack.enter_context(_logging(job.logfile))
        stack.enter_context(_torch_settings())
        try:
            job.execute()
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
                job.archive_log()
            except Exception as e:  # the run's own error matters more than the log's
                print(f"warning: could not archive the log: {e}", file=sys.stderr)


def _terminate(signum: int, _frame: Any) -> None:
    # A second SIGTERM (the local backend and a user's kill, say) must not cut short the
    # log upload the first one started; SIGKILL still ends the process.
    signal.signal(signum, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def run_trainer_process(sweep_file: str | Path, run_index: int) -> None:
    """``run_trainer`` as a process: SIGTERM (pod eviction, cancel) still archives the log."""
    if threading.current_thread() is not threading.main_thread():
        run_trainer(sweep_file, run_index)
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        run_trainer(sweep_file, run_index)
    finally:
        signal.signal(signal.SIGTERM, previous)
