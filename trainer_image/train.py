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
from collections.abc import Callable
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


def periodic(epoch: int, every: int, first: bool = True) -> bool:
    """Whether ``epoch`` is kept regardless of where training converges (1, every k-th).

    The one rule behind both the checkpoints ``train`` hands over as it goes and the final
    set: were they two rules, a drift between them would hand the convergence weights over
    as some other epoch's checkpoint.
    """
    return (first and epoch == 1) or epoch % every == 0


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
    best_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


def train(
    model: nn.Module,
    splits: Splits,
    cfg: TrainingSpec,
    seed: int,
    device: torch.device,
    *,
    on_epoch: Callable[[dict[str, float]], Any] | None = None,
    on_checkpoint: Callable[[int, dict[str, torch.Tensor]], Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place; ``on_checkpoint(epoch, cpu_state)`` gets every kept epoch.

    Periodic checkpoints (epoch 1, every k-th) are handed over as they happen; the
    convergence checkpoint is known only at the end, so its weights are kept in memory and
    handed over last (unless it is also a periodic one).
    """
    started = time.perf_counter()
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
    best_state: dict[str, torch.Tensor] = {}
    saved: set[int] = set()
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
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
        if stopper.update(epoch, val_loss) and cfg.checkpoint_convergence:
            best_state = cpu_state(model)
        if on_epoch:
            on_epoch(row)
        if periodic(epoch, cfg.checkpoint_every, cfg.checkpoint_first):
            saved.add(epoch)
            if on_checkpoint:
                on_checkpoint(epoch, cpu_state(model))
        if stopper.stop:
            break
    if stopper.best_epoch is None:
        raise RunFailed(
            f"training diverged: the validation loss was not finite in any of {epoch} epochs;"
            " lower training.lr"
        )
    kept = checkpoint_epochs(
        epoch,
        stopper.best_epoch,
        every=cfg.checkpoint_every,
        first=cfg.checkpoint_first,
        convergence=cfg.checkpoint_convergence,
    )
    for e in kept:
        if e not in saved and on_checkpoint:
            # Only the convergence epoch can be missing: the others were handed over above.
            on_checkpoint(e, best_state)
    return TrainResult(
        history=history,
        convergence_epoch=stopper.best_epoch,
        checkpoint_epochs=kept,
        epochs_trained=epoch,
        stopped_early=stopper.stop and epoch < cfg.max_epochs,
        best_val_loss=stopper.best_loss,
        seconds=time.perf_counter() - started,
        best_state=best_state,
    )
