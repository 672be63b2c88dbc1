"""A small facade over NVML, and which GPUs a process may use.

Both the control plane (``orchestrator.gpu.packing``: where the local backend puts runs) and the
trainer's guard (``trainer_image.guard``: wait for free memory) ask NVML the same few
questions. They go through the ``Nvml`` protocol below so that tests can hand in a fake
with several GPUs, MIG devices and failures, while real runs use ``PyNvml`` (the
``pynvml`` module of the nvidia-ml-py package), imported only when a real query happens.

Visibility follows what CUDA and the NVIDIA container toolkit do, because the guard must
wait on exactly the devices CUDA will use:

* ``NVIDIA_VISIBLE_DEVICES`` is read by the container runtime (the Kubernetes device plugin
  sets it): ``all``; ``none``, ``void`` or empty for no GPU; or a comma list of indices,
  ``GPU-...`` UUIDs or ``MIG-...`` UUIDs. Inside a container the runtime has already
  narrowed NVML's view to those devices (renumbered from 0), so index entries are taken
  as-is when NVML sees exactly as many devices as are listed, and as NVML indices otherwise
  (a bare-metal host where the variable has no effect on NVML).
* ``CUDA_VISIBLE_DEVICES`` narrows that further, as CUDA does: empty or ``-1`` means no
  GPU, indices count within the devices above, ``GPU-``/``MIG-`` UUIDs name devices, and an
  entry that names no device ends the list (CUDA ignores it and everything after it).

MIG devices are found by UUID (recent drivers), else through their parent GPU with
``nvmlDeviceGetMigDeviceHandleByIndex``; CUDA 11.0's ``MIG-GPU-<uuid>/<gi>/<ci>`` form is
matched on instance ids. A MIG-enabled GPU counts as its MIG devices, since CUDA can
only run on those. GPUs this process may not open (NVML's NO_PERMISSION) are left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

Log = Callable[[str], None]

NO_DEVICES = frozenset({"none", "void", ""})
# CUDA 11.0's MIG naming: MIG-GPU-<parent uuid>/<gpu instance>/<compute instance>.
LEGACY_MIG = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+)/(\d+)/(\d+)$")


class NvmlUnavailable(Exception):
    """No usable NVML here: no library, no driver, or it refused to initialise."""


class NvmlNotFound(Exception):
    """NVML has no device with that index, UUID or MIG slot."""


class NvmlFailure(Exception):
    """An NVML query failed after initialisation (GPU lost, driver error, ...)."""


@dataclass(frozen=True)
class Memory:
    total: int
    free: int
    used: int


class Nvml(Protocol):
    """The NVML calls this project makes; ``PyNvml`` is the real one."""

    def init(self) -> None:
        """Raise NvmlUnavailable when NVML cannot be used at all."""

    def shutdown(self) -> None: ...

    def device_count(self) -> int: ...

    def handle_by_index(self, index: int) -> Any:
        """Raise NvmlNotFound for an index NVML does not have."""

    def handle_by_uuid(self, uuid: str) -> Any:
        """Raise NvmlNotFound for a UUID NVML does not know."""

    def uuid(self, handle: Any) -> str: ...

    def name(self, handle: Any) -> str: ...

    def memory(self, handle: Any) -> Memory: ...

    def mig_enabled(self, handle: Any) -> bool:
        """False for GPUs without MIG support as well as with MIG turned off."""

    def mig_count(self, handle: Any) -> int:
        """How many MIG device slots the GPU has (some may be empty)."""

    def mig_handle(self, handle: Any, index: int) -> Any:
        """The MIG device in slot ``index``; NvmlNotFound for an empty slot."""

    def mig_ids(self, handle: Any) -> tuple[int, int]:
        """(GPU instance id, compute instance id) of a MIG device."""

    def mig_parent(self, handle: Any) -> Any:
        """The whole GPU a MIG device lives on."""

    def index(self, handle: Any) -> int:
        """NVML index of a whole GPU."""


class PyNvml:
    """The real NVML through ``pynvml``; nothing is imported until ``init``."""

    def __init__(self) -> None:
        self._nv: Any = None

    def _call(self, fn: str, *args: Any) -> Any:
        nv = self._nv
        try:
            return getattr(nv, fn)(*args)
        except (nv.NVMLError_NotFound, nv.NVMLError_InvalidArgument) as e:
            raise NvmlNotFound(f"{fn}: {e}") from e
        except nv.NVMLError as e:
            raise NvmlFailure(f"{fn}: {e}") from e

    def init(self) -> None:
        try:
            import pynvml
        except ImportError as e:  # the package is a dependency, but slim images may lack it
            raise NvmlUnavailable(f"pynvml is not installed ({e})") from e
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(f"{type(e).__name__}: {e}") from e
        self._nv = pynvml

    def shutdown(self) -> None:
        if self._nv is not None:
            nv, self._nv = self._nv, None
            try:
                nv.nvmlShutdown()
            except nv.NVMLError as e:
                raise NvmlFailure(f"nvmlShutdown: {e}") from e

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def handle_by_index(self, index: int) -> Any:
        return self._call("nvmlDeviceGetHandleByIndex", index)

    def handle_by_uuid(self, uuid: str) -> Any:
        return self._call("nvmlDeviceGetHandleByUUID", uuid)

    def uuid(self, handle: Any) -> str:
        return _text(self._call("nvmlDeviceGetUUID", handle))

    def name(self, handle: Any) -> str:
        return _text(self._call("nvmlDeviceGetName", handle))

    def memory(self, handle: Any) -> Memory:
        m = self._call("nvmlDeviceGetMemoryInfo", handle)
        return Memory(total=int(m.total), free=int(m.free), used=int(m.used))

    def mig_enabled(self, handle: Any) -> bool:
        try:
            current, _pending = self._call("nvmlDeviceGetMigMode", handle)
        except NvmlFailure:  # NotSupported / FunctionNotFound: a GPU without MIG
            return False
        return bool(current == self._nv.NVML_DEVICE_MIG_ENABLE)

    def mig_count(self, handle: Any) -> int:
        return int(self._call("nvmlDeviceGetMaxMigDeviceCount", handle))

    def mig_handle(self, handle: Any, index: int) -> Any:
        return self._call("nvmlDeviceGetMigDeviceHandleByIndex", handle, index)

    def mig_ids(self, handle: Any) -> tuple[int, int]:
        return (
            int(self._call("nvmlDeviceGetGpuInstanceId", handle)),
            int(self._call("nvmlDeviceGetComputeInstanceId", handle)),
        )

    def mig_parent(self, handle: Any) -> Any:
        return self._call("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)

    def index(self, handle: Any) -> int:
        return int(self._call("nvmlDeviceGetIndex", handle))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextmanager
def session(nvml: Nvml) -> Iterator[Nvml]:
    """init ... shutdown; NvmlUnavailable from init propagates for the caller to judge."""
    nvml.init()
    try:
        yield nvml
    finally:
        with suppress(NvmlFailure):  # nothing left to do with NVML either way
            nvml.shutdown()


@dataclass(frozen=True)
class Device:
    """One device CUDA can run on: a whole GPU or a MIG device. Equal by identity, not handle."""

    uuid: str
    name: str
    index: int | None  # NVML index of the GPU, or of a MIG device's parent GPU
    mig: bool = False
    handle: Any = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        where = "GPU" if not self.mig else "MIG device on GPU"
        return f"{where} {'?' if self.index is None else self.index} ({self.uuid}, {self.name})"


def _device(nvml: Nvml, handle: Any, index: int | None, *, mig: bool = False) -> Device:
    return Device(nvml.uuid(handle), nvml.name(handle), index, mig, handle)


def _mig_children(nvml: Nvml, parent: Device) -> list[Device]:
    out: list[Device] = []
    for slot in range(nvml.mig_count(parent.handle)):
        try:
            h = nvml.mig_handle(parent.handle, slot)
        except NvmlNotFound:  # an empty slot
            continue
        out.append(_device(nvml, h, parent.index, mig=True))
    return out


def _expand(nvml: Nvml, gpu: Device) -> list[Device]:
    """A MIG-enabled GPU stands for its MIG devices; any other GPU for itself."""
    if not gpu.mig and nvml.mig_enabled(gpu.handle):
        return _mig_children(nvml, gpu)
    return [gpu]


def all_gpus(nvml: Nvml) -> list[Device]:
    """Every whole GPU NVML sees and this process may talk to, in NVML (PCI bus) order."""
    out: list[Device] = []
    for i in range(nvml.device_count()):
        try:
            out.append(_device(nvml, nvml.handle_by_index(i), i))
        except (NvmlNotFound, NvmlFailure):  # e.g. NO_PERMISSION: CUDA cannot use it either
            continue
    return out


def all_devices(nvml: Nvml) -> list[Device]:
    """Every device CUDA could run on: whole GPUs, MIG-enabled ones as their MIG devices."""
    return [d for gpu in all_gpus(nvml) for d in _expand(nvml, gpu)]


def _by_uuid(nvml: Nvml, uuid: str) -> list[Device]:
    legacy = LEGACY_MIG.match(uuid)
    if legacy:
        ids = (int(legacy.group(2)), int(legacy.group(3)))
        parents = _by_uuid(nvml, legacy.group(1))
        return [m for m in parents if m.mig and nvml.mig_ids(m.handle) == ids]
    try:
        handle = nvml.handle_by_uuid(uuid)
    except NvmlNotFound:
        if not uuid.startswith("MIG-"):
            return []
        # Drivers before MIG-UUID lookup: walk every MIG-enabled GPU's MIG slots.
        return [d for d in all_devices(nvml) if d.mig and d.uuid == uuid]
    if uuid.startswith("MIG-"):
        parent = nvml.mig_parent(handle)
        return [Device(uuid, nvml.name(handle), nvml.index(parent), True, handle)]
    return _expand(nvml, Device(uuid, nvml.name(handle), nvml.index(handle), False, handle))


def _resolve(nvml: Nvml, entry: str, base: list[Device] | None) -> list[Device]:
    """Devices one list entry names; indices count within ``base`` when it is given."""
    if entry.isdigit():
        i = int(entry)
        if base is not None:
            return [base[i]] if i < len(base) else []
        try:
            return _expand(nvml, _device(nvml, nvml.handle_by_index(i), i))
        except NvmlNotFound:
            return []
    if entry.startswith(("GPU-", "MIG-")):
        return _by_uuid(nvml, entry)
    return []


@dataclass(frozen=True)
class Visible:
    devices: list[Device]
    source: str  # which variable decided, for log lines


def visible_devices(nvml: Nvml, env: Mapping[str, str], log: Log | None = None) -> Visible:
    """The devices a process with environment ``env`` may use (see the module docstring)."""
    say = log or (lambda _msg: None)
    nvidia = env.get("NVIDIA_VISIBLE_DEVICES")
    cuda = env.get("CUDA_VISIBLE_DEVICES")

    base: list[Device]
    source = "all GPUs NVML sees"
    if nvidia is None or nvidia.strip().lower() == "all":
        base = all_devices(nvml)
        if nvidia is not None:
            source = "NVIDIA_VISIBLE_DEVICES=all"
    elif nvidia.strip().lower() in NO_DEVICES:
        return Visible([], f"NVIDIA_VISIBLE_DEVICES={nvidia!r}")
    else:
        source = f"NVIDIA_VISIBLE_DEVICES={nvidia}"
        entries = [e.strip() for e in nvidia.split(",") if e.strip()]
        if all(e.isdigit() for e in entries) and nvml.device_count() == len(entries):
            base = all_devices(nvml)  # the container runtime already narrowed and renumbered
        else:
            base = []
            for e in entries:
                found = _resolve(nvml, e, None)
                if not found:
                    say(f"NVIDIA_VISIBLE_DEVICES entry {e!r} names no GPU NVML sees; skipped")
                base += [d for d in found if d not in base]

    if cuda is None:
        return Visible(base, source)
    source = f"CUDA_VISIBLE_DEVICES={cuda!r}"
    chosen: list[Device] = []
    for raw in cuda.split(","):
        entry = raw.strip()
        if entry.startswith("-") or not entry:  # "-1" or "": CUDA sees no (further) GPU
            break
        found = [d for d in _resolve(nvml, entry, base) if d in base]
        if not found:
            say(
                f"CUDA_VISIBLE_DEVICES entry {entry!r} names no visible GPU; CUDA ignores it"
                " and every entry after it"
            )
            break
        chosen += [d for d in found if d not in chosen]
    return Visible(chosen, source)
