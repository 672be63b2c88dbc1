"""Wait for GPU memory headroom before any CUDA work.

The paper's code slept until ``nvidia-smi`` showed little memory in use, so several
experiments could share a machine without running out of memory. On a cluster the device
plugin hands a pod whole GPUs, yet nodes are still shared (time-slicing, MPS, neighbours
outside Kubernetes), and locally several runs are packed onto one GPU. A run that starts
without the memory it needs dies of an out-of-memory error minutes later; waiting first
is cheaper. So the trainer calls ``wait_for_gpus(run.resources)`` before touching CUDA:
it finds the devices this process may use (``orchestrator.gpu.nvml``), then polls NVML with
exponential backoff until each has at least ``min_free_vram`` free and, when set, at most
``max_used_vram`` in use. When ``guard_timeout_s`` runs out it raises ``GuardTimeout``,
exit code 75 (EX_TEMPFAIL), which the Job's podFailurePolicy retries rather than treating
as bad input (2) or a crash (1).

Machines without NVML (no driver, CPU-only nodes, kind) are not an error: one log line,
and the run carries on. NVML, the clock and ``sleep`` are parameters so the tests drive
all of this with a fake NVML and a fake clock.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal, NoReturn

from pydantic import ByteSize

from orchestrator.common.retry import Backoff, poll_until
from orchestrator.errors import BadInput, GuardTimeout, RunFailed
from orchestrator.gpu.nvml import (
    Device,
    Log,
    Memory,
    Nvml,
    NvmlFailure,
    NvmlUnavailable,
    PyNvml,
    visible_devices,
)
from orchestrator.spec import ResourcesSpec

# The first re-check comes quickly (memory is often freed by a process that is just
# exiting); later ones double up to resources.guard_poll_s so a long wait costs little.
FIRST_POLL_S = 1.0

Outcome = Literal["not-needed", "no-nvml", "no-gpu", "ready"]


@dataclass(frozen=True)
class Reading:
    device: Device
    memory: Memory


@dataclass(frozen=True)
class GuardReport:
    """What the guard saw and did; ``readings`` are the last poll's, one per device."""

    outcome: Outcome
    message: str
    seconds: float = 0.0
    polls: int = 0
    readings: tuple[Reading, ...] = ()


def human(n: int) -> str:
    return ByteSize(n).human_readable(decimal=False)


def backoff(cap_s: float, first_s: float = FIRST_POLL_S) -> Iterator[float]:
    """Pauses between polls: first_s, doubling, never more than cap_s."""
    pauses = Backoff(first_s, cap_s)
    failures = 0
    while True:
        failures += 1
        yield pauses.delay(failures)


def shortfall(memory: Memory, resources: ResourcesSpec) -> list[str]:
    """Why a device is not ready yet; empty when it is."""
    why = []
    if memory.free < resources.min_free_vram:
        why.append(
            f"free {human(memory.free)} < {human(resources.min_free_vram)}"
            " (resources.min_free_vram)"
        )
    if resources.max_used_vram is not None and memory.used > resources.max_used_vram:
        why.append(
            f"used {human(memory.used)} > {human(resources.max_used_vram)}"
            " (resources.max_used_vram)"
        )
    return why


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _skip(say: Log, outcome: Outcome, message: str) -> GuardReport:
    say(f"guard: {message}")
    return GuardReport(outcome, message)


def wait_for_gpus(
    resources: ResourcesSpec,
    *,
    nvml: Nvml | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    env: Mapping[str, str] | None = None,
    log: Log | None = None,
) -> GuardReport:
    """Block until every GPU this process may use has the headroom ``resources`` asks for.

    Raises GuardTimeout (exit 75) when that does not happen within guard_timeout_s,
    BadInput when min_free_vram exceeds a device's total memory (waiting cannot help),
    and RunFailed when NVML breaks while being queried.
    """
    say = log or _stderr
    if resources.gpus == 0:
        return _skip(say, "not-needed", "resources.gpus is 0; not waiting for GPU memory")
    if resources.min_free_vram == 0 and resources.max_used_vram is None:
        return _skip(
            say, "not-needed", "no resources.min_free_vram or max_used_vram set; not waiting"
        )

    nvml = nvml if nvml is not None else PyNvml()
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    try:
        nvml.init()
    except NvmlUnavailable as e:
        return _skip(say, "no-nvml", f"no NVML here ({e}); not waiting for GPU memory")
    try:
        return _wait(resources, nvml, clock, sleep, env if env is not None else os.environ, say)
    except NvmlFailure as e:
        raise RunFailed(f"GPU guard: NVML query failed: {e}") from e
    finally:
        with suppress(NvmlFailure):
            nvml.shutdown()


def _wait(
    resources: ResourcesSpec,
    nvml: Nvml,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    env: Mapping[str, str],
    say: Log,
) -> GuardReport:
    visible = visible_devices(nvml, env, lambda m: say(f"guard: {m}"))
    if not visible.devices:
        return _skip(say, "no-gpu", f"no GPU visible ({visible.source}); not waiting")

    polls = 0

    def poll() -> tuple[tuple[Reading, ...], list[str]]:
        nonlocal polls
        readings = tuple(Reading(d, nvml.memory(d.handle)) for d in visible.devices)
        polls += 1
        if polls == 1:
            for r in readings:
                if resources.min_free_vram > r.memory.total:
                    raise BadInput(
                        f"resources.min_free_vram: {human(resources.min_free_vram)} is more"
                        f" than {r.device.label} has in all ({human(r.memory.total)});"
                        " lower it"
                    )
        waiting = [
            f"{r.device.label}: {', '.join(why)}"
            for r in readings
            if (why := shortfall(r.memory, resources))
        ]
        return readings, waiting

    def on_wait(last: tuple[tuple[Reading, ...], list[str]], pause: float, elapsed: float) -> None:
        say(
            f"guard: waiting for {'; '.join(last[1])}; next check in {pause:.1f} s"
            f" ({elapsed:.0f} of {resources.guard_timeout_s:g} s)"
        )

    def on_timeout(last: tuple[tuple[Reading, ...], list[str]], elapsed: float) -> NoReturn:
        raise GuardTimeout(
            f"GPU guard gave up after {elapsed:.0f} s (resources.guard_timeout_s="
            f"{resources.guard_timeout_s:g}): {'; '.join(last[1])}; free GPU memory,"
            " lower the thresholds or raise resources.guard_timeout_s"
        )

    start = clock()
    readings, _ = poll_until(
        poll,
        lambda last: not last[1],
        backoff=Backoff(FIRST_POLL_S, resources.guard_poll_s),
        deadline_s=resources.guard_timeout_s,
        clock=clock,
        sleep=sleep,
        on_wait=on_wait,
        on_timeout=on_timeout,
    )
    elapsed = clock() - start
    free = ", ".join(f"{r.device.label} {human(r.memory.free)} free" for r in readings)
    message = f"ready after {elapsed:.1f} s and {polls} check(s): {free}"
    say(f"guard: {message}")
    return GuardReport("ready", message, elapsed, polls, readings)
