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
    _check_hooks(cfg, on_repair, readiness)
    run = _Run(model, splits, cfg, seed, device, readiness)
    epoch, finished, spent = 0, False, 0.0
    if resume is not None:
        epoch, finished, spent = run.resume(resume)
    resumed_after = epoch
    while not finished and epoch < cfg.max_epochs:
        epoch += 1
        row, val_feats = run.epoch(epoch)
        if on_epoch:
            on_epoch(row)
        if run.is_periodic(epoch) and on_checkpoint:
            on_checkpoint(epoch, cpu_state(model))
        repaired = None
        if val_feats is not None:
            assert on_repair is not None
            with torch.random.fork_rng(devices=_cuda_indices(device)):
                repaired = on_repair(epoch, model, val_feats)
            del val_feats
        if readiness is not None:
            readiness.observe(Evidence(epoch, row["val_loss"], row["val_acc"], repaired))
        run.hold(epoch)
        finished = run.stops() or epoch == cfg.max_epochs
        if on_state and cfg.state_every and (epoch % cfg.state_every == 0 or finished):
            on_state(run.state(epoch, finished, spent + time.perf_counter() - started))
    kept = run.kept(epoch)
    for e in sorted(kept):
        if not run.is_periodic(e) and on_checkpoint:
            # Periodic ones were handed over as they happened; these were held.
            on_checkpoint(e, run.held[e])
    return run.result(epoch, kept, spent + time.perf_counter() - started, resumed_after)


def _check_hooks(
    cfg: TrainingSpec, on_repair: OnlineRepair | None, readiness: ReadinessPolicy | None
) -> None:
    """``train``'s hooks agree with the training spec (a programming error otherwise)."""
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


class _Run:
    """What the epochs of one ``train`` call share: the optimiser, the shuffling generator,
    early stopping, the readiness policy, the history and the held weights.

    The order of construction is part of the trajectory: nothing here draws from torch's
    global generator, and shuffling has its own.
    """

    def __init__(
        self,
        model: nn.Module,
        splits: Splits,
        cfg: TrainingSpec,
        seed: int,
        device: torch.device,
        readiness: ReadinessPolicy | None,
    ) -> None:
        self.model, self.splits, self.cfg, self.device = model, splits, cfg, device
        self.readiness = readiness
        model.to(device)
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        # Shuffling has its own generator so that it does not depend on how many random
        # numbers model construction consumed.
        self.shuffle = torch.Generator().manual_seed(seed)
        self.x, self.y = to_tensor(splits.train.x), torch.from_numpy(splits.train.y)
        self.n = len(self.y)
        # shuffle_each_epoch false (the released code): every epoch uses the order a fresh
        # generator gives first, whatever epoch training starts or resumes at.
        self.fixed_order = (
            None
            if cfg.shuffle_each_epoch
            else torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
        )
        if self.n == 0 or len(splits.val) == 0:
            raise BadInput("dataset: the training and validation splits must not be empty")
        self.stopper = EarlyStopping(cfg.patience, cfg.min_delta, cfg.early_stopping)
        self.history: list[dict[str, float]] = []
        # Weights of epochs that are no periodic checkpoint but may still be kept.
        self.held: dict[int, dict[str, torch.Tensor]] = {}
        self.stop_policy = readiness is not None and readiness.spec.action == "stop"

    def is_periodic(self, e: int) -> bool:
        return periodic(e, self.cfg.checkpoint_every, self.cfg.checkpoint_first)

    def hold(self, current: int) -> None:
        """Keep (a CPU copy of) the weights of ``current`` if it may yet be kept; drop
        those of epochs that no longer may."""
        needed = set()
        if self.cfg.checkpoint_convergence and self.stopper.best_epoch is not None:
            needed.add(self.stopper.best_epoch)
        if self.stop_policy:
            assert self.readiness is not None
            needed |= self.readiness.candidates()
        for e in [e for e in self.held if e not in needed]:
            del self.held[e]
        if current in needed and current not in self.held and not self.is_periodic(current):
            self.held[current] = cpu_state(self.model)

    def resume(self, state: TrainState) -> tuple[int, bool, float]:
        """Go on from ``state``: its epoch, whether it had finished, and its seconds."""
        if not 0 < state.epoch <= self.cfg.max_epochs:
            raise ValueError(f"a state after epoch {state.epoch} cannot resume this training")
        self.model.load_state_dict(state.model)
        # A copy: the optimiser would otherwise update the state's own buffers in place.
        self.optimizer.load_state_dict(detached(state.optimizer))
        self.stopper.load_state_dict(state.stopper)
        if self.readiness is not None:
            if state.readiness is None:
                raise ValueError("the training state holds no readiness state")
            self.readiness.load_state_dict(state.readiness)
        restore_rng(state.rng, self.shuffle, self.device)
        self.history = [dict(r) for r in state.history]
        self.held = dict(state.held)
        self.hold(state.epoch)  # the resumed epoch's own weights are the model's
        return state.epoch, state.finished, state.seconds

    def epoch(self, epoch: int) -> tuple[dict[str, float], torch.Tensor | None]:
        """Train one epoch and validate: its history row (recorded, and seen by early
        stopping), and the validation features when the epoch is one to repair online."""
        t0 = time.perf_counter()
        lr = lr_at(self.cfg, epoch)
        loss_sum, correct = self._fit(lr)
        every = self.cfg.repair_every
        val_feats = None
        if every is not None and periodic(epoch, every, first=False):
            # One validation pass serves both: head(body(x)) is exactly model(x).
            val = self.splits.val
            val_logits, val_feats = forward_split(self.model, val, self.device, features=True)
            val_loss, val_acc = _loss_acc(val_logits, val, self.device)
        else:
            val_loss, val_acc = _evaluate(self.model, self.splits.val, self.device)
        row = {
            "epoch": epoch,
            "loss": loss_sum.item() / self.n,
            "acc": correct.item() / self.n,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "seconds": time.perf_counter() - t0,
        }
        self.history.append(row)
        self.stopper.update(epoch, val_loss)
        return row, val_feats

    def _fit(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over the training split at ``lr``: the summed loss and the hits."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model, device, optimizer = self.model, self.device, self.optimizer
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        order = self.fixed_order
        if order is None:
            order = torch.randperm(self.n, generator=self.shuffle)
        for idx in order.split(self.cfg.batch_size):
            xb, yb = _batch(self.x, idx, device), self.y[idx].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
        return loss_sum, correct

    def stops(self) -> bool:
        """Early stopping or the readiness policy ends training."""
        return self.stopper.stop or (self.readiness is not None and self.readiness.stops)

    def state(self, epoch: int, finished: bool, seconds: float) -> TrainState:
        """Everything a resumed run needs to go on after ``epoch`` bit-identically."""
        return TrainState(
            epoch=epoch,
            finished=finished,
            model=cpu_state(self.model),
            optimizer=detached(self.optimizer.state_dict()),
            stopper=self.stopper.state_dict(),
            readiness=None if self.readiness is None else self.readiness.state_dict(),
            rng=capture_rng(self.shuffle, self.device),
            history=[dict(r) for r in self.history],
            held={e: w for e, w in self.held.items() if e != epoch},
            seconds=seconds,
        )

    def kept(self, last: int) -> set[int]:
        """The checkpoint set once training ended after ``last``."""
        if self.stopper.best_epoch is None:
            raise RunFailed(
                f"training diverged: the validation loss was not finite in any of {last}"
                " epochs; lower training.lr"
            )
        kept = set(
            checkpoint_epochs(
                last,
                self.stopper.best_epoch,
                every=self.cfg.checkpoint_every,
                first=self.cfg.checkpoint_first,
                convergence=self.cfg.checkpoint_convergence,
            )
        )
        if self.stop_policy:
            assert self.readiness is not None
            kept |= self.readiness.ready_epochs()
        return kept

    def result(self, last: int, kept: set[int], seconds: float, resumed_after: int) -> TrainResult:
        """What ``train`` returns once the checkpoints are handed over."""
        readiness, stopper = self.readiness, self.stopper
        policy_stopped = readiness is not None and readiness.stops
        assert stopper.best_epoch is not None  # kept() checked it
        return TrainResult(
            history=self.history,
            convergence_epoch=stopper.best_epoch,
            checkpoint_epochs=sorted(kept),
            epochs_trained=last,
            stopped_early=(stopper.stop or policy_stopped) and last < self.cfg.max_epochs,
            best_val_loss=stopper.best_loss,
            seconds=seconds,
            resumed_after=resumed_after,
            online_epochs=online_epochs(self.cfg.repair_every, last),
            readiness=None
            if readiness is None
            else readiness.outcome(stopped_training=policy_stopped),
        )


def _cuda_indices(device: torch.device) -> list[int]:
    """The CUDA device whose generator ``fork_rng`` must fork (none on CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
