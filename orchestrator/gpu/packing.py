"""Where local runs go: GPU discovery through NVML, a pure packing planner, and a GpuPool.

Kubernetes hands out whole GPUs; on one machine several small runs should share a big GPU,
and the memory that matters is what is actually free (other people's processes included),
not a count of GPUs. So the local backend asks NVML what each GPU has free, and the
planner here promises memory to runs:

* A run needs ``resources.gpus`` distinct devices, each with ``resources.vram_estimate``
  not yet promised to another of our runs. A device's capacity is the memory it had free
  when the pool was made (memory other processes hold stays theirs), so promises never
  exceed free memory. A run that fits nowhere now waits until a slot is released.
* Among devices that fit, the one with the fewest of our runs wins, then the one with the
  most unpromised memory, then the lowest index: runs spread over GPUs first (compute is
  shared too) and double up only when every GPU already has one.
* Each run gets its own ``CUDA_VISIBLE_DEVICES`` made of device UUIDs (``GPU-...`` or
  ``MIG-...``), never indices: CUDA numbers GPUs fastest-first unless
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` while NVML numbers them by PCI bus, so an index could
  name another GPU than the one planned; MIG devices can only be named by UUID anyway.
* CPU only when ``resources.gpus`` is 0 (the child gets ``CUDA_VISIBLE_DEVICES=""``) or
  when no GPU is found (the child's environment is left alone and the trainer's
  ``training.device: auto`` picks the CPU).
* A run needing more than any device has free is bad input naming
  ``resources.vram_estimate`` (or ``resources.gpus`` when there are too few devices),
  raised before anything starts rather than waiting forever.

This module is control plane: no torch. The trainer's guard still checks real free memory
in each child before CUDA work, which catches estimates that were too low. When several
runs share a GPU, keep ``resources.min_free_vram`` at or below ``vram_estimate``: a run's
guard waits for that much free memory, which runs already on the GPU may be using.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import ByteSize

from orchestrator.errors import BadInput
from orchestrator.gpu.nvml import Log, Nvml, NvmlUnavailable, PyNvml, session, visible_devices
from orchestrator.spec import ResourcesSpec


def human(n: int) -> str:
    return ByteSize(n).human_readable(decimal=False)


@dataclass(frozen=True)
class GpuInfo:
    """One device runs can be placed on: a whole GPU or a MIG device."""

    index: int | None  # NVML index (of the parent GPU for a MIG device)
    uuid: str
    name: str
    total: int
    free: int
    mig: bool = False

    @property
    def label(self) -> str:
        where = "GPU" if not self.mig else "MIG device on GPU"
        return f"{where} {'?' if self.index is None else self.index} ({self.uuid})"


def discover(
    *, nvml: Nvml | None = None, env: Mapping[str, str] | None = None, log: Log | None = None
) -> list[GpuInfo]:
    """The devices this process may use (CUDA_VISIBLE_DEVICES etc. respected), with memory.

    No NVML (no driver, no library) means no GPU: an empty list, and one log line.
    """
    say = log or (lambda _m: None)
    nvml = nvml if nvml is not None else PyNvml()
    try:
        with session(nvml):
            devices = visible_devices(nvml, env if env is not None else os.environ, say).devices
            out = []
            for d in devices:
                m = nvml.memory(d.handle)
                out.append(GpuInfo(d.index, d.uuid, d.name, m.total, m.free, d.mig))
            return out
    except NvmlUnavailable as e:
        say(f"no NVML here ({e}); runs use the CPU")
        return []


@dataclass
class Load:
    """What our own runs hold on one device."""

    promised: int = 0
    runs: int = 0


def place(
    gpus: Sequence[GpuInfo], loads: Sequence[Load], need: int, count: int
) -> tuple[int, ...] | None:
    """Positions of ``count`` devices that each have ``need`` bytes unpromised, or None."""
    fits = [i for i, g in enumerate(gpus) if g.free - loads[i].promised >= need]
    if len(fits) < count:
        return None
    fits.sort(key=lambda i: (loads[i].runs, -(gpus[i].free - loads[i].promised), i))
    return tuple(sorted(fits[:count]))


def check_fits(gpus: Sequence[GpuInfo], resources: ResourcesSpec) -> None:
    """BadInput when a run could never be placed, however long it waited."""
    need, count = int(resources.vram_estimate), resources.gpus
    if count > len(gpus):
        raise BadInput(
            f"resources.gpus: a run needs {count} GPUs but this machine has {len(gpus)};"
            " lower resources.gpus"
        )
    if place(gpus, [Load() for _ in gpus], need, count) is None:
        best = max(gpus, key=lambda g: g.free)
        raise BadInput(
            f"resources.vram_estimate: a run needs {human(need)} on each of {count} GPU(s)"
            f" but the most any GPU here has free is {human(best.free)} ({best.label});"
            " lower resources.vram_estimate or free GPU memory"
        )


def pack(
    gpus: Sequence[GpuInfo], resources: ResourcesSpec, runs: int
) -> list[tuple[int, ...] | None]:
    """The first wave: which devices each of ``runs`` runs starts on, None = waits.

    Pure; the same rule GpuPool applies when runs are acquired in order with no release.
    """
    if resources.gpus == 0 or not gpus:
        return [() for _ in range(runs)]
    check_fits(gpus, resources)
    loads = [Load() for _ in gpus]
    out: list[tuple[int, ...] | None] = []
    for _ in range(runs):
        where = place(gpus, loads, int(resources.vram_estimate), resources.gpus)
        for i in where or ():
            loads[i].promised += int(resources.vram_estimate)
            loads[i].runs += 1
        out.append(where)
    return out


@dataclass(frozen=True)
class Slot:
    """Devices promised to one run until it is released."""

    id: int
    run: str
    gpus: tuple[GpuInfo, ...] = ()
    vram: int = 0  # promised on each of gpus
    positions: tuple[int, ...] = field(default=(), repr=False)
    hide_gpus: bool = False  # resources.gpus == 0: keep CUDA away from every GPU

    @property
    def env(self) -> dict[str, str]:
        """What to add to the child's environment."""
        if self.gpus:
            return {"CUDA_VISIBLE_DEVICES": ",".join(g.uuid for g in self.gpus)}
        return {"CUDA_VISIBLE_DEVICES": ""} if self.hide_gpus else {}

    @property
    def where(self) -> str:
        return ", ".join(g.label for g in self.gpus) if self.gpus else "CPU"


class GpuPool:
    """Thread-safe placement of runs on devices for the local backend.

    ``acquire(run)`` blocks until the run fits and returns its Slot; ``release(slot)``
    gives the memory back and wakes waiting runs. CPU slots are never scarce: the number
    of worker processes (``--workers``) bounds them.
    """

    def __init__(self, gpus: Sequence[GpuInfo], resources: ResourcesSpec) -> None:
        self.gpus = tuple(gpus)
        self.count = resources.gpus
        self.need = int(resources.vram_estimate)
        self.cpu_only = self.count == 0 or not self.gpus
        if not self.cpu_only:
            check_fits(self.gpus, resources)
        self._loads = [Load() for _ in self.gpus]
        self._held: dict[int, Slot] = {}
        self._ids = itertools.count(1)
        self._cond = threading.Condition()

    @classmethod
    def discover(
        cls,
        resources: ResourcesSpec,
        *,
        nvml: Nvml | None = None,
        env: Mapping[str, str] | None = None,
        log: Log | None = None,
    ) -> GpuPool:
        """A pool over this machine's devices; no NVML query at all when gpus == 0."""
        gpus = discover(nvml=nvml, env=env, log=log) if resources.gpus > 0 else []
        return cls(gpus, resources)

    def _take(self, run: str) -> Slot | None:
        if self.cpu_only:
            slot = Slot(next(self._ids), run, hide_gpus=self.count == 0)
        else:
            where = place(self.gpus, self._loads, self.need, self.count)
            if where is None:
                return None
            for i in where:
                self._loads[i].promised += self.need
                self._loads[i].runs += 1
            slot = Slot(next(self._ids), run, tuple(self.gpus[i] for i in where), self.need, where)
        self._held[slot.id] = slot
        return slot

    def try_acquire(self, run: str) -> Slot | None:
        with self._cond:
            return self._take(run)

    def acquire(self, run: str, timeout: float | None = None) -> Slot:
        """Wait for room; TimeoutError when ``timeout`` seconds pass without any."""
        with self._cond:
            slot: Slot | None = None

            def ready() -> bool:
                nonlocal slot
                slot = self._take(run)
                return slot is not None

            if not self._cond.wait_for(ready, timeout):
                raise TimeoutError(f"no GPU room for run {run!r} within {timeout} s")
            assert slot is not None
            return slot

    def release(self, slot: Slot) -> None:
        with self._cond:
            if self._held.pop(slot.id, None) is None:
                raise ValueError(f"slot {slot.id} of run {slot.run!r} is not held")
            for i in slot.positions:
                self._loads[i].promised -= slot.vram
                self._loads[i].runs -= 1
            self._cond.notify_all()

    def held(self) -> list[Slot]:
        with self._cond:
            return list(self._held.values())

    def promised(self) -> list[int]:
        """Bytes promised to our runs on each device, in ``gpus`` order."""
        with self._cond:
            return [load.promised for load in self._loads]
