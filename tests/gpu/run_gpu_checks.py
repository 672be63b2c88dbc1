#!/usr/bin/env python
"""Checks that need a real NVIDIA GPU; a maintainer runs them on such a machine.

CI has no GPU, so the guard and the packing are tested there against a fake NVML
(tests/test_guard.py, tests/test_local_gpu.py). This script closes the gap on real hardware:

1. NVML: which devices this process may use, with total and free memory.
2. The guard against the real NVML: a threshold the GPU meets returns at once; one no GPU
   can meet (free == total) times out after a few seconds with GuardTimeout (exit 75).
3. Packing: GpuPool on the real free memory; each slot's CUDA_VISIBLE_DEVICES (UUIDs)
   makes a child process's torch see exactly the planned device.
4. The guard through the trainer CLI: an impossible threshold exits 75.
5. A short quickstart on CUDA (one seed, few epochs, one repair class) through
   ``early-repair run``, results in a temporary folder; run.json must name a CUDA device.

Run from the repository root:  .venv/bin/python tests/gpu/run_gpu_checks.py [--keep DIR]
Exit codes: 0 all passed, 1 a check failed, 77 no GPU here (nothing could be checked).
Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from orchestrator.errors import EXIT_GUARD_TIMEOUT, GuardTimeout  # noqa: E402
from orchestrator.gpu.nvml import NvmlUnavailable, PyNvml  # noqa: E402
from orchestrator.gpu.packing import GpuPool, discover, human  # noqa: E402
from orchestrator.spec import ResourcesSpec  # noqa: E402
from trainer_image.guard import wait_for_gpus  # noqa: E402

EXIT_NO_GPU = 77  # automake's "skipped"

failures: list[str] = []


def step(title: str, fn: Callable[[], Any]) -> Any:
    print(f"\n== {title}", flush=True)
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as e:
        failures.append(title)
        print(f"FAIL {title}: {type(e).__name__}: {e}", flush=True)
        out = None
    else:
        print(f"ok   {title}", flush=True)
    print(f"     ({time.perf_counter() - t0:.2f} s)", flush=True)
    return out


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> int:
    cmd = [sys.executable, "-m", "orchestrator.cli", *args]
    print("     $ early-repair " + " ".join(args), flush=True)
    done = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, check=False)
    print(f"     exit {done.returncode}", flush=True)
    return done.returncode


def quick_spec(results: Path, **resources: Any) -> dict[str, Any]:
    spec = yaml.safe_load((REPO / "settings" / "quickstart.yaml").read_text())
    spec.update(
        name="gpu-check",
        seeds=spec["seeds"][:1],
        results=str(results),
        training={**spec.get("training", {}), "device": "cuda", "max_epochs": 3},
        repair={**spec.get("repair", {}), "classes": [3], "particles": 20, "iterations": 5},
        resources={
            "gpus": 1,
            "min_free_vram": "1GiB",
            "vram_estimate": "1GiB",
            "guard_timeout_s": 120,
            "guard_poll_s": 2,
            **resources,
        },
    )
    spec["training"].pop("num_threads", None)
    return spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Write results here instead of a temp dir.")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]} at {sys.executable}")

    try:
        nvml = PyNvml()
        nvml.init()
        nvml.shutdown()
    except NvmlUnavailable as e:
        print(f"no GPU here: NVML is unavailable ({e}); nothing checked")
        return EXIT_NO_GPU

    def see() -> list[Any]:
        gpus = discover(log=print)
        for g in gpus:
            print(
                f"     {g.label} {g.name}: total {human(g.total)}, free {human(g.free)}"
                f"{' (MIG)' if g.mig else ''}"
            )
        for var in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
            print(f"     {var}={os.environ.get(var)!r}")
        check(bool(gpus), "NVML works but lists no usable device")
        return gpus

    gpus = step("1. NVML discovery", see)
    if not gpus:
        print("no GPU here: NVML lists no usable device; nothing more to check")
        return EXIT_NO_GPU

    def guard_ready() -> None:
        res = ResourcesSpec(gpus=1, min_free_vram="512MiB", guard_timeout_s=30, guard_poll_s=1)
        report = wait_for_gpus(res, log=print)
        for r in report.readings:
            m = r.memory
            print(f"     {r.device.label}: free {human(m.free)}, used {human(m.used)}")
        check(report.outcome == "ready", f"expected ready, got {report.outcome}")

    def guard_timeout() -> None:
        total = min(g.total for g in gpus)
        res = ResourcesSpec(gpus=1, min_free_vram=total, guard_timeout_s=3, guard_poll_s=1)
        t0 = time.perf_counter()
        try:
            wait_for_gpus(res, log=print)
        except GuardTimeout as e:
            print(f"     GuardTimeout after {time.perf_counter() - t0:.1f} s: {e}")
            check(e.exit_code == EXIT_GUARD_TIMEOUT, f"exit code {e.exit_code}")
            return
        raise AssertionError("a threshold of free == total did not time out")

    step("2a. guard on the real NVML: enough free memory", guard_ready)
    step("2b. guard on the real NVML: impossible threshold times out", guard_timeout)

    def packing() -> None:
        pool = GpuPool.discover(ResourcesSpec(gpus=1, vram_estimate="1GiB"))
        slots = [pool.acquire(f"run{i}") for i in range(min(4, 2 * len(pool.gpus)))]
        probe = (
            "import json, torch; p = torch.cuda.get_device_properties(0);"
            " print(json.dumps([torch.cuda.device_count(), str(p.uuid), p.name]))"
        )
        for slot in slots:
            env = {**os.environ, **slot.env}
            out = subprocess.run(
                [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
            ).stdout
            count, uuid, name = json.loads(out.strip().splitlines()[-1])
            print(f"     {slot.run}: {slot.env} -> torch sees {count} device: {name} {uuid}")
            planned = slot.gpus[0].uuid.split("-", 1)[1].lower()
            check(count == 1, f"{slot.run}: torch sees {count} devices, not 1")
            check(uuid.lower().removeprefix("gpu-").removeprefix("mig-") == planned, "wrong GPU")

    step("3. packing: each slot's CUDA_VISIBLE_DEVICES reaches torch", packing)

    with tempfile.TemporaryDirectory(prefix="early-repair-gpu-") as tmp:
        results = args.keep or Path(tmp) / "results"
        spec_dir = Path(tmp)

        def trainer_timeout() -> None:
            total = min(g.total for g in gpus)
            spec = quick_spec(results / "timeout", min_free_vram=total, guard_timeout_s=3)
            path = spec_dir / "timeout.yaml"
            path.write_text(yaml.safe_dump(spec))
            code = cli("trainer", "--sweep", str(path), "--run-index", "0", timeout=120)
            check(code == EXIT_GUARD_TIMEOUT, f"trainer exited {code}, not 75")

        def quickstart() -> None:
            path = spec_dir / "quick.yaml"
            path.write_text(yaml.safe_dump(quick_spec(results / "quick")))
            t0 = time.perf_counter()
            code = cli("run", str(path), "--workers", "1")
            print(f"     run took {time.perf_counter() - t0:.1f} s")
            check(code == 0, f"early-repair run exited {code}")
            runs = sorted((results / "quick" / "gpu-check").glob("*/run.json"))
            check(len(runs) == 1, f"expected one run.json, found {len(runs)}")
            info = json.loads(runs[0].read_text())
            print(f"     device {info.get('device')}; timings {info.get('timings')}")
            check(str(info.get("device", "")).startswith("cuda"), "the run did not use CUDA")
            check((runs[0].parent / "_SUCCESS").exists(), "no _SUCCESS marker")

        step("4. trainer CLI: guard timeout exits 75", trainer_timeout)
        step("5. quickstart on CUDA via `early-repair run`", quickstart)

    print(f"\n{'FAILED: ' + ', '.join(failures) if failures else 'all GPU checks passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
