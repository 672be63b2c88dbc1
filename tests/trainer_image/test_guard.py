"""The GPU memory guard against a fake NVML and a fake clock, and the real pynvml facade."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from early_repair_testing.fake_nvml import FakeClock, FakeGpu, FakeMig, FakeNvml, GiB, no_driver

from orchestrator.errors import (
    EXIT_BAD_INPUT,
    EXIT_GUARD_TIMEOUT,
    BadInput,
    GuardTimeout,
    RunFailed,
)
from orchestrator.gpu.nvml import (
    Memory,
    NvmlFailure,
    NvmlNotFound,
    NvmlUnavailable,
    PyNvml,
    visible_devices,
)
from orchestrator.spec import ResourcesSpec, load_spec
from trainer_image.guard import backoff, wait_for_gpus

U0, U1, U2 = (f"GPU-{i}{i}{i}{i}aaaa-0000-1111-2222-33334444555{i}" for i in range(3))


def resources(**kw: object) -> ResourcesSpec:
    base: dict[str, object] = {
        "gpus": 1,
        "min_free_vram": "20GiB",
        "guard_timeout_s": 60,
        "guard_poll_s": 10,
    }
    return ResourcesSpec.model_validate({**base, **kw})


def three_gpus() -> FakeNvml:
    """GPU 0 free, GPU 1 nearly full (a neighbour's job), GPU 2 free."""
    return FakeNvml(
        [FakeGpu(U0, used=1 * GiB), FakeGpu(U1, used=70 * GiB), FakeGpu(U2, used=2 * GiB)]
    )


def guard(res: ResourcesSpec, nvml: FakeNvml, env: dict[str, str], clock: FakeClock | None = None):
    clock = clock or FakeClock()
    lines: list[str] = []
    report = wait_for_gpus(
        res, nvml=nvml, clock=clock, sleep=clock.sleep, env=env, log=lines.append
    )
    return report, clock, lines


# --- nothing to wait for ---------------------------------------------------------------


def test_cpu_runs_and_runs_without_thresholds_never_touch_nvml() -> None:
    nvml = three_gpus()
    report, clock, lines = guard(resources(gpus=0), nvml, {})
    assert report.outcome == "not-needed" and nvml.inits == 0 and clock.sleeps == []
    report, _, lines = guard(resources(min_free_vram=0), nvml, {})
    assert report.outcome == "not-needed" and nvml.inits == 0
    assert lines == ["guard: no resources.min_free_vram or max_used_vram set; not waiting"]


def test_no_driver_is_one_log_line_and_carries_on() -> None:
    report, clock, lines = guard(resources(), no_driver(), {})
    assert report.outcome == "no-nvml"
    assert clock.sleeps == []
    assert len(lines) == 1 and "Driver Not Loaded" in lines[0] and "not waiting" in lines[0]


@pytest.mark.parametrize("env", [{"NVIDIA_VISIBLE_DEVICES": v} for v in ("none", "void", "")])
def test_container_without_gpus_does_not_wait(env: dict[str, str]) -> None:
    nvml = three_gpus()
    report, clock, lines = guard(resources(), nvml, env)
    assert report.outcome == "no-gpu" and clock.sleeps == [] and nvml.memory_queries == 0
    assert nvml.shutdowns == nvml.inits == 1
    assert "NVIDIA_VISIBLE_DEVICES" in lines[-1]


@pytest.mark.parametrize("value", ["", "-1"])
def test_empty_cuda_visible_devices_means_no_gpu(value: str) -> None:
    report, _, _ = guard(resources(), three_gpus(), {"CUDA_VISIBLE_DEVICES": value})
    assert report.outcome == "no-gpu"


# --- waiting --------------------------------------------------------------------------


def test_waits_while_memory_is_busy_and_proceeds_when_freed() -> None:
    busy = FakeGpu(U0, used=70 * GiB)
    nvml = FakeNvml([busy])
    clock = FakeClock()
    clock.at(5.0, lambda: setattr(busy, "used", 3 * GiB))  # the neighbour exits after 5 s
    report, clock, lines = guard(resources(), nvml, {}, clock)

    assert report.outcome == "ready"
    assert clock.sleeps == [1, 2, 4]  # polls at 0, 1, 3 s busy; at 7 s free
    assert report.polls == 4 and report.seconds == 7
    assert report.readings[0].memory == Memory(80 * GiB, 77 * GiB, 3 * GiB)
    waits = [line for line in lines if "waiting for" in line]
    assert len(waits) == 3
    assert f"GPU 0 ({U0}, NVIDIA A100-SXM4-80GB): free 10.0GiB < 20.0GiB" in waits[0]
    assert "(resources.min_free_vram)" in waits[0] and "next check in 1.0 s" in waits[0]
    assert lines[-1].startswith("guard: ready after 7.0 s and 4 check(s)")
    assert nvml.inits == nvml.shutdowns == 1


def test_max_used_vram_is_waited_for_too() -> None:
    gpu = FakeGpu(U0, used=5 * GiB)  # plenty free, but more in use than allowed
    clock = FakeClock()
    clock.at(2.5, lambda: setattr(gpu, "used", 1 * GiB))
    report, clock, lines = guard(
        resources(min_free_vram=0, max_used_vram="2GiB"), FakeNvml([gpu]), {}, clock
    )
    assert report.outcome == "ready" and clock.sleeps == [1, 2]
    assert "used 5.0GiB > 2.0GiB (resources.max_used_vram)" in lines[0]
    # Thresholds are inclusive: exactly the allowed use, exactly the required free memory.
    edge = resources(min_free_vram="78GiB", max_used_vram="2GiB")
    report, _, _ = guard(edge, FakeNvml([FakeGpu(U0, used=2 * GiB)]), {})
    assert report.outcome == "ready" and report.polls == 1


def test_every_visible_gpu_must_have_room() -> None:
    nvml = three_gpus()
    clock = FakeClock()
    clock.at(30, lambda: setattr(nvml.gpus[1], "used", 0))
    report, clock, lines = guard(resources(), nvml, {}, clock)
    assert report.outcome == "ready" and report.seconds == 35  # 1+2+4+8+10+10
    assert all(U1 in line for line in lines if "waiting" in line)
    assert not any(U0 in line or U2 in line for line in lines if "waiting" in line)


def test_backoff_doubles_up_to_the_poll_interval() -> None:
    pauses = backoff(10)
    assert [next(pauses) for _ in range(7)] == [1, 2, 4, 8, 10, 10, 10]
    pauses = backoff(0.25)
    assert [next(pauses) for _ in range(3)] == [0.25, 0.25, 0.25]


def test_times_out_with_its_own_exit_code_after_the_backoff_schedule() -> None:
    nvml = FakeNvml([FakeGpu(U0, used=75 * GiB)])
    with pytest.raises(GuardTimeout) as caught:
        guard(resources(), nvml, {}, clock := FakeClock())
    # 1, 2, 4, 8, then capped at 10, and the last pause cut to end at the 60 s deadline.
    assert clock.sleeps == [1, 2, 4, 8, 10, 10, 10, 10, 5]
    assert clock.now - clock.start == 60
    assert caught.value.exit_code == EXIT_GUARD_TIMEOUT == 75
    message = str(caught.value)
    assert "\n" not in message
    assert "resources.guard_timeout_s=60" in message and "free 5.0GiB < 20.0GiB" in message
    assert nvml.shutdowns == nvml.inits == 1  # NVML released on the way out


# --- which GPUs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "outcome"),
    [
        ({"CUDA_VISIBLE_DEVICES": U2}, "ready"),
        ({"CUDA_VISIBLE_DEVICES": f"{U0},{U2}"}, "ready"),
        ({"CUDA_VISIBLE_DEVICES": U1}, "timeout"),
        ({"CUDA_VISIBLE_DEVICES": "0,2"}, "ready"),
        ({"CUDA_VISIBLE_DEVICES": "2,1"}, "timeout"),
        ({"NVIDIA_VISIBLE_DEVICES": U0}, "ready"),
        ({"NVIDIA_VISIBLE_DEVICES": f"{U2},{U1}"}, "timeout"),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, "timeout"),
        ({}, "timeout"),
        # CUDA narrows the container's set: index 1 of (GPU 1, GPU 2) is GPU 2.
        ({"NVIDIA_VISIBLE_DEVICES": f"{U1},{U2}", "CUDA_VISIBLE_DEVICES": "1"}, "ready"),
        ({"NVIDIA_VISIBLE_DEVICES": f"{U1},{U2}", "CUDA_VISIBLE_DEVICES": "0"}, "timeout"),
    ],
)
def test_honours_uuid_and_index_visibility(env: dict[str, str], outcome: str) -> None:
    res = resources(guard_timeout_s=3)
    if outcome == "ready":
        report, clock, _ = guard(res, three_gpus(), env)
        assert report.outcome == "ready" and clock.sleeps == []
    else:
        with pytest.raises(GuardTimeout, match=U1):
            guard(res, three_gpus(), env)


def test_visibility_resolution_follows_cuda_rules() -> None:
    nvml = three_gpus()
    nvml.init()
    notes: list[str] = []

    def uuids(env: dict[str, str]) -> list[str]:
        return [d.uuid for d in visible_devices(nvml, env, notes.append).devices]

    assert uuids({}) == [U0, U1, U2]
    # CUDA stops at the first entry that names no device.
    assert uuids({"CUDA_VISIBLE_DEVICES": "0,7,1"}) == [U0]
    assert "'7' names no visible GPU" in notes[-1]
    assert uuids({"CUDA_VISIBLE_DEVICES": "2, 0"}) == [U2, U0]
    # A UUID outside the container's set is not visible to CUDA either.
    assert uuids({"NVIDIA_VISIBLE_DEVICES": U0, "CUDA_VISIBLE_DEVICES": U1}) == []
    # Bare metal: NVIDIA_VISIBLE_DEVICES indices are NVML indices.
    assert uuids({"NVIDIA_VISIBLE_DEVICES": "2"}) == [U2]
    assert uuids({"NVIDIA_VISIBLE_DEVICES": "GPU-nope,1"}) == [U1]
    assert "'GPU-nope' names no GPU" in notes[-1]


def test_container_indices_are_already_renumbered() -> None:
    # The device plugin set NVIDIA_VISIBLE_DEVICES=3 on the host; inside, NVML sees one GPU.
    res = resources(guard_timeout_s=3)
    report, _, _ = guard(res, FakeNvml([FakeGpu(U2)]), {"NVIDIA_VISIBLE_DEVICES": "3"})
    assert report.outcome == "ready" and report.readings[0].device.uuid == U2


def test_gpus_this_process_may_not_open_are_left_out() -> None:
    nvml = FakeNvml([FakeGpu(U0, used=79 * GiB, no_permission=True), FakeGpu(U1)])
    report, _, _ = guard(resources(), nvml, {})
    assert report.outcome == "ready" and [r.device.uuid for r in report.readings] == [U1]


# --- MIG ------------------------------------------------------------------------------------

M0, M1 = "MIG-0c5f6d3e-aaaa-5e4a-9c1b-000000000001", "MIG-0c5f6d3e-aaaa-5e4a-9c1b-000000000002"


def mig_box(*, lookup: bool = True) -> tuple[FakeNvml, FakeMig, FakeMig]:
    busy = FakeMig(M0, "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40 * GiB, used=35 * GiB, gi=1, ci=0)
    idle = FakeMig(M1, "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40 * GiB, used=0, gi=2, ci=0)
    nvml = FakeNvml(
        [FakeGpu(U0, migs=[busy, None, idle]), FakeGpu(U1, used=79 * GiB)],
        lookup_mig_by_uuid=lookup,
    )
    return nvml, busy, idle


@pytest.mark.parametrize("lookup", [True, False], ids=["by-uuid", "via-parent"])
def test_mig_devices_by_uuid(lookup: bool) -> None:
    nvml, busy, _ = mig_box(lookup=lookup)
    report, clock, _ = guard(resources(), nvml, {"NVIDIA_VISIBLE_DEVICES": M1})
    assert report.outcome == "ready" and clock.sleeps == []
    assert report.readings[0].device.label.startswith(f"MIG device on GPU 0 ({M1}")

    clock = FakeClock()
    clock.at(2, lambda: setattr(busy, "used", 1 * GiB))
    report, clock, lines = guard(resources(), nvml, {"CUDA_VISIBLE_DEVICES": M0}, clock)
    assert report.outcome == "ready" and clock.sleeps == [1, 2]
    assert f"MIG device on GPU 0 ({M0}" in lines[0] and "free 5.0GiB < 20.0GiB" in lines[0]


def test_legacy_mig_names_match_instance_ids() -> None:
    nvml, _, _ = mig_box()
    nvml.init()
    legacy = visible_devices(nvml, {"CUDA_VISIBLE_DEVICES": f"MIG-{U0}/2/0"}).devices
    assert [d.uuid for d in legacy] == [M1]


def test_a_mig_enabled_gpu_stands_for_its_mig_devices() -> None:
    nvml, _, _ = mig_box()
    nvml.init()
    assert [d.uuid for d in visible_devices(nvml, {}).devices] == [M0, M1, U1]
    assert [d.uuid for d in visible_devices(nvml, {"CUDA_VISIBLE_DEVICES": U0}).devices] == [
        M0,
        M1,
    ]


# --- failures -------------------------------------------------------------------------------


def test_more_than_the_gpu_has_is_bad_input_at_once() -> None:
    with pytest.raises(BadInput, match=r"resources\.min_free_vram: 100\.0GiB is more") as caught:
        guard(resources(min_free_vram="100GiB"), three_gpus(), {})
    assert caught.value.exit_code == EXIT_BAD_INPUT


def test_nvml_breaking_mid_wait_is_a_run_failure() -> None:
    nvml = FakeNvml([FakeGpu(U0)], fail_memory=NvmlFailure("nvmlDeviceGetMemoryInfo: GPU is lost"))
    with pytest.raises(RunFailed, match="GPU is lost"):
        guard(resources(), nvml, {})
    assert nvml.shutdowns == 1


# --- the real facade over pynvml --------------------------------------------------------------


def test_pynvml_missing_or_failing_to_initialise_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pynvml

    for code in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED):

        def fail(code: int = code) -> None:
            raise pynvml.NVMLError(code)

        monkeypatch.setattr(pynvml, "nvmlInit", fail)
        lines: list[str] = []
        report = wait_for_gpus(resources(), env={}, log=lines.append)
        assert report.outcome == "no-nvml" and len(lines) == 1
        assert str(pynvml.NVMLError(code)) in lines[0]

    monkeypatch.setitem(sys.modules, "pynvml", None)  # the package is not installed
    with pytest.raises(NvmlUnavailable, match="pynvml is not installed"):
        PyNvml().init()


def test_pynvml_facade_calls_real_pynvml_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real pynvml function names and error classes; only the C library underneath is faked."""
    import pynvml

    mem = pynvml.c_nvmlMemory_t()
    mem.total, mem.free, mem.used = 80 * GiB, 60 * GiB, 20 * GiB
    calls: list[str] = []

    def fake(name: str, result: object = None, error: int | None = None):
        def fn(*args: object) -> object:
            calls.append(name)
            if error is not None:
                raise pynvml.NVMLError(error)
            return result

        monkeypatch.setattr(pynvml, name, fn)  # raising=True: the name must exist in pynvml

    fake("nvmlInit")
    fake("nvmlShutdown")
    fake("nvmlDeviceGetCount", 1)
    fake("nvmlDeviceGetHandleByIndex", "h0")
    fake("nvmlDeviceGetHandleByUUID", error=pynvml.NVML_ERROR_NOT_FOUND)
    fake("nvmlDeviceGetUUID", U0.encode())
    fake("nvmlDeviceGetName", b"NVIDIA H200")
    fake("nvmlDeviceGetMemoryInfo", mem)
    fake("nvmlDeviceGetMigMode", error=pynvml.NVML_ERROR_NOT_SUPPORTED)
    for name in (
        "nvmlDeviceGetMaxMigDeviceCount",
        "nvmlDeviceGetMigDeviceHandleByIndex",
        "nvmlDeviceGetGpuInstanceId",
        "nvmlDeviceGetComputeInstanceId",
        "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
        "nvmlDeviceGetIndex",
    ):
        fake(name, 0)

    report = wait_for_gpus(resources(), env={}, log=lambda _m: None)
    assert report.outcome == "ready"
    assert report.readings[0].device.label == f"GPU 0 ({U0}, NVIDIA H200)"
    assert report.readings[0].memory == Memory(80 * GiB, 60 * GiB, 20 * GiB)
    assert calls[0] == "nvmlInit" and calls[-1] == "nvmlShutdown"

    nv = PyNvml()
    nv.init()
    with pytest.raises(NvmlNotFound):
        nv.handle_by_uuid(U1)
    assert nv.mig_enabled("h0") is False
    report = wait_for_gpus(resources(), env={"CUDA_VISIBLE_DEVICES": U1}, log=lambda _m: None)
    assert report.outcome == "no-gpu"


# --- spec fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10GiB", 10 * GiB), ("10 GiB", 10 * GiB), ("10GB", 10**10), ("1.5GiB", 3 * GiB // 2)],
)
def test_memory_fields_take_units(value: str, expected: int) -> None:
    for field in ("min_free_vram", "max_used_vram", "vram_estimate"):
        assert getattr(resources(**{field: value}), field) == expected


@pytest.mark.parametrize("field", ["min_free_vram", "max_used_vram", "vram_estimate"])
@pytest.mark.parametrize("value", ["10 gigs", "ten", "-1GiB", "10GiBs"])
def test_bad_memory_units_are_bad_input_naming_the_field(
    tmp_path: Path, field: str, value: str
) -> None:
    spec = {
        "name": "units",
        "datasets": ["digits"],
        "models": ["small_cnn"],
        "seeds": [1],
        "resources": {"gpus": 1, field: value},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(BadInput) as caught:
        load_spec(path)
    assert caught.value.exit_code == EXIT_BAD_INPUT
    message = str(caught.value)
    assert message.startswith(f"{path}: resources.{field}: ") and "\n" not in message


def sweep_file(tmp_path: Path, **resources_: object) -> Path:
    spec = {
        "name": "guarded",
        "datasets": ["digits"],
        "models": ["small_cnn"],
        "seeds": [1],
        "training": {"device": "auto", "max_epochs": 1, "num_threads": 1},
        "repair": {"classes": [3], "particles": 4, "iterations": 1},
        "resources": {"gpus": 1, **resources_},
        "results": str(tmp_path / "results"),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("field", ["min_free_vram", "max_used_vram", "vram_estimate"])
def test_cli_rejects_bad_units_with_exit_2(cli, tmp_path: Path, field: str) -> None:
    r = cli("plan", sweep_file(tmp_path, **{field: "12 gigs"}))
    assert r.code == EXIT_BAD_INPUT
    assert f"resources.{field}: could not interpret byte unit: gigs" in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1


def test_trainer_whose_guard_times_out_exits_75(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole trainer path: the run's own guard call, GuardTimeout, the CLI's exit code."""
    import trainer_image.guard

    busy = FakeNvml([FakeGpu(U0, used=79 * GiB)])
    monkeypatch.setattr(trainer_image.guard, "PyNvml", lambda: busy)  # the real one's seam
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    path = sweep_file(tmp_path, min_free_vram="20GiB", guard_timeout_s=0.3, guard_poll_s=0.1)

    r = cli("trainer", "--sweep", path, "--run-index", "0")
    assert r.code == EXIT_GUARD_TIMEOUT == 75, r.err
    assert "GPU guard gave up" in r.err and "resources.guard_timeout_s=0.3" in r.err
    assert busy.memory_queries >= 3 and busy.shutdowns == busy.inits == 1
    # The run stopped before training: no history, no checkpoint, no _SUCCESS.
    run_dir = tmp_path / "results" / "guarded" / "digits-small-cnn-s1"
    assert not (run_dir / "train").exists() and not (run_dir / "_SUCCESS").exists()
