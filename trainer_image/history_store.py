"""The training history a repair method may ask for, read from the run's store.

Why this module exists: NeuRecover compares the model being repaired with an earlier one
(``trainer_image.repair.history``). The trainer keeps the earlier models as checkpoints
(``checkpoints/epoch_NNN.pt``) and, when a configured method asks for history, the
initial weights too (``epoch_000.pt``, written before the first training step). This
module is the trainer's side: whether to keep the initial weights, and a
:class:`~trainer_image.repair.history.TrainingHistory` that loads an earlier checkpoint
into a copy of the model and runs it on the repair set - so the method sees only that
model's final layer and its predictions. A method asks for the history through its
config class (the class attribute ``uses_history``); it then finds it in ``task.history``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from orchestrator.results import layout as keys
from trainer_image.data import Splits
from trainer_image.ledger import Ledger
from trainer_image.models import Repairable
from trainer_image.repair.history import INITIAL, Reference, TrainingHistory
from trainer_image.train import cpu_state, forward_split

LoadCheckpoint = Callable[[Ledger, Repairable, int, torch.device], None]


def keep_initial(job: Ledger, model: Repairable, configs: Sequence[Any]) -> None:
    """Keep the weights before training (``checkpoints/epoch_000.pt``) when a configured
    method uses the training history (its config's ``uses_history``); called before the
    first training step. A run resumed from before this was kept rebuilds the same initial
    weights (the model is built from the run's seed), so it is kept then too."""
    if initial_kept(job) or not any(getattr(c, "uses_history", False) for c in configs):
        return
    path = job.checkpoint_path(INITIAL)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cpu_state(model), path)
    job.put_file(keys.checkpoint(job.sweep, job.name, INITIAL), path)


def initial_kept(job: Ledger) -> bool:
    """Whether the run's store holds the initial weights (``checkpoints/epoch_000.pt``)."""
    return job.done(keys.checkpoint(job.sweep, job.name, INITIAL))


def history_for(
    job: Ledger,
    model: Repairable,
    splits: Splits,
    device: torch.device,
    kept: Sequence[int],
    epoch: int,
    load: LoadCheckpoint,
) -> TrainingHistory:
    """The history of a repair at ``epoch``; earlier models load into a copy of ``model``
    (the one being repaired stays as it is)."""

    def reference(earlier: int) -> Reference:
        other = copy.deepcopy(model)
        load(job, other, earlier, device)
        with torch.no_grad():
            logits, _ = forward_split(other, splits.repair, device)
        head = other.head
        return Reference(
            epoch=earlier,
            weight=head.weight.detach().cpu().clone(),
            bias=None if head.bias is None else head.bias.detach().cpu().clone(),
            pred=logits.argmax(1).cpu().numpy(),
        )

    return TrainingHistory(epoch=epoch, kept=list(kept), initial=initial_kept(job), load=reference)
