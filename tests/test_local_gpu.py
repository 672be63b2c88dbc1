"""GPU-aware local scheduling: discovery, the packing planner and GpuPool, on a fake NVML."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from fake_nvml import FakeGpu, FakeMig, FakeNvml, GiB, no_driver

from orchestrator.errors import BadInput
from orchestrator.gpus import GpuInfo, GpuPool, discover, pack
from orchestrator.spec import ResourcesSpec

UUIDS = [f"GPU-{i}{i}{i}{i}bbbb-0000-1111-2222-33334444555{i}" for i in range(4)]


def box() -> FakeNvml:
    """Four GPUs with different free memory: 20, 9, 3 and 40 GiB (others use the rest)."""
    return FakeNvml(
        [
            FakeGpu(UUIDS[0], total=24 * GiB, used=4 * GiB, name="NVIDIA RTX A5000"),
            FakeGpu(UUIDS[1], total=16 * GiB, used=7 * GiB, name="Tesla V100-SXM2-16GB"),
            FakeGpu(UUIDS[2], total=16 * GiB, used=13 * GiB, name="Tesla V100-SXM2-16GB"),
            FakeGpu(UUIDS[3], total=80 * GiB, used=40 * GiB),
        ]
    )


def res(**kw: object) -> ResourcesSpec:
    return ResourcesSpec.model_validate({"gpus": 1, "vram_estimate": "4GiB", **kw})


def test_discovery_reads_free_memory_and_respects_visibility() -> None:
    gpus = discover(nvml=box(), env={})
    assert [(g.index, g.free // GiB) for g in gpus] == [(0, 20), (1, 9), (2, 3), (3, 40)]
    assert gpus[1] == GpuInfo(1, UUIDS[1], "Tesla V100-SXM2-16GB", 16 * GiB, 9 * GiB)
    only = discover(nvml=box(), env={"CUDA_VISIBLE_DEVICES": f"{UUIDS[3]},1"})
    assert [g.uuid for g in only] == [UUIDS[3], UUIDS[1]]


def test_no_nvml_means_no_gpu() -> None:
    lines: list[str] = []
    assert discover(nvml=no_driver(), env={}, log=lines.append) == []
    assert len(lines) == 1 and "runs use the CPU" in lines[0]


def test_runs_are_packed_by_free_memory_and_spread_first() -> None:
    gpus = discover(nvml=box(), env={})
    plan = pack(gpus, res(), 20)
    # The first runs go one per GPU that fits (GPU 2 has 3 GiB free: none), largest first.
    assert plan[:4] == [(3,), (0,), (1,), (3,)]
    placed = Counter(where[0] for where in plan if where)
    assert placed == {3: 10, 0: 5, 1: 2}  # floor(free / 4 GiB) each; GPU 2 never used
    assert plan[17:] == [None, None, None]  # these wait for a slot
    for i, n in placed.items():
        assert n * 4 * GiB <= gpus[i].free


def test_multi_gpu_runs_get_distinct_gpus() -> None:
    gpus = discover(nvml=box(), env={})
    plan = pack(gpus, res(gpus=2, vram_estimate="8GiB"), 6)
    # Run 2 prefers GPU 1 (none of our runs yet) over GPU 0 (one already); then memory decides.
    assert plan == [(0, 3), (1, 3), (0, 3), None, None, None]
    per_gpu = Counter(i for where in plan if where for i in where)
    assert all(per_gpu[i] * 8 * GiB <= gpus[i].free for i in per_gpu)
    assert per_gpu == {3: 3, 0: 2, 1: 1}  # a partner GPU runs out before the 40 GiB one


def test_a_run_that_fits_nowhere_is_bad_input() -> None:
    with pytest.raises(BadInput) as caught:
        GpuPool(discover(nvml=box(), env={}), res(vram_estimate="41GiB"))
    message = str(caught.value)
    assert message.startswith("resources.vram_estimate: a run needs 41.0GiB")
    assert f"40.0GiB (GPU 3 ({UUIDS[3]}))" in message and caught.value.exit_code == 2
    with pytest.raises(BadInput, match=r"^resources\.gpus: a run needs 5 GPUs"):
        GpuPool(discover(nvml=box(), env={}), res(gpus=5))
    with pytest.raises(BadInput, match=r"^resources\.vram_estimate: .* each of 4 GPU"):
        GpuPool(discover(nvml=box(), env={}), res(gpus=4))  # GPU 2 cannot take 4 GiB


def test_pool_slots_carry_uuids_and_block_until_released() -> None:
    pool = GpuPool.discover(res(vram_estimate="10GiB"), nvml=box(), env={})
    first = [pool.acquire(f"r{i}", timeout=5) for i in range(6)]  # 40 GiB: 4 slots, 20 GiB: 2 slots
    assert Counter(s.gpus[0].index for s in first) == {3: 4, 0: 2}
    assert first[0].env == {"CUDA_VISIBLE_DEVICES": UUIDS[3]}
    assert first[1].env == {"CUDA_VISIBLE_DEVICES": UUIDS[0]}
    assert pool.promised() == [20 * GiB, 0, 0, 40 * GiB]
    assert pool.try_acquire("r6") is None
    with pytest.raises(TimeoutError):
        pool.acquire("r6", timeout=0.05)

    got: list[str] = []

    def wait_for_room() -> None:
        got.append(pool.acquire("r6", timeout=30).gpus[0].uuid)

    waiter = threading.Thread(target=wait_for_room)
    waiter.start()
    time.sleep(0.05)
    assert got == []  # still waiting
    pool.release(first[1])  # a 20 GiB-GPU run ends
    waiter.join(timeout=2)  # woken by the release, not by its own timeout
    assert got == [UUIDS[0]]
    with pytest.raises(ValueError, match="not held"):
        pool.release(first[1])


def test_pool_never_promises_more_than_free_memory_under_contention() -> None:
    gpus = discover(nvml=box(), env={})
    pool = GpuPool(gpus, res(vram_estimate="3GiB"))
    full = [pool.acquire(f"fill{i}", timeout=5) for i in range(23)]  # 6 + 3 + 1 + 13 slots of 3 GiB
    assert pool.promised() == [18 * GiB, 9 * GiB, 3 * GiB, 39 * GiB]
    assert pool.try_acquire("one-too-many") is None
    for slot in full:
        pool.release(slot)

    worst = [0] * len(gpus)
    lock = threading.Lock()

    def worker(n: int) -> None:
        for k in range(25):
            slot = pool.acquire(f"w{n}-{k}", timeout=10)
            with lock:
                for i, p in enumerate(pool.promised()):
                    worst[i] = max(worst[i], p)
            time.sleep(0.0005)
            pool.release(slot)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert pool.held() == [] and pool.promised() == [0, 0, 0, 0]
    assert all(w <= g.free for w, g in zip(worst, gpus, strict=True))


def test_cpu_fallback_without_gpus_and_for_cpu_only_specs() -> None:
    nvml = box()
    pool = GpuPool.discover(res(gpus=0), nvml=nvml, env={})
    assert pool.cpu_only and nvml.inits == 0  # gpus == 0: NVML is not even asked
    slot = pool.acquire("cpu-run", timeout=5)
    assert slot.env == {"CUDA_VISIBLE_DEVICES": ""} and slot.where == "CPU"

    pool = GpuPool.discover(res(), nvml=no_driver(), env={})
    slots = [
        pool.acquire(f"r{i}", timeout=5) for i in range(50)
    ]  # never scarce: --workers bounds it
    assert pool.cpu_only and all(s.env == {} and s.gpus == () for s in slots)
    assert pack([], res(), 3) == [(), (), ()]


def test_mig_devices_are_packed_by_their_own_memory() -> None:
    migs = [
        FakeMig(f"MIG-aaaaaaaa-0000-0000-0000-00000000000{i}", "A100 MIG 3g.40gb", 40 * GiB)
        for i in range(2)
    ]
    migs[1].used = 38 * GiB
    nvml = FakeNvml([FakeGpu(UUIDS[0], migs=[migs[0], migs[1]])])
    pool = GpuPool.discover(res(vram_estimate="15GiB"), nvml=nvml, env={})
    a, b = pool.acquire("a", timeout=5), pool.acquire("b", timeout=5)
    assert a.env == b.env == {"CUDA_VISIBLE_DEVICES": migs[0].uuid}
    assert pool.try_acquire("c") is None
