"""One run of a sweep, step by step: from data to repaired-model metrics.

``run_pipeline`` names every step in order; each is skipped when its *done-key* (the last
file it writes) already exists in the store, so a run killed at any point is resumed by
running it again and redoes only the step it was in:

    device   GPU guard, device, determinism          (every attempt; nothing stored)
    data     load the splits                          (every attempt)
    model    build the model from the run seed        (every attempt)
    train    history.csv, checkpoints                 done-key train/summary.json
             (train/state.pt while it runs: a killed run resumes after the last stored epoch;
             with training.repair_every, every N-th epoch's base and repair records are
             written as it trains - the same files as a checkpoint's, below)
    per checkpoint:
      evaluate  base metrics, features, target split  done-key epoch_NNN/base/metrics.json
      per class:
        repair  patch.json, search.csv, metrics       done-key epoch_NNN/repair/class_C/metrics.json
    finish   run.json (finished)                      done-key _SUCCESS

The repair method comes from ``trainer_image.repair.method_for`` (the catalog), never from
a direct import; ``trainer_image.ledger`` keeps the bookkeeping (done-keys, run.json,
events, the archived log) out of the way of the steps.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from orchestrator.errors import BadInput, RunFailed
from orchestrator.results import events
from orchestrator.results import layout as keys
from orchestrator.results import predictions as predicted
from orchestrator.results.consolidate import write_run_records
from orchestrator.results.records import TrainSummary
from orchestrator.spec import RepairMethodConfig, RunSpec, SweepSpec
from orchestrator.store import Store
from trainer_image import acceptance
from trainer_image.data import Holdout, Splits, load_splits
from trainer_image.history_store import history_for, keep_initial
from trainer_image.ledger import Ledger, csv_bytes, now
from trainer_image.metrics import classification_metrics, predicted_labels
from trainer_image.models import Repairable, build_model
from trainer_image.online import RepairOutcome, configured_methods, repair_epoch
from trainer_image.outputs import (
    method_name,
    metrics_record,
    put_record,
    repair_fields,
    write_repair,
)
from trainer_image.readiness import RepairedScores, Track
from trainer_image.readiness import build as build_readiness
from trainer_image.repair import method_for
from trainer_image.repair.base import (
    RepairMethod,
    RepairTask,
    TargetSplit,
    apply_patch,
    repair_seed,
)
from trainer_image.repair.history import TrainingHistory
from trainer_image.resume import TrainState, load_state, save_state
from trainer_image.train import (
    OnlineRepair,
    forward_split,
    make_deterministic,
    resolve_device,
    train,
)

log = logging.getLogger("trainer_image")


def run_pipeline(spec: SweepSpec, run: RunSpec, store: Store, workdir: Path) -> None:
    """Run (or resume) one run against ``store``; scratch files under ``workdir``."""
    started = time.perf_counter()
    job = Ledger(spec, run, store, workdir)
    log.info("run %s (index %d of sweep %s) -> %s", run.name, run.index, run.sweep, store.uri)
    job.open()
    summary = job.read_summary()
    if already_complete(job, summary):
        log.info("run already complete (_SUCCESS exists); nothing to do")
        job.event(events.Done, skipped=True, seconds=0.0)
        return
    job.record_start()
    job.event(events.Start, max_epochs=run.training.max_epochs, classes=run.repair_classes)

    device = device_step(job)
    splits = data_step(job)
    labels_step(job, splits)
    model = model_step(job, splits, device)
    # Every method resolved before training, so a bad import path fails before the work.
    methods = [(cfg, method_for(cfg.method)) for cfg in run.repair.configs()]
    trained_before = summary is not None
    if summary is None:
        keep_initial(job, model, [c for c, _ in methods])  # for methods using the history
        summary = train_step(job, model, splits, device)
    else:
        log.info("step train: done before (summary.json exists); skipped")
        drop_state(job)  # left over when a kill fell between summary.json and its removal
    job.event(
        events.Trained,
        skipped=trained_before,
        epochs=summary.epochs_trained,
        convergence_epoch=summary.convergence_epoch,
        checkpoints=summary.checkpoint_epochs,
    )
    job.archive_log()

    repairs = [(cls, cfg, method) for cls in run.repair_classes for cfg, method in methods]
    steps = Steps(len(summary.checkpoint_epochs), len(repairs))
    for i, epoch in enumerate(summary.checkpoint_epochs):
        ckpt = evaluate_step(job, model, splits, device, summary, epoch, steps.base(i))
        for j, (cls, cfg, method) in enumerate(repairs):
            repair_step(job, epoch, ckpt, splits, summary, cfg, method, cls, steps.repair(i, j))
        job.write_run_info()
        job.archive_log()

    finish_step(job, started)


# --- the steps, in the order run_pipeline calls them ----------------------------------


def already_complete(job: Ledger, summary: TrainSummary | None) -> bool:
    """Done-key ``_SUCCESS``; a run given new repair classes since is unfinished again."""
    key = keys.success(job.sweep, job.name)
    if not job.done(key):
        return False
    if summary is not None and not job.pending(summary):
        return True
    job.forget(key)
    return False


def device_step(job: Ledger) -> torch.device:
    """Wait for GPU headroom, pick the device, make torch deterministic; before CUDA is used."""
    training = job.run.training
    if training.device != "cpu":
        from trainer_image.guard import wait_for_gpus

        wait_for_gpus(job.run.resources, log=log.info)
    device = resolve_device(training.device)
    make_deterministic(job.run.seed, device, training.num_threads)
    log.info("device %s, %d CPU threads", device, torch.get_num_threads())
    job.device = device
    return device


def data_step(job: Ledger) -> Splits:
    """The dataset's train / val / repair / test splits; none may be empty."""
    ds = job.run.dataset
    with job.timed("data"):
        training = job.run.training
        splits = load_splits(
            ds,
            training.validation_split,
            holdout=Holdout.for_run(training.validation, ds.split_seed, job.run.seed),
            storage=job.run.storage,
        )
    for part in ("train", "val", "repair", "test"):
        if len(getattr(splits, part)) == 0:
            raise BadInput(f"dataset {ds.name!r}: its {part} split is empty")
    log.info("data %s: %s", ds.name, splits.counts())
    return splits


def labels_step(job: Ledger, splits: Splits) -> None:
    """``test_labels.npy``: the true labels in the order every ``predictions.npy`` follows."""
    key = keys.test_labels(job.sweep, job.name)
    if not job.done(key):
        job.put_bytes(key, predicted.dump(splits.test.y, splits.num_classes))


def model_step(job: Ledger, splits: Splits, device: torch.device) -> Repairable:
    """The untrained model; its initial weights depend on the run seed only."""
    shape = splits.meta.get("image_shape")
    if not shape or len(shape) != 3:
        raise BadInput(
            f"dataset {job.run.dataset.name!r}: its splits lack meta['image_shape']"
            " = [channels, height, width]"
        )
    channels, height, _width = shape
    torch.manual_seed(job.run.seed)
    return build_model(job.run.model, channels, splits.num_classes, height).to(device)


def train_step(
    job: Ledger, model: Repairable, splits: Splits, device: torch.device
) -> TrainSummary:
    """Train with the paper's procedure; done-key ``train/summary.json``."""
    run, cfg = job.run, job.run.training
    log.info(
        "step train: %s, %d train / %d val images, at most %d epochs",
        run.model.name,
        len(splits.train),
        len(splits.val),
        cfg.max_epochs,
    )
    history: list[dict[str, float]] = []
    history_key = keys.history_csv(job.sweep, job.name)
    state_key, state_path = keys.train_state(job.sweep, job.name), job.workdir / "state.pt"
    resume = stored_state(job, state_key, state_path)
    if resume is not None:
        history.extend(resume.history)  # history.csv keeps the epochs trained before
        log.info("step train: resuming after epoch %d (train/state.pt)", resume.epoch)

    def on_state(state: TrainState) -> None:
        scratch_write(state_path, lambda: save_state(state, state_path))
        job.put_file(state_key, state_path)

    def on_epoch(row: dict[str, float]) -> None:
        history.append(row)
        # Rewritten every epoch so `status` can show how far training got.
        job.put_bytes(history_key, csv_bytes(history))
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
        job.event(events.Epoch, max_epochs=cfg.max_epochs, **row)

    def on_checkpoint(epoch: int, state: dict[str, torch.Tensor]) -> None:
        path = job.checkpoint_path(epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch_write(path, lambda: torch.save(state, path))
        job.put_file(keys.checkpoint(job.sweep, job.name, epoch), path)

    readiness = (
        None
        if cfg.readiness is None
        else build_readiness(
            cfg.readiness, [method_name(c) for c in run.repair.configs()], run.repair_classes
        )
    )
    with job.timed("train"):
        result = train(
            model,
            splits,
            cfg,
            run.seed,
            device,
            on_epoch=on_epoch,
            on_checkpoint=on_checkpoint,
            on_repair=None if cfg.repair_every is None else online_repair(job, splits, device),
            readiness=readiness,
            resume=resume,
            on_state=on_state,
        )
        job.put_bytes(history_key, csv_bytes(result.history))
        summary = TrainSummary(
            convergence_epoch=result.convergence_epoch,
            checkpoint_epochs=result.checkpoint_epochs,
            online_epochs=result.online_epochs,
            epochs_trained=result.epochs_trained,
            stopped_early=result.stopped_early,
            best_val_loss=result.best_val_loss,
            seconds=round(result.seconds, 3),
            readiness=result.readiness,
        )
        job.put_json(keys.summary_json(job.sweep, job.name), summary.model_dump(mode="json"))
        drop_state(job)
    log.info(
        "step train: %d epochs%s, convergence epoch %d (val loss %.4f), checkpoints %s",
        result.epochs_trained,
        " (stopped early)" if result.stopped_early else "",
        result.convergence_epoch,
        result.best_val_loss,
        result.checkpoint_epochs,
    )
    job.write_run_info()
    return summary


def stored_state(job: Ledger, key: str, path: Path) -> TrainState | None:
    """The latest resumable training state in the store, when training was cut short."""
    if not job.done(key):
        return None
    job.store.download_file(key, path)
    try:
        return load_state(path)
    except ValueError as e:
        raise RunFailed(
            f"{job.store.uri}/{key} is unreadable ({e}); delete it to train from epoch 1"
        ) from e


def drop_state(job: Ledger) -> None:
    """summary.json marks training done: its resumable state is of no further use."""
    key = keys.train_state(job.sweep, job.name)
    if job.done(key):
        job.forget(key)


def online_repair(job: Ledger, splits: Splits, device: torch.device) -> OnlineRepair:
    """``train``'s hook for ``training.repair_every``: repair the epoch's model by every method
    for every class and write the same records a kept checkpoint gets (base and repair
    metrics, patch, search history), as they are computed; returns the validation figures
    for the readiness policy. The convergence epoch is not known yet: these records say None
    and the aggregator takes it from train/summary.json."""
    run = job.run
    methods = configured_methods(run.repair)
    where = {method_name(c): c.key for c in run.repair.configs()}

    def repair(
        epoch: int, model: torch.nn.Module, val_feats: torch.Tensor
    ) -> dict[Track, RepairedScores]:
        assert isinstance(model, Repairable)

        def write(outcome: RepairOutcome) -> None:
            record = metrics_record(
                run,
                None,
                epoch,
                outcome.test,
                kind="repaired",
                repair_class=outcome.repair_class,
                method=outcome.method,
                **repair_fields(outcome.result, outcome.verdict),
            )
            write_repair(
                job,
                epoch,
                outcome.repair_class,
                where[outcome.method],
                outcome.result,
                record,
                outcome.predictions,
            )

        with job.timed("online"):  # part of "train", which it runs inside
            out = repair_epoch(
                model,
                splits,
                epoch,
                methods,
                run.repair_classes,
                run_seed=run.seed,
                device=device,
                val_features=val_feats,
                on_result=write,
                meter=job.costs,
            )
            base = metrics_record(run, None, epoch, out.base_test, kind="base")
            put_record(
                job, keys.base_metrics(job.sweep, job.name, epoch), base, out.base_predictions
            )
        log.info(
            "epoch %d: online repair, %d repairs in %.1f s (features %.1f s)",
            epoch,
            len(out.repairs),
            sum(out.seconds.values()),
            out.seconds["features"],
        )
        return out.evidence()

    return repair


@dataclass(frozen=True)
class Steps:
    """Numbers the progress steps after training: per checkpoint, base then each repair
    (class x method)."""

    checkpoints: int
    repairs: int

    @property
    def total(self) -> int:
        return self.checkpoints * (1 + self.repairs)

    def base(self, i: int) -> tuple[int, int]:
        return i * (1 + self.repairs) + 1, self.total

    def repair(self, i: int, j: int) -> tuple[int, int]:
        return i * (1 + self.repairs) + 2 + j, self.total


@dataclass(frozen=True)
class Checkpoint:
    """What the repairs of one checkpoint share."""

    head: torch.nn.Linear
    features: torch.Tensor  # penultimate activations of the repair set
    y: torch.Tensor  # repair-set labels
    split: TargetSplit
    test_features: torch.Tensor
    history: TrainingHistory  # earlier weights, loaded on first use (history_store.py)
    # Validation features and labels, for repair.accept: no-worse-val only (else None).
    val: tuple[torch.Tensor, np.ndarray] | None = None


def evaluate_step(
    job: Ledger,
    model: Repairable,
    splits: Splits,
    device: torch.device,
    summary: TrainSummary,
    epoch: int,
    step: tuple[int, int],
) -> Checkpoint | None:
    """Base metrics and the target split of a checkpoint; done-key ``base/metrics.json``.

    The checkpoint is loaded whenever a repair of it is still to do, since the repairs need
    its features even when its base metrics exist; None when nothing of it is left to do.
    """
    sweep, name = job.sweep, job.name
    base_key = keys.base_metrics(sweep, name, epoch)
    todo = job.pending_repairs(epoch)
    base_done = job.record_done(base_key)
    step_event(job, "base", epoch, step, skipped=base_done)
    if base_done and not todo:
        log.info("epoch %d: base metrics and every repair done before; skipped", epoch)
        return None
    with job.timed("evaluate"):
        load_checkpoint(job, model, epoch, device)
        repair_logits, repair_feats = forward_split(model, splits.repair, device, features=True)
        test_logits, test_feats = forward_split(model, splits.test, device, features=True)
        assert repair_feats is not None and test_feats is not None
        split = TargetSplit(y=splits.repair.y, pred=repair_logits.argmax(1).cpu().numpy())
        val = None
        if any(acceptance.needs_validation(c) for c in job.run.repair.configs()):
            val_feats = forward_split(model, splits.val, device, features=True)[1]
            assert val_feats is not None
            val = (val_feats, splits.val.y)
        if not base_done:
            test = classification_metrics(test_logits, splits.test.y, splits.num_classes)
            record = metrics_record(job.run, summary.convergence_epoch, epoch, test, kind="base")
            put_record(job, base_key, record, predicted_labels(test_logits))
            log.info(
                "epoch %d: test accuracy %.4f; repair set %d positives, negatives per class %s",
                epoch,
                record.accuracy,
                int(split.correct.sum()),
                np.bincount(split.y[~split.correct], minlength=splits.num_classes).tolist(),
            )
    return Checkpoint(
        head=model.head,
        features=repair_feats,
        y=torch.from_numpy(splits.repair.y).to(device),
        split=split,
        test_features=test_feats,
        history=history_for(
            job, model, splits, device, summary.checkpoint_epochs, epoch, load_checkpoint
        ),
        val=val,
    )


def scratch_write(path: Path, write: Callable[[], None]) -> None:
    """``write()`` a file of the scratch folder; a full disk (torch only says "unexpected
    pos") becomes one line naming the folder."""
    try:
        write()
    except (OSError, RuntimeError) as e:
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        raise RunFailed(
            f"cannot write {path} ({getattr(e, 'strerror', None) or 'write'} failed,"
            f" {free:,} bytes free); free space in {path.parent} or set TMPDIR to a folder"
            " with room"
        ) from e


def load_checkpoint(job: Ledger, model: Repairable, epoch: int, device: torch.device) -> None:
    path = job.checkpoint_path(epoch)
    key = keys.checkpoint(job.sweep, job.name, epoch)
    if not path.exists():
        job.store.download_file(key, path)
    try:
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    except Exception as e:  # not a zip, not our pickle, another model's weights, ...
        path.unlink(missing_ok=True)
        why = " ".join(str(e).split())[:160]
        raise RunFailed(
            f"{job.store.uri}/{key} is not a usable checkpoint ({type(e).__name__}: {why});"
            f" delete {job.store.uri}/{keys.run_prefix(job.sweep, job.name)} to train the"
            " run again"
        ) from e
    model.eval()


def repair_step(
    job: Ledger,
    epoch: int,
    ckpt: Checkpoint | None,
    splits: Splits,
    summary: TrainSummary,
    cfg: RepairMethodConfig,
    method: RepairMethod,
    cls: int,
    step: tuple[int, int],
) -> None:
    """Repair one class of one checkpoint with one method;
    done-key ``repair/<method>/class_C/metrics.json``."""
    sweep, name, where = job.sweep, job.name, cfg.key
    metrics_key = keys.repair_metrics(sweep, name, epoch, cls, where)
    done = job.record_done(metrics_key)
    step_event(job, "repair", epoch, step, skipped=done, cls=cls)
    if done:
        return
    assert ckpt is not None and job.device is not None  # evaluate_step loaded it: to do
    with job.timed("repair", method=where):
        seed = repair_seed(cfg.seed, job.run.seed, epoch, cls)
        history = ckpt.history if getattr(cfg, "uses_history", False) else None
        task = RepairTask(
            ckpt.head, ckpt.features, ckpt.y, ckpt.split, cls, seed, job.device, history
        )
        verdict = acceptance.judge(cfg, task, method(task, cfg), ckpt.val)
        result = verdict.result  # a rejected patch: empty, the model stays the base one
        with torch.no_grad():
            test_logits = apply_patch(ckpt.head, result.patch)(ckpt.test_features)
        record = metrics_record(
            job.run,
            summary.convergence_epoch,
            epoch,
            classification_metrics(test_logits, splits.test.y, splits.num_classes),
            kind="repaired",
            repair_class=cls,
            method=method_name(cfg),
            **repair_fields(result, verdict),
        )
        write_repair(job, epoch, cls, where, result, record, predicted_labels(test_logits))
    if result.status == "nothing_to_repair":
        log.info("epoch %d class %d: no negatives; nothing to repair", epoch, cls)
    else:
        log.info(
            "epoch %d class %d %s: RR %.1f%% BR %.1f%%, test accuracy %.4f, %d weights,"
            " %d iterations, %.1f s%s",
            epoch,
            cls,
            where,
            result.rr or 0.0,
            result.br or 0.0,
            record.accuracy,
            len(result.patch),
            result.iterations,
            result.seconds,
            "" if verdict.accepted else f"; patch rejected ({cfg.accept})",
        )
    job.archive_log()


def finish_step(job: Ledger, started: float) -> None:
    """run.json marked finished, every record packed in one object, then ``_SUCCESS``."""
    job.add_time("total", time.perf_counter() - started)
    job.write_run_info(finished=True)
    # One object per finished run for the aggregator (it falls back to the single files).
    write_run_records(job.store, job.sweep, job.name)
    job.put_bytes(keys.success(job.sweep, job.name), (now() + "\n").encode())
    log.info("run %s complete in %.1f s", job.name, time.perf_counter() - started)
    job.event(events.Done, skipped=False, seconds=round(time.perf_counter() - started, 3))


# --- built once, used by the steps above ----------------------------------------------


def step_event(
    job: Ledger,
    what: str,
    epoch: int,
    step: tuple[int, int],
    *,
    skipped: bool,
    cls: int | None = None,
) -> None:
    n, of = step
    job.event(events.Step, step=what, epoch=epoch, n=n, of=of, skipped=skipped, repair_class=cls)
