"""GPU-aware local scheduling on a fake NVML: discovery, the packing planner, GpuPool, and
the local backend placing real trainer processes."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from early_repair_testing.fake_nvml import FakeGpu, FakeMig, FakeNvml, GiB, no_driver
from rich.console import Console

import orchestrator.gpu.packing
from orchestrator.backends.base import RunState
from orchestrator.backends.local.backend import LocalBackend
from orchestrator.errors import BadInput
from orchestrator.gpu.packing import GpuInfo, GpuPool, discover, pack
from orchestrator.spec import ResourcesSpec, parse_spec

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


# --- the local backend ------------------------------------------------------------------------

SPEC: dict[str, Any] = {
    "name": "packed",
    "datasets": ["digits"],
    "models": ["small_cnn"],
    "seeds": [1, 2, 3],
    "training": {"device": "auto", "max_epochs": 1, "num_threads": 1},
    "repair": {"classes": [3], "particles": 4, "iterations": 1},
    "resources": {"gpus": 1, "vram_estimate": "4GiB"},
}


def two_gpus() -> FakeNvml:
    """Room for two 4 GiB runs on GPU 0 (9 GiB free) and none on GPU 1 (3 GiB free)."""
    return FakeNvml(
        [FakeGpu(UUIDS[0], total=16 * GiB, used=7 * GiB), FakeGpu(UUIDS[1], used=77 * GiB)]
    )


def recording_python(tmp_path: Path) -> tuple[str, Path]:
    """An interpreter for the backend that notes each trainer's GPU env and lifetime.

    It runs the real trainer (``python -m orchestrator.cli trainer ...``) and writes
    ``<run index>.json`` with CUDA_VISIBLE_DEVICES and the process's start and end.
    """
    records = tmp_path / "records"
    records.mkdir()
    recorder = tmp_path / "recorder.py"
    recorder.write_text(
        "import json, os, subprocess, sys, time\n"
        "start = time.time()\n"
        "code = subprocess.call([sys.executable, *sys.argv[1:]])\n"
        "index = sys.argv[sys.argv.index('--run-index') + 1]\n"
        "record = {'cvd': os.environ.get('CUDA_VISIBLE_DEVICES'), 'start': start,"
        " 'end': time.time(), 'code': code}\n"
        f"open(os.path.join({str(records)!r}, index + '.json'), 'w').write(json.dumps(record))\n"
        "sys.exit(code)\n"
    )
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{recorder}" "$@"\n')
    python.chmod(0o755)
    return str(python), records


@pytest.mark.slow
def test_local_backend_packs_runs_by_free_memory(tmp_path: Path) -> None:
    python, records = recording_python(tmp_path)
    console = Console(file=io.StringIO(), width=200)
    backend = LocalBackend(
        workers=3, nvml=two_gpus(), python=python, console=console, state_root=tmp_path / "st"
    )
    spec = parse_spec({**SPEC, "results": str(tmp_path / "results")})
    out = backend.submit(backend.plan(spec))
    assert [r.state for r in out.runs] == [RunState.SUCCEEDED] * 3, out.summary()

    seen = [json.loads((records / f"{i}.json").read_text()) for i in range(3)]
    assert [r["cvd"] for r in seen] == [UUIDS[0]] * 3  # GPU 1 has no room for 4 GiB
    # Three workers, but memory for two: the last run starts only after another ended.
    spans = sorted((r["start"], r["end"]) for r in seen)
    assert spans[2][0] >= min(spans[0][1], spans[1][1])
    text = console.file.getvalue()
    assert text.count("waits for GPU memory") == 1
    assert text.count(f"on GPU 0 ({UUIDS[0]})") == 3
    for run in spec.runs():
        assert (tmp_path / "results" / "packed" / run.name / "_SUCCESS").exists()
    assert backend._gpus is not None and backend._gpus.promised() == [0, 0]


def test_local_backend_cpu_fallback(tmp_path: Path) -> None:
    spec = parse_spec({**SPEC, "results": str(tmp_path / "results")})
    run = spec.runs()[0]
    # No NVML: the child's environment is left as it is, and `auto` picks the CPU.
    backend = LocalBackend(
        nvml=no_driver(), console=Console(file=io.StringIO()), state_root=tmp_path
    )
    backend.submit(backend.plan(spec), dry_run=True)
    with backend._env_for(run, workers=1) as env:
        assert env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
    # resources.gpus 0: CUDA is kept away from every GPU, and NVML is never asked.
    nvml = two_gpus()
    cpu = parse_spec({**SPEC, "resources": {"gpus": 0}, "results": str(tmp_path / "r")})
    backend = LocalBackend(nvml=nvml, console=Console(file=io.StringIO()), state_root=tmp_path)
    backend.submit(backend.plan(cpu), dry_run=True)
    with backend._env_for(cpu.runs()[0], workers=1) as env:
        assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert nvml.inits == 0


def test_local_backend_gives_each_run_its_own_slot(tmp_path: Path) -> None:
    spec = parse_spec({**SPEC, "resources": {"gpus": 1, "vram_estimate": "8GiB"}})
    backend = LocalBackend(nvml=box(), console=Console(file=io.StringIO()), state_root=tmp_path)
    backend.submit(backend.plan(spec), dry_run=True)
    runs = spec.runs()
    with (
        backend._env_for(runs[0], workers=3) as a,
        backend._env_for(runs[1], workers=3) as b,
        backend._env_for(runs[2], workers=3) as c,
    ):
        # 40 GiB free on GPU 3 and 20 GiB on GPU 0; GPU 1 (9) fits one, GPU 2 (3) none.
        assert [e["CUDA_VISIBLE_DEVICES"] for e in (a, b, c)] == [UUIDS[3], UUIDS[0], UUIDS[1]]
        assert backend._gpus is not None
        assert backend._gpus.promised() == [8 * GiB, 8 * GiB, 0, 8 * GiB]
    assert backend._gpus.promised() == [0, 0, 0, 0]  # released when the runs end


def test_run_that_no_gpu_can_hold_is_bad_input_and_creates_nothing(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orchestrator.gpu.packing, "PyNvml", two_gpus)  # the real NVML's seam
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    path = tmp_path / "sweep.yaml"
    spec = {**SPEC, "resources": {"gpus": 1, "vram_estimate": "12GiB"}}
    path.write_text(yaml.safe_dump({**spec, "results": str(tmp_path / "results")}))

    r = cli("run", path)
    assert r.code == 2
    assert r.err.startswith("error: resources.vram_estimate: a run needs 12.0GiB")
    assert "9.0GiB" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()
