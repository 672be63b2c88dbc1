"""Progress events: typed on both sides, the same JSON lines on the wire as before."""

from __future__ import annotations

import json
import math

import pytest

from orchestrator.results import events

RUN = {"run": "digits-small-cnn-s1", "index": 2}
EXAMPLES: list[events.Event] = [
    events.Start(**RUN, max_epochs=6, classes=[3, 6]),
    events.Epoch(
        **RUN,
        max_epochs=6,
        epoch=1,
        loss=2.1,
        acc=0.31,
        val_loss=1.9,
        val_acc=0.4,
        lr=0.01,
        seconds=0.25,
    ),
    events.Trained(**RUN, skipped=False, epochs=6, convergence_epoch=6, checkpoints=[1, 5, 6]),
    events.Step(**RUN, step="base", epoch=5, n=4, of=9, skipped=True),
    events.Step(**RUN, step="repair", epoch=5, n=5, of=9, skipped=False, repair_class=3),
    events.Done(**RUN, skipped=False, seconds=12.5),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: f"{e.event}")
def test_every_event_survives_the_round_trip(event: events.Event) -> None:
    line = events.to_line(event)
    assert "\n" not in line
    assert events.from_line(line) == event
    assert events.from_line(line + "\n") == event  # as read from a pipe


def test_the_wire_format_is_the_hand_built_one_of_before() -> None:
    # What the trainer printed before events were typed: json.dumps of a dict with
    # "event", "run", "index" first; "class" only on repair steps.
    assert events.to_line(EXAMPLES[3]) == json.dumps(
        {"event": "step", **RUN, "step": "base", "epoch": 5, "n": 4, "of": 9, "skipped": True}
    )
    assert events.to_line(EXAMPLES[4]) == json.dumps(
        {
            "event": "step",
            **RUN,
            "step": "repair",
            "epoch": 5,
            "n": 5,
            "of": 9,
            "skipped": False,
            "class": 3,
        }
    )
    assert events.to_line(EXAMPLES[-1]) == (
        '{"event": "done", "run": "digits-small-cnn-s1", "index": 2, "skipped": false,'
        ' "seconds": 12.5}'
    )


def test_a_diverged_epoch_still_reports() -> None:
    nan = events.Epoch(
        **RUN,
        max_epochs=6,
        epoch=2,
        loss=math.nan,
        acc=0.1,
        val_loss=math.inf,
        val_acc=0.1,
        lr=0.01,
        seconds=0.2,
    )
    back = events.from_line(events.to_line(nan))
    assert isinstance(back, events.Epoch)
    assert math.isnan(back.loss) and back.val_loss == math.inf


@pytest.mark.parametrize(
    "line",
    [
        "",
        "Downloading weights...",
        "[1, 2]",
        '{"event": "epoch"}',  # fields missing
        '{"event": "paused", "run": "r", "index": 0}',  # no such event
        '{"event": "done", "run": "r", "index": 0, "skipped": false, "seconds": 1, "x": 1}',
    ],
)
def test_anything_else_on_stdout_is_not_an_event(line: str) -> None:
    assert events.from_line(line) is None
