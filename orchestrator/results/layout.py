"""The result layout in the store (a contract, the README's "Results layout"): building keys
and reading them back.

Keys are relative to the results root (the spec's ``results`` URI):

    <sweep>/sweep.json
    <sweep>/<run>/run.json
    <sweep>/<run>/train/history.csv
    <sweep>/<run>/train/summary.json
    <sweep>/<run>/train/state.pt          (while training: the latest resumable state)
    <sweep>/<run>/checkpoints/epoch_NNN.pt (epoch_000.pt: the initial weights, kept when a
                                           repair method uses the training history)
    <sweep>/<run>/test_labels.npy         (the true test labels, in the run's test order)
    <sweep>/<run>/epoch_NNN/base/{metrics.json,predictions.npy}
    <sweep>/<run>/epoch_NNN/repair/<method>/class_C/{metrics.json,predictions.npy,patch.json,
                                                     search.csv}
    <sweep>/<run>/logs/trainer.log
    <sweep>/<run>/records.arrow
    <sweep>/<run>/_SUCCESS

Repair keys without the ``<method>`` level (``epoch_NNN/repair/class_C/...``, the first
layout, from before repair methods became a sweep dimension) are read as ``DEFAULT_METHOD``.
``records.arrow`` is a finished run's metrics records in one object (see
``orchestrator.results.records.dump_run_records``), written just before ``_SUCCESS``.

The trainer writes them, the aggregator and ``status`` read them; both go through here so
the two sides cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# What a repair key without a method level means: the first layout only knew Arachne.
DEFAULT_METHOD = "arachne"
# Listing a sweep with this delimiter returns every run's own files (run.json, _SUCCESS,
# records.arrow, train/...) with all of its epoch folders rolled up into one entry each
# (S3's CommonPrefixes): how the aggregator finds finished runs without listing every record.
RUN_FILES_DELIMITER = "/epoch_"


def sweep_json(sweep: str) -> str:
    return f"{sweep}/sweep.json"


def run_prefix(sweep: str, run: str) -> str:
    return f"{sweep}/{run}"


def run_json(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/run.json"


def history_csv(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/train/history.csv"


def summary_json(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/train/summary.json"


def train_state(sweep: str, run: str) -> str:
    """The latest resumable training state; deleted once ``summary.json`` exists."""
    return f"{sweep}/{run}/train/state.pt"


def checkpoint(sweep: str, run: str, epoch: int) -> str:
    return f"{sweep}/{run}/checkpoints/epoch_{epoch:03d}.pt"


def epoch_dir(sweep: str, run: str, epoch: int) -> str:
    return f"{sweep}/{run}/epoch_{epoch:03d}"


def base_metrics(sweep: str, run: str, epoch: int) -> str:
    return f"{epoch_dir(sweep, run, epoch)}/base/metrics.json"


def repair_dir(
    sweep: str, run: str, epoch: int, cls: int, method: str | None = DEFAULT_METHOD
) -> str:
    """``method=None``: the first layout, without a method level (read as DEFAULT_METHOD)."""
    level = f"{method}/" if method else ""
    return f"{epoch_dir(sweep, run, epoch)}/repair/{level}class_{cls}"


def repair_metrics(
    sweep: str, run: str, epoch: int, cls: int, method: str | None = DEFAULT_METHOD
) -> str:
    return f"{repair_dir(sweep, run, epoch, cls, method)}/metrics.json"


def repair_patch(
    sweep: str, run: str, epoch: int, cls: int, method: str | None = DEFAULT_METHOD
) -> str:
    return f"{repair_dir(sweep, run, epoch, cls, method)}/patch.json"


def repair_search(
    sweep: str, run: str, epoch: int, cls: int, method: str | None = DEFAULT_METHOD
) -> str:
    return f"{repair_dir(sweep, run, epoch, cls, method)}/search.csv"


def log(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/logs/trainer.log"


def test_labels(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/test_labels.npy"


def predictions(metrics_key: str) -> str:
    """The ``predictions.npy`` beside a ``metrics.json`` (base or repaired)."""
    return metrics_key.removesuffix("metrics.json") + "predictions.npy"


def records(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/records.arrow"


def success(sweep: str, run: str) -> str:
    return f"{sweep}/{run}/_SUCCESS"


# --- reading keys back ------------------------------------------------------------------
# The inverse of the builders above, in one place, so that readers (the aggregator,
# `status`) never match paths by hand.

Kind = Literal[
    "sweep_json",
    "run_json",
    "success",
    "records",
    "summary",
    "history",
    "train_state",
    "checkpoint",
    "base",
    "repair",
    "predictions",
    "test_labels",
    "log",
]

_RUN_FILES: dict[str, Kind] = {
    "run.json": "run_json",
    "_SUCCESS": "success",
    "records.arrow": "records",
    "test_labels.npy": "test_labels",
    "train/summary.json": "summary",
    "train/history.csv": "history",
    "train/state.pt": "train_state",
    "logs/trainer.log": "log",
}
_EPOCH_KEY = re.compile(
    r"^(?:checkpoints/epoch_(?P<ckpt>\d{3,})\.pt"
    r"|epoch_(?P<epoch>\d{3,})/(?:(?P<base>base)"
    r"|repair/(?:(?!class_\d+/)(?P<method>[A-Za-z0-9][A-Za-z0-9_.+-]*)/)?class_(?P<cls>\d+))"
    r"/(?P<file>metrics\.json|predictions\.npy))$"
)


@dataclass(frozen=True)
class Key:
    """What one key of the layout names; ``sweep`` is None for keys relative to a sweep."""

    kind: Kind
    sweep: str | None
    run: str | None = None
    epoch: int | None = None
    repair_class: int | None = None
    method: str | None = None  # repair keys only; DEFAULT_METHOD for the first layout


def parse(key: str, *, root: bool = True) -> Key | None:
    """The ``Key`` a store key names, or None for keys outside the layout.

    ``root``: keys are relative to a results root (``<sweep>/<run>/...``); otherwise to one
    sweep's folder (``<run>/...``). The two never read the same key the same way.
    """
    sweep: str | None = None
    if root:
        sweep, sep, key = key.partition("/")
        if not sep or not sweep:
            return None
    if key == "sweep.json":
        return Key("sweep_json", sweep)
    run, sep, rel = key.partition("/")
    if not sep or not run or run == "sweep.json":
        return None
    if kind := _RUN_FILES.get(rel):
        return Key(kind, sweep, run)
    m = _EPOCH_KEY.match(rel)
    if m is None:
        return None
    if m["ckpt"] is not None:
        return Key("checkpoint", sweep, run, int(m["ckpt"]))
    predicted = m["file"] == "predictions.npy"
    if m["base"]:
        return Key("predictions" if predicted else "base", sweep, run, int(m["epoch"]))
    method = m["method"] or DEFAULT_METHOD
    kind: Kind = "predictions" if predicted else "repair"
    return Key(kind, sweep, run, int(m["epoch"]), int(m["cls"]), method)


def run_folder(key: str, *, root: bool = True) -> tuple[str | None, str] | None:
    """(sweep, run) of the run folder ``key`` lies in, also for keys ``parse`` does not
    know (a rolled-up listing entry, a stray file); None for keys outside any run folder."""
    sweep: str | None = None
    if root:
        sweep, sep, key = key.partition("/")
        if not sep or not sweep:
            return None
    run, sep, rest = key.partition("/")
    if not sep or not run or not rest:
        return None
    return sweep, run
