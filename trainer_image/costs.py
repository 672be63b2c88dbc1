"""What a run cost: wall, CPU and GPU seconds per stage, kept in run.json's ``costs``.

The paper's question is partly one of cost (repairing earlier saves training), so every
run measures its stages and the aggregator sums them per dataset, model and method
(``costs.csv``). The stages, each summed over its occurrences and over resumed attempts:

    data             loading the splits
    train            the training epochs (forward, backward, validation, checkpoints),
                     online repair excluded
    online_features  per online epoch: the forward passes for the penultimate features
    online_repair    per online epoch, per method: the search and the patched evaluations
    online           per online epoch, the rest: base metrics, writing the records
    evaluate         per kept checkpoint: loading it, its features, its base metrics
    repair           per kept checkpoint, per method: the search and the patched evaluation

Stages nest (online repair runs inside training); each is charged only its own time, so
the rows add up to the measured work without counting anything twice. CPU seconds are
the process's CPU time (``time.process_time``: every thread, user and system); GPU seconds
are the stage's wall time times the GPUs the run holds, when it runs on CUDA - what a
cluster bills - and 0 on CPU. On CUDA every stage boundary synchronises the device, so
queued kernels are charged to the stage that launched them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Totals:
    count: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    gpu_s: float = 0.0


class CostMeter:
    """Per-(stage, method) totals of wall, CPU and GPU seconds."""

    def __init__(self, rows: list[dict[str, Any]] | None = None) -> None:
        self._totals: dict[tuple[str, str | None], _Totals] = {}
        self._stack: list[list[float]] = []  # per open stage: [children's wall, cpu]
        self._device: torch.device | None = None
        self._gpus = 0
        for row in rows or []:  # an earlier attempt's costs: they add up
            t = self._totals.setdefault((row["stage"], row.get("method")), _Totals())
            t.count += int(row["count"])
            t.wall_s += float(row["wall_s"])
            t.cpu_s += float(row["cpu_s"])
            t.gpu_s += float(row["gpu_s"])

    def use_device(self, device: torch.device, gpus: int) -> None:
        """From now on stages run on ``device``; on CUDA they hold ``gpus`` GPUs (>= 1)."""
        self._device = device
        self._gpus = max(1, gpus) if device.type == "cuda" else 0

    def _sync(self) -> None:
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    @contextmanager
    def stage(self, stage: str, method: str | None = None) -> Iterator[None]:
        """Charge the block's own seconds (nested stages' excluded) to (stage, method).
        Charged whether or not the block succeeds: a failed attempt's work was paid for."""
        self._sync()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        children = [0.0, 0.0]
        self._stack.append(children)
        try:
            yield
        finally:
            self._sync()
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            self._stack.pop()
            if self._stack:
                self._stack[-1][0] += wall
                self._stack[-1][1] += cpu
            t = self._totals.setdefault((stage, method), _Totals())
            t.count += 1
            t.wall_s += wall - children[0]
            t.cpu_s += cpu - children[1]
            t.gpu_s += (wall - children[0]) * self._gpus

    def rows(self) -> list[dict[str, Any]]:
        """run.json's ``costs``: one row per (stage, method), in the order first seen."""
        return [
            {
                "stage": stage,
                "method": method,
                "count": t.count,
                "wall_s": round(t.wall_s, 3),
                "cpu_s": round(t.cpu_s, 3),
                "gpu_s": round(t.gpu_s, 3),
            }
            for (stage, method), t in self._totals.items()
        ]
