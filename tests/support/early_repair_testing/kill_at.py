"""The ``early-repair`` CLI, SIGKILLed at a chosen point of training (for resume tests).

``KILL_AT=state:K`` kills the process right after the training state of epoch K was stored;
``KILL_AT=epoch:K`` right after epoch K's history row was written, before its state exists
(so epoch K must be trained again). No cleanup runs: it is a crash. Without ``KILL_AT`` it
is the plain CLI. The wrapper patches ``trainer_image.train.train`` before the CLI imports
the trainer, which binds ``train`` by name.

Run (tests/support on PYTHONPATH)::

    python -m early_repair_testing.kill_at trainer --sweep FILE --run-index 0
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from trainer_image import train as train_mod


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _patch(where: str, epoch: int) -> None:
    real = train_mod.train

    def train(*args: Any, **kwargs: Any) -> Any:
        on_state, on_epoch = kwargs.get("on_state"), kwargs.get("on_epoch")

        def state_then_kill(state: Any) -> None:
            on_state(state)
            if where == "state" and state.epoch == epoch:
                _kill()

        def epoch_then_kill(row: dict[str, float]) -> None:
            if on_epoch:
                on_epoch(row)
            if where == "epoch" and row["epoch"] == epoch:
                _kill()

        kwargs["on_state"] = state_then_kill if on_state else None
        kwargs["on_epoch"] = epoch_then_kill
        return real(*args, **kwargs)

    train_mod.train = train


if __name__ == "__main__":
    if spec := os.environ.get("KILL_AT"):
        kind, _, k = spec.partition(":")
        if kind not in ("state", "epoch"):
            raise SystemExit(f"KILL_AT={spec!r}: use state:K or epoch:K")
        _patch(kind, int(k))
    from orchestrator.cli import main

    main(sys.argv[1:])
