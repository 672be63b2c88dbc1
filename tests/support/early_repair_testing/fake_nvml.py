"""A fake NVML and a fake clock for the guard and GPU-packing tests (no GPU on CI).

``FakeNvml`` implements ``orchestrator.gpu.nvml.Nvml`` with the same failure behaviour as the
real facade: unknown indices, UUIDs and empty MIG slots raise NvmlNotFound, a GPU the
process may not open raises NvmlFailure, and init can fail the way a machine without a
driver does. Memory is mutable so a test can free it while the guard waits; ``FakeClock``
advances only when the code under test sleeps and runs scheduled events on the way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.gpu.nvml import Memory, NvmlFailure, NvmlNotFound, NvmlUnavailable

GiB = 2**30


@dataclass(eq=False)
class FakeMig:
    uuid: str
    name: str
    total: int
    used: int = 0
    gi: int = 0
    ci: int = 0
    parent: FakeGpu | None = None


@dataclass(eq=False)
class FakeGpu:
    uuid: str
    total: int = 80 * GiB
    used: int = 0
    name: str = "NVIDIA A100-SXM4-80GB"
    # None: MIG off. A list: MIG on, one entry per slot (None = empty slot).
    migs: list[FakeMig | None] | None = None
    no_permission: bool = False

    def __post_init__(self) -> None:
        for m in self.migs or []:
            if m is not None:
                m.parent = self


class FakeNvml:
    """Several GPUs; ``lookup_mig_by_uuid=False`` acts like drivers before MIG UUID lookup."""

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        init_error: Exception | None = None,
        lookup_mig_by_uuid: bool = True,
        fail_memory: Exception | None = None,
    ) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.lookup_mig_by_uuid = lookup_mig_by_uuid
        self.fail_memory = fail_memory
        self.inits = 0
        self.shutdowns = 0
        self.memory_queries = 0
        self.initialised = False

    def _need_init(self) -> None:
        if not self.initialised:
            raise NvmlFailure("Uninitialized")

    def init(self) -> None:
        self.inits += 1
        if self.init_error is not None:
            raise self.init_error
        self.initialised = True

    def shutdown(self) -> None:
        self._need_init()
        self.shutdowns += 1
        self.initialised = False

    def device_count(self) -> int:
        self._need_init()
        return len(self.gpus)

    def handle_by_index(self, index: int) -> FakeGpu:
        self._need_init()
        if not 0 <= index < len(self.gpus):
            raise NvmlNotFound(f"nvmlDeviceGetHandleByIndex: Invalid Argument ({index})")
        gpu = self.gpus[index]
        if gpu.no_permission:
            raise NvmlFailure("nvmlDeviceGetHandleByIndex: Insufficient Permissions")
        return gpu

    def handle_by_uuid(self, uuid: str) -> FakeGpu | FakeMig:
        self._need_init()
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
            if self.lookup_mig_by_uuid:
                for m in gpu.migs or []:
                    if m is not None and m.uuid == uuid:
                        return m
        raise NvmlNotFound(f"nvmlDeviceGetHandleByUUID: Not Found ({uuid})")

    def uuid(self, handle: FakeGpu | FakeMig) -> str:
        self._need_init()
        return handle.uuid

    def name(self, handle: FakeGpu | FakeMig) -> str:
        self._need_init()
        return handle.name

    def memory(self, handle: FakeGpu | FakeMig) -> Memory:
        self._need_init()
        self.memory_queries += 1
        if self.fail_memory is not None:
            raise self.fail_memory
        return Memory(total=handle.total, free=handle.total - handle.used, used=handle.used)

    def mig_enabled(self, handle: FakeGpu | FakeMig) -> bool:
        self._need_init()
        return isinstance(handle, FakeGpu) and handle.migs is not None

    def mig_count(self, handle: FakeGpu) -> int:
        self._need_init()
        return len(handle.migs or [])

    def mig_handle(self, handle: FakeGpu, index: int) -> FakeMig:
        self._need_init()
        migs = handle.migs or []
        if not 0 <= index < len(migs) or migs[index] is None:
            raise NvmlNotFound(f"nvmlDeviceGetMigDeviceHandleByIndex: Not Found ({index})")
        return migs[index]  # type: ignore[return-value]

    def mig_ids(self, handle: FakeMig) -> tuple[int, int]:
        self._need_init()
        return handle.gi, handle.ci

    def mig_parent(self, handle: FakeMig) -> FakeGpu:
        self._need_init()
        assert handle.parent is not None
        return handle.parent

    def index(self, handle: FakeGpu) -> int:
        self._need_init()
        return self.gpus.index(handle)


def no_driver() -> FakeNvml:
    """What NVML says on a machine whose driver is not loaded."""
    return FakeNvml([], init_error=NvmlUnavailable("NVMLError_DriverNotLoaded: Driver Not Loaded"))


@dataclass
class FakeClock:
    """Monotonic time that moves only when ``sleep`` is called; events fire as it passes."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)
    events: list[tuple[float, Callable[[], None]]] = field(default_factory=list)
    start: float = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.now

    def __call__(self) -> float:
        return self.now

    def at(self, elapsed: float, action: Callable[[], None]) -> None:
        """Run ``action`` once ``elapsed`` seconds have passed since the clock was made."""
        self.events.append((self.start + elapsed, action))
        self.events.sort(key=lambda e: e[0])

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, f"slept {seconds}"
        self.sleeps.append(seconds)
        self.now += seconds
        while self.events and self.events[0][0] <= self.now:
            self.events.pop(0)[1]()
