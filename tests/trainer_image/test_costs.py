"""The cost meter behind run.json's ``costs``: nested stages charged only their own
seconds, an earlier attempt's costs carried over, GPU seconds only on CUDA. A fake clock
stands in for time.perf_counter and time.process_time, so nothing depends on how busy
the machine is."""

from __future__ import annotations

import pytest
import torch

from trainer_image import costs
from trainer_image.costs import CostMeter


class Clock:
    """Wall and CPU time that move only when the test says so."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wall = self.cpu = 0.0
        monkeypatch.setattr(costs.time, "perf_counter", lambda: self.wall)
        monkeypatch.setattr(costs.time, "process_time", lambda: self.cpu)

    def spend(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


def by_key(meter: CostMeter) -> dict[tuple[str, str | None], dict]:
    return {(r["stage"], r["method"]): r for r in meter.rows()}


def test_nested_stages_are_charged_only_their_own_seconds(monkeypatch) -> None:
    clock = Clock(monkeypatch)
    meter = CostMeter()
    with meter.stage("train"):
        clock.spend(10, 8)
        for _ in range(3):
            with meter.stage("online_repair", "arachne"):
                clock.spend(2, 1.5)
            with meter.stage("online_repair", "finetune"):
                clock.spend(1, 1)
        clock.spend(0.5, 0.5)
    rows = by_key(meter)
    assert rows["train", None] == {
        "stage": "train",
        "method": None,
        "count": 1,
        "wall_s": 10.5,
        "cpu_s": 8.5,
        "gpu_s": 0.0,
    }
    assert (
        rows["online_repair", "arachne"]["count"],
        rows["online_repair", "arachne"]["cpu_s"],
    ) == (
        3,
        4.5,
    )
    assert rows["online_repair", "finetune"]["wall_s"] == 3
    # Nothing counted twice: the rows add up to the outer block's time.
    assert sum(r["wall_s"] for r in rows.values()) == clock.wall == 19.5
    assert sum(r["cpu_s"] for r in rows.values()) == clock.cpu == 16


def test_a_failed_stage_is_still_charged(monkeypatch) -> None:
    clock = Clock(monkeypatch)
    meter = CostMeter()
    with pytest.raises(RuntimeError), meter.stage("repair", "arachne"):
        clock.spend(3, 2)
        raise RuntimeError("boom")
    assert by_key(meter)["repair", "arachne"]["cpu_s"] == 2


def test_an_earlier_attempts_costs_add_up(monkeypatch) -> None:
    clock = Clock(monkeypatch)
    first = CostMeter()
    with first.stage("train"):
        clock.spend(4, 3)
    resumed = CostMeter(first.rows())
    with resumed.stage("train"):
        clock.spend(6, 5)
    assert by_key(resumed)["train", None] == {
        "stage": "train",
        "method": None,
        "count": 2,
        "wall_s": 10,
        "cpu_s": 8,
        "gpu_s": 0,
    }


def test_gpu_seconds_are_wall_seconds_times_gpus_held_on_cuda(monkeypatch) -> None:
    clock = Clock(monkeypatch)
    synced: list[torch.device] = []
    monkeypatch.setattr(costs.torch.cuda, "synchronize", synced.append)
    meter = CostMeter()
    meter.use_device(torch.device("cpu"), gpus=2)
    with meter.stage("data"):
        clock.spend(1, 1)
    meter.use_device(torch.device("cuda", 0), gpus=2)
    with meter.stage("train"):
        clock.spend(5, 1)
    meter.use_device(torch.device("cuda", 0), gpus=0)  # a local run on a GPU it did not ask for
    with meter.stage("evaluate"):
        clock.spend(2, 1)
    rows = by_key(meter)
    assert rows["data", None]["gpu_s"] == 0
    assert rows["train", None]["gpu_s"] == 10
    assert rows["evaluate", None]["gpu_s"] == 2
    assert len(synced) == 4  # both ends of both CUDA stages: queued kernels are charged
