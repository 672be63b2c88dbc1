"""The progress events a trainer prints while it works, one JSON line each on stdout.

The trainer builds them, the local backend's display reads them; both use these models, so
a field cannot be renamed on one side only. The wire format is ``json.dumps`` of the
fields in declaration order (``{"event": "epoch", "run": ..., "index": ..., ...}``), which
``early-repair trainer`` has always printed; logs go to stderr, never here.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    event: str
    run: str
    index: int  # the run's index in the sweep


class Start(_Event):
    """The run starts (or resumes) its steps."""

    event: Literal["start"] = "start"
    max_epochs: int
    classes: list[int]  # repair classes


class Epoch(_Event):
    """One training epoch ended (a row of train/history.csv)."""

    event: Literal["epoch"] = "epoch"
    max_epochs: int
    epoch: int
    loss: float
    acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float


class Trained(_Event):
    """Training ended now (``skipped``: in an earlier attempt)."""

    event: Literal["trained"] = "trained"
    skipped: bool
    epochs: int
    convergence_epoch: int
    checkpoints: list[int]


class Step(_Event):
    """Step ``n`` of ``of`` after training begins: a checkpoint's base metrics or a repair."""

    event: Literal["step"] = "step"
    step: Literal["base", "repair"]
    epoch: int
    n: int
    of: int
    skipped: bool
    # Only repair steps carry a class; base steps print no "class" key at all.
    repair_class: int | None = Field(None, alias="class", exclude_if=lambda v: v is None)


class Done(_Event):
    """The run finished (``skipped``: it was complete before this attempt)."""

    event: Literal["done"] = "done"
    skipped: bool
    seconds: float


Event = Annotated[Start | Epoch | Trained | Step | Done, Field(discriminator="event")]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def to_line(event: Event) -> str:
    """The JSON line for ``event`` (no newline)."""
    return json.dumps(event.model_dump(by_alias=True))


def from_line(line: str) -> Event | None:
    """The event a line holds, or None for anything else a child process printed."""
    try:
        return _EVENT.validate_json(line)
    except ValidationError:
        return None
