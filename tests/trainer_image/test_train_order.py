"""The batch order of training: reshuffled every epoch (paper) or drawn once and reused
(``training.shuffle_each_epoch: false``, the released code), observed from the images a
real model is trained on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from orchestrator.spec import TrainingSpec
from trainer_image.data import Split, Splits
from trainer_image.models import Repairable
from trainer_image.train import train

torch.set_num_threads(1)
N, BATCH = 23, 5


def numbered() -> Splits:
    """Training image i carries i in its first pixel, so a batch tells which images it holds."""
    x = np.random.default_rng(0).random((N, 1, 2, 2)).astype(np.float32)
    x[:, 0, 0, 0] = np.arange(N)
    y = np.arange(N) % 2
    part = Split(x[:6], y[:6])
    return Splits(train=Split(x, y), val=part, repair=part, test=part, num_classes=2)


def orders(shuffle_each_epoch: bool, seed: int = 1024, epochs: int = 3) -> list[list[int]]:
    torch.manual_seed(0)
    model = Repairable(nn.Flatten(), nn.Linear(4, 2))
    seen: list[int] = []

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if module.training:
            seen.extend(int(v) for v in args[0][:, 0, 0, 0].round())

    model.register_forward_pre_hook(record)
    cfg = TrainingSpec(
        max_epochs=epochs,
        batch_size=BATCH,
        early_stopping=False,
        device="cpu",
        shuffle_each_epoch=shuffle_each_epoch,
    )
    train(model, numbered(), cfg, seed=seed, device=torch.device("cpu"))
    return [seen[e * N : (e + 1) * N] for e in range(epochs)]


@pytest.mark.parametrize("seed", [1024, 2048])
def test_batch_order_reshuffled_or_drawn_once(seed: int) -> None:
    first = torch.randperm(N, generator=torch.Generator().manual_seed(seed)).tolist()
    again = orders(True, seed)
    once = orders(False, seed)
    assert all(sorted(o) == list(range(N)) for o in again + once)  # every image once per epoch
    assert again[0] == first and again[1] != again[0] and again[2] != again[1]
    assert once == [first] * 3  # the released code: the same batches in every epoch
