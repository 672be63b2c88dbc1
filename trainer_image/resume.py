"""The resumable training state: everything ``train`` needs to go on after a completed epoch
as if it had never stopped.

Why this exists: training was one step, so a pod preempted at epoch 25 of 30 retrained from
epoch 1 - on a GPU cluster the most expensive part of the run. ``train`` hands a
``TrainState`` over after every ``training.state_every``-th epoch; the trainer stores it
whole (``train/state.pt``) and, on restart, hands it back. Bit-identical continuation on
CPU needs more than the weights: the optimiser's momentum buffers, the early-stopping and
readiness bookkeeping, the weights still held for checkpoints decided later (the
convergence epoch, the readiness policy's ready epochs), the history, and every random
number generator the loop may draw from (torch's global CPU and CUDA generators - dropout -,
the shuffling generator, numpy's and Python's global ones).

The file is a plain ``torch.save`` of tensors and builtin values, read back with
``weights_only=True``: a state file can never run code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1

Weights = dict[str, torch.Tensor]


@dataclass
class TrainState:
    epoch: int  # the last completed epoch
    finished: bool  # training ended with this epoch (stopped, or max_epochs reached)
    model: Weights
    optimizer: dict[str, Any]
    stopper: dict[str, Any]
    readiness: dict[str, Any] | None
    rng: dict[str, Any]
    history: list[dict[str, float]]
    held: dict[int, Weights] = field(default_factory=dict)  # epoch -> weights kept for later
    seconds: float = 0.0  # training time spent so far, over all attempts


def detached(obj: Any) -> Any:
    """A CPU copy of every tensor in a nest of dicts, lists and tuples (the loop goes on
    changing the originals, e.g. the optimiser's momentum buffers, in place)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: detached(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(detached(v) for v in obj)
    return obj


def capture_rng(shuffle: torch.Generator, device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "shuffle": shuffle.get_state(),
        "numpy": {
            **np_state,
            "state": {**np_state["state"], "key": np_state["state"]["key"].tolist()},
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], shuffle: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    np_state = state["numpy"]
    key = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**np_state, "state": {**np_state["state"], "key": key}})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(state: TrainState, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, **{f.name: getattr(state, f.name) for f in fields(state)}}, path)


def load_state(path: Path) -> TrainState:
    """Read a state written by ``save_state``; ValueError when it is not one."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip and runtime errors for damaged files
        raise ValueError(f"not a training state ({type(e).__name__}: {e})") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"training state format {found!r}, expected {FORMAT}")
    names = {f.name for f in fields(TrainState)}
    missing = names - set(blob)
    if missing:
        raise ValueError(f"training state lacks {sorted(missing)}")
    return TrainState(**{k: blob[k] for k in names})
