"""The local progress display reads typed trainer events: its bar follows a run's steps."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from orchestrator.backends.local.display import Display
from orchestrator.results import events
from orchestrator.spec import parse_spec

SPEC = parse_spec(
    {
        "name": "display",
        "datasets": ["digits"],
        "models": ["small_cnn"],
        "seeds": [1],
        "training": {"max_epochs": 6},
        "repair": {"classes": [3, 6]},
    }
)


def test_the_bar_follows_epochs_then_checkpoint_steps() -> None:
    (run,) = SPEC.runs()
    who = {"run": run.name, "index": run.index}
    display = Display(Console(file=io.StringIO(), force_terminal=False), SPEC, 1)
    state: dict[str, Any] = {"classes": 2}
    task = display.start(run, state)

    def shown() -> tuple[float | None, float, str]:
        t = display.progress.tasks[task]
        return t.total, t.completed, t.fields["stage"]

    display.event(task, events.Start(**who, max_epochs=6, classes=[3, 6]), state)
    for epoch in (1, 2, 3):
        row = dict(loss=1.0, acc=0.5, val_loss=0.75, val_acc=0.5, lr=0.01, seconds=0.1)
        display.event(task, events.Epoch(**who, max_epochs=6, epoch=epoch, **row), state)
    assert shown()[1:] == (3, "epoch 3/6 val_loss 0.750")

    # Stopped early after 4 epochs with 2 checkpoints: 4 + 2 x (1 base + 2 repairs).
    trained = events.Trained(
        **who, skipped=False, epochs=4, convergence_epoch=2, checkpoints=[1, 2]
    )
    display.event(task, trained, state)
    assert shown() == (10, 4, "trained, convergence epoch 2")
    display.event(task, events.Step(**who, step="base", epoch=2, n=4, of=6, skipped=False), state)
    assert shown()[1:] == (7, "evaluate epoch 2 (4/6)")
    step = events.Step(**who, step="repair", epoch=2, n=6, of=6, skipped=False, repair_class=6)
    display.event(task, step, state)
    assert shown()[1:] == (9, "repair epoch 2 class 6 (6/6)")
    display.event(task, events.Done(**who, skipped=False, seconds=3.0), state)
    assert shown() == (10, 10, "done")
