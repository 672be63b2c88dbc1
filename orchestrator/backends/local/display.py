"""The live progress display of a local sweep (rich, on stderr).

It reads the trainer's progress events (``orchestrator.results.events``) and turns them into
one line for the sweep and one per running run; the backend owns processes, this only draws.
"""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from orchestrator.backends.base import RunState, RunStatus
from orchestrator.results import events
from orchestrator.spec import RunSpec, SweepSpec


def duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m {s:02d}s" if m else f"{seconds:.1f}s"


class Display:
    """The rich progress display: one line for the sweep, one per running run."""

    def __init__(self, console: Console, spec: SweepSpec, n_runs: int) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[stage]}"),
            TimeElapsedColumn(),
            # From the task's speed so far (epochs and steps alike): a rough ETA per run.
            TimeRemainingColumn(),
            console=console,
        )
        self.sweep = self.progress.add_task(
            f"sweep {spec.name}", total=n_runs, stage=f"0/{n_runs} runs done"
        )
        self.n_runs, self.finished = n_runs, 0
        self.lock = threading.Lock()

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, run: RunSpec, state: dict[str, Any]) -> TaskID:
        """A line for the run; its total is a guess until training says how it ended."""
        cfg = run.training
        kept = cfg.max_epochs // cfg.checkpoint_every + cfg.checkpoint_first + 1
        state["total"] = cfg.max_epochs + kept * (1 + len(run.repair_classes))
        return self.progress.add_task(run.name, total=state["total"], stage="starting")

    def event(self, task: TaskID, ev: events.Event, state: dict[str, Any]) -> None:
        if isinstance(ev, events.Epoch):
            state["epochs"] = ev.epoch
            stage = f"epoch {ev.epoch}/{ev.max_epochs} val_loss {ev.val_loss:.3f}"
            self.progress.update(task, completed=state["epochs"], stage=stage)
        elif isinstance(ev, events.Trained):
            state["epochs"] = ev.epochs
            state["total"] = ev.epochs + len(ev.checkpoints) * (1 + state["classes"])
            self.progress.update(
                task,
                total=state["total"],
                completed=state["epochs"],
                stage=f"trained, convergence epoch {ev.convergence_epoch}",
            )
        elif isinstance(ev, events.Step):
            done = state.get("epochs", 0) + ev.n - 1
            if ev.step == "repair":
                stage = f"repair epoch {ev.epoch} class {ev.repair_class}"
            else:
                stage = f"evaluate epoch {ev.epoch}"
            self.progress.update(task, completed=done, stage=f"{stage} ({ev.n}/{ev.of})")
        elif isinstance(ev, events.Done):
            self.progress.update(task, completed=state["total"], stage="done")

    def end(self, task: TaskID | None, status: RunStatus, seconds: float) -> None:
        with self.lock:
            self.finished += 1
            self.progress.update(
                self.sweep, advance=1, stage=f"{self.finished}/{self.n_runs} runs done"
            )
        if task is not None:
            self.progress.remove_task(task)
        if status.state is RunState.SUCCEEDED:
            how = status.message or duration(seconds)
            self.progress.console.print(f"[green]ok[/] {status.run} ({how})", highlight=False)
        else:
            self.progress.console.print(
                f"[red]{status.state.value.lower()}[/] {status.run}: {status.message}",
                markup=True,
                highlight=False,
            )
