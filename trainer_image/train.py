"""The paper's training procedure: SGD with a step (or the released code's compound) lr
schedule, early stopping on validation loss, the convergence epoch and the checkpoint set.

The bookkeeping that decides *which* epochs the study compares - when to stop, which epoch
converged, which checkpoints are kept - lives in small pure pieces (``lr_at``,
``EarlyStopping``, ``checkpoint_epochs``) so it can be tested on controlled validation-loss
sequences; ``train`` only wires them to a real optimisation loop.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from orchestrator.errors import BadInput, RunFailed
from orchestrator.spec import TrainingSpec
from trainer_image.data import Split, Splits
from trainer_image.models import Repairable
from trainer_image.readiness import Evidence, ReadinessPolicy, RepairedScores, Track
from trainer_image.resume import TrainState, capture_rng, detached, restore_rng

HISTORY_COLUMNS = ("epoch", "loss", "acc", "val_loss", "val_acc", "lr", "seconds")
EVAL_BATCH = 512


def lr_at(cfg: TrainingSpec, epoch: int) -> float:
    """Learning rate used during (1-based) ``epoch``.

    Both schedules are written against Keras' 0-based epoch index ``k = epoch - 1``, as in
    the companion code. ``step``: ``lr * gamma^floor(k / step)`` (epochs 1-10 at lr,
    11-20 at lr*0.1, ...). ``compound`` reproduces the released code's bug: every epoch
    multiplies the *current* rate by ``gamma^floor(k / step)``, so the decay compounds
    (x0.1 per epoch from epoch 11, x0.01 per epoch from epoch 21).
    """
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got {epoch}")
    k = epoch - 1
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.lr_gamma ** (k // cfg.lr_step_epochs)
    exponent = sum(i // cfg.lr_step_epochs for i in range(1, k + 1))
    return cfg.lr * cfg.lr_gamma**exponent


class EarlyStopping:
    """Keras-style early stopping on validation loss, plus the paper's convergence epoch.

    ``patience`` counts epochs since the last improvement larger than ``min_delta``
    (Keras semantics). The convergence epoch is the epoch with the *lowest* validation loss
    (docs/science.md), the first one on ties; with ``min_delta > 0`` it can be a later epoch
    than the last "significant" improvement. Non-finite losses never improve anything.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, enabled: bool = True) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.enabled = enabled
        self.best_epoch: int | None = None
        self.best_loss = math.inf
        self._reference = math.inf  # loss at the last significant improvement
        self._wait = 0
        self.stop = False

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record one epoch; True when it is the new lowest val loss (keep its weights)."""
        finite = math.isfinite(val_loss)
        lowest = finite and val_loss < self.best_loss
        if lowest:
            self.best_loss, self.best_epoch = val_loss, epoch
        if finite and val_loss < self._reference - self.min_delta:
            self._reference, self._wait = val_loss, 0
        else:
            self._wait += 1
        if self.enabled and self._wait >= self.patience:
            self.stop = True
        return lowest

    STATE = ("best_epoch", "best_loss", "_reference", "_wait", "stop")

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.STATE:
            setattr(self, k, state[k])


def periodic(epoch: int, every: int, first: bool = True) -> bool:
    """Whether ``epoch`` is kept regardless of where training converges (1, every k-th).

    The one rule behind both the checkpoints ``train`` hands over as it goes and the final
    set: were they two rules, a drift between them would hand the convergence weights over
    as some other epoch's checkpoint.
    """
    return (first and epoch == 1) or epoch % every == 0


def online_epochs(repair_every: int | None, last: int) -> list[int]:
    """The epochs online repair follows: every ``repair_every``-th, up to ``last``."""
    if repair_every is None:
        return []
    return [e for e in range(1, last + 1) if periodic(e, repair_every, first=False)]


def checkpoint_epochs(
    last_epoch: int,
    convergence_epoch: int,
    *,
    every: int,
    first: bool = True,
    convergence: bool = True,
) -> list[int]:
    """The paper's checkpoint set: {1} U {every k-th epoch <= last} U {convergence}."""
    epochs = {e for e in range(1, last_epoch + 1) if periodic(e, every, first)}
    if convergence:
        epochs.add(convergence_epoch)
    return sorted(epochs)


def resolve_device(name: str) -> torch.device:
    """``auto`` takes the GPU when there is one; asking for CUDA without one is bad input."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput(
            "training.device: 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu',"
            " or give the run a GPU (resources.gpus)"
        )
    return torch.device(name)


def make_deterministic(seed: int, device: torch.device, num_threads: int | None) -> None:
    """Seed torch and insist on deterministic kernels before the model is built.

    On CUDA, a few kernels the paper's models need (AdaptiveAvgPool2d backward in VGG16 and
    DenseNet121) have no deterministic implementation; there torch warns instead of failing.
    """
    if device.type == "cuda":
        # cuBLAS reads this when it initialises; deterministic GEMMs need it.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.manual_seed(seed)


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """Images as stored (uint8 0..255 stays uint8 until it reaches the device)."""
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _batch(x: torch.Tensor, idx: torch.Tensor | slice, device: torch.device) -> torch.Tensor:
    xb = x[idx].to(device, non_blocking=True)
    return xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb


@torch.no_grad()
def forward_split(
    model: nn.Module, split: Split, device: torch.device, *, features: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (and, for a ``Repairable``, penultimate features) of a split, in eval mode."""
    if features and not isinstance(model, Repairable):
        raise TypeError(f"{type(model).__name__} has no penultimate layer; wrap it as Repairable")
    model.eval()
    x = to_tensor(split.x)
    logits, feats = [], []
    for start in range(0, len(x), EVAL_BATCH):
        xb = _batch(x, slice(start, start + EVAL_BATCH), device)
        if features:
            f = model.penultimate(xb)  # type: ignore[operator]
            feats.append(f)
            logits.append(model.head(f))  # type: ignore[operator]
        else:
            logits.append(model(xb))
    out_logits = torch.cat(logits) if logits else torch.empty(0, device=device)
    return out_logits, (torch.cat(feats) if features and feats else None)


def _evaluate(model: nn.Module, split: Split, device: torch.device) -> tuple[float, float]:
    logits, _ = forward_split(model, split, device)
    return _loss_acc(logits, split, device)


def _loss_acc(logits: torch.Tensor, split: Split, device: torch.device) -> tuple[float, float]:
    y = torch.from_numpy(split.y).to(device)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights, loadable on any machine."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    convergence_epoch: int
    checkpoint_epochs: list[int]
    epochs_trained: int
    stopped_early: bool
    best_val_loss: float
    seconds: float
    resumed_after: int = 0  # the epoch a resumed run went on from (0: trained from scratch)
    online_epochs: list[int] = field(default_factory=list)  # repaired while training
    readiness: dict[str, Any] | None = None  # records.ReadinessOutcome, with training.readiness


# What ``train`` asks of online repair after every ``repair_every``-th epoch, given the epoch,
# the model and the validation split's penultimate features (from the epoch's own validation
# pass): the repaired models' validation and repair-set figures per (method, class) (see
# trainer_image.online).
OnlineRepair = Callable[[int, nn.Module, torch.Tensor], Mapping[Track, RepairedScores]]


def train(
    model: nn.Module,
    splits: Splits,
    cfg: TrainingSpec,
    seed: int,
    device: torch.device,
    *,
    on_epoch: Callable[[dict[str, float]], Any] | None = None,
    on_checkpoint: Callable[[int, dict[str, torch.Tensor]], Any] | None = None,
    on_repair: OnlineRepair | None = None,
    readiness: ReadinessPolicy | None = None,
    resume: TrainState | None = None,
    on_state: Callable[[TrainState], Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place; ``on_checkpoint(epoch, cpu_state)`` gets every kept epoch.

    Periodic checkpoints (epoch 1, every k-th) are handed over as they happen; the
    convergence checkpoint (and, with ``readiness.action: stop``, the ready epochs) are
    known only later, so their weights are held in memory and handed over last.

    After every ``cfg.repair_every``-th epoch's validation (whose pass also yields the
    validation features), ``on_repair(epoch, model, val_features)`` repairs the model (it
    must not change it; torch's global generator is forked around it, so online repair
    never changes the training trajectory) and its figures feed the ``readiness`` policy,
    which every epoch's validation feeds too.

    ``on_state`` gets a ``TrainState`` after every ``cfg.state_every``-th epoch and the last;
    ``resume`` (such a state, for a model built as for a fresh run) goes on after its epoch,
    bit-identically on CPU: the same weights, history and decisions as an uninterrupted run.
    """
    started = time.perf_counter()
    if cfg.repair_every is not None and on_repair is None:
        raise ValueError("training.repair_every is set but train() was given no on_repair")
    if (cfg.readiness is None) != (readiness is None):
        raise ValueError("train(): a readiness policy is needed exactly when training.readiness")
    if readiness is not None and readiness.needs_repair and cfg.repair_every is None:
        # The spec checks its built-in policies; this catches one given by import path.
        raise BadInput(
            f"training.readiness: policy {readiness.spec.policy!r} watches online repairs;"
            " set training.repair_every (e.g. 1)"
        )
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    # Shuffling has its own generator so that it does not depend on how many random
    # numbers model construction consumed.
    shuffle = torch.Generator().manual_seed(seed)
    x, y = to_tensor(splits.train.x), torch.from_numpy(splits.train.y)
    n = len(y)
    # shuffle_each_epoch false (the released code): every epoch uses the order a fresh
    # generator gives first, whatever epoch training starts or resumes at.
    fixed_order = (
        None
        if cfg.shuffle_each_epoch
        else torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    )
    if n == 0 or len(splits.val) == 0:
        raise BadInput("dataset: the training and validation splits must not be empty")
    stopper = EarlyStopping(cfg.patience, cfg.min_delta, cfg.early_stopping)
    history: list[dict[str, float]] = []
    # Weights of epochs that are no periodic checkpoint but may still be kept.
    held: dict[int, dict[str, torch.Tensor]] = {}
    stop_policy = readiness is not None and readiness.spec.action == "stop"

    def is_periodic(e: int) -> bool:
        return periodic(e, cfg.checkpoint_every, cfg.checkpoint_first)

    def hold(current: int) -> None:
        needed = set()
        if cfg.checkpoint_convergence and stopper.best_epoch is not None:
            needed.add(stopper.best_epoch)
        if stop_policy:
            assert readiness is not None
            needed |= readiness.candidates()
        for e in [e for e in held if e not in needed]:
            del held[e]
        if current in needed and current not in held and not is_periodic(current):
            held[current] = cpu_state(model)

    epoch, finished, spent = 0, False, 0.0
    if resume is not None:
        if not 0 < resume.epoch <= cfg.max_epochs:
            raise ValueError(f"a state after epoch {resume.epoch} cannot resume this training")
        model.load_state_dict(resume.model)
        # A copy: the optimiser would otherwise update the state's own buffers in place.
        optimizer.load_state_dict(detached(resume.optimizer))
        stopper.load_state_dict(resume.stopper)
        if readiness is not None:
            if resume.readiness is None:
                raise ValueError("the training state holds no readiness state")
            readiness.load_state_dict(resume.readiness)
        restore_rng(resume.rng, shuffle, device)
        history = [dict(r) for r in resume.history]
        held = dict(resume.held)
        hold(resume.epoch)  # the resumed epoch's own weights are the model's
        epoch, finished, spent = resume.epoch, resume.finished, resume.seconds
    resumed_after, repair_every = epoch, cfg.repair_every
    while not finished and epoch < cfg.max_epochs:
        epoch += 1
        t0 = time.perf_counter()
        lr = lr_at(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        order = fixed_order if fixed_order is not None else torch.randperm(n, generator=shuffle)
        for idx in order.split(cfg.batch_size):
            xb, yb = _batch(x, idx, device), y[idx].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
        repair_now = on_repair is not None and repair_every is not None
        repair_now = repair_now and periodic(epoch, repair_every, first=False)
        val_feats = None
        if repair_now:
            # One validation pass serves both: head(body(x)) is exactly model(x).
            val_logits, val_feats = forward_split(model, splits.val, device, features=True)
            val_loss, val_acc = _loss_acc(val_logits, splits.val, device)
        else:
            val_loss, val_acc = _evaluate(model, splits.val, device)
        row = {
            "epoch": epoch,
            "loss": loss_sum.item() / n,
            "acc": correct.item() / n,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        stopper.update(epoch, val_loss)
        if on_epoch:
            on_epoch(row)
        if is_periodic(epoch) and on_checkpoint:
            on_checkpoint(epoch, cpu_state(model))
        repaired = None
        if repair_now:
            assert on_repair is not None and val_feats is not None
            with torch.random.fork_rng(devices=_cuda_indices(device)):
                repaired = on_repair(epoch, model, val_feats)
            del val_feats
        if readiness is not None:
            readiness.observe(Evidence(epoch, val_loss, val_acc, repaired))
        hold(epoch)
        policy_stopped = readiness is not None and readiness.stops
        finished = stopper.stop or policy_stopped or epoch == cfg.max_epochs
        if on_state and cfg.state_every and (epoch % cfg.state_every == 0 or finished):
            on_state(
                TrainState(
                    epoch=epoch,
                    finished=finished,
                    model=cpu_state(model),
                    optimizer=detached(optimizer.state_dict()),
                    stopper=stopper.state_dict(),
                    readiness=None if readiness is None else readiness.state_dict(),
                    rng=capture_rng(shuffle, device),
                    history=[dict(r) for r in history],
                    held={e: w for e, w in held.items() if e != epoch},
                    seconds=spent + time.perf_counter() - started,
                )
            )
    if stopper.best_epoch is None:
        raise RunFailed(
            f"training diverged: the validation loss was not finite in any of {epoch} epochs;"
            " lower training.lr"
        )
    kept = set(
        checkpoint_epochs(
            epoch,
            stopper.best_epoch,
            every=cfg.checkpoint_every,
            first=cfg.checkpoint_first,
            convergence=cfg.checkpoint_convergence,
        )
    )
    if stop_policy:
        assert readiness is not None
        kept |= readiness.ready_epochs()
    for e in sorted(kept):
        if not is_periodic(e) and on_checkpoint:
            # Periodic ones were handed over as they happened; these were held.
            on_checkpoint(e, held[e])
    policy_stopped = readiness is not None and readiness.stops
    return TrainResult(
        history=history,
        convergence_epoch=stopper.best_epoch,
        checkpoint_epochs=sorted(kept),
        epochs_trained=epoch,
        stopped_early=(stopper.stop or policy_stopped) and epoch < cfg.max_epochs,
        best_val_loss=stopper.best_loss,
        seconds=spent + time.perf_counter() - started,
        resumed_after=resumed_after,
        online_epochs=online_epochs(repair_every, epoch),
        readiness=None if readiness is None else readiness.outcome(stopped_training=policy_stopped),
    )


def _cuda_indices(device: torch.device) -> list[int]:
    """The CUDA device whose generator ``fork_rng`` must fork (none on CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
