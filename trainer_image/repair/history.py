"""Earlier weights of the model being repaired: what a repair from the training history sees.

Why this module exists: NeuRecover (``neurecover.py``) localises the weights to change from
how they moved during training and from which repair-set inputs an earlier model got right.
A sweep keeps that history as checkpoints (``checkpoints/epoch_NNN.pt``, and the initial
weights as ``epoch_000.pt`` when a configured method asks for them); the trainer turns the
one a method asks for into a :class:`Reference` through a :class:`TrainingHistory`, so the
method itself needs no store and no network - only the earlier final layer and that
model's predictions on the repair set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Which = Literal["previous", "first", "initial"]

# The epoch number of the initial weights (before the first training step).
INITIAL = 0


@dataclass(frozen=True)
class Reference:
    """The final layer of an earlier model and that model's predictions on the repair set."""

    epoch: int  # 0: the initial weights
    weight: torch.Tensor
    bias: torch.Tensor | None
    pred: np.ndarray  # (N,) its predicted classes on the repair set


def reference_epoch(which: Which, epoch: int, kept: Sequence[int], initial: bool) -> int | None:
    """Which earlier epoch a repair at ``epoch`` compares with; None when there is none.

    ``previous``: the latest kept checkpoint before ``epoch``; ``first``: the first kept
    checkpoint (epoch 1 by default); ``initial``: the initial weights. Where the chosen one
    does not exist before ``epoch`` (the first checkpoint has no earlier one), the initial
    weights, when they were kept (``initial``).
    """
    earlier = sorted(e for e in kept if INITIAL < e < epoch)
    if which == "previous" and earlier:
        return earlier[-1]
    if which == "first" and earlier:
        return earlier[0]
    return INITIAL if initial else None


@dataclass
class TrainingHistory:
    """The kept epochs of a run and a loader of one of them (``load(epoch) -> Reference``).

    ``kept`` are the epochs with weights in the store, without the initial ones;
    ``initial`` whether those were kept too. ``load`` is the trainer's (it runs the earlier
    model on the repair set); results are cached, so several methods and classes of one
    checkpoint load an earlier model once.
    """

    epoch: int
    kept: Sequence[int]
    initial: bool
    load: Callable[[int], Reference]

    def __post_init__(self) -> None:
        self._cache: dict[int, Reference] = {}

    def reference(self, which: Which) -> Reference | None:
        e = reference_epoch(which, self.epoch, self.kept, self.initial)
        if e is None:
            return None
        if e not in self._cache:
            self._cache[e] = self.load(e)
        return self._cache[e]
