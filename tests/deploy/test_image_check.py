"""scripts/image-check's pure parts: the Job's pod template (from `plan --out -`) turned
into container-engine arguments, and the comparison of two result trees.

The build and the runs need a container engine and minutes; the README's verified list
gives the command and what it printed. These tests pin down that the restrictions come
from the plan itself (change the spec, the flags follow) and that bad pod specs are
refused with one line rather than run with fewer restrictions.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from early_repair_testing.paths import QUICKSTART, REPO

_spec = importlib.util.spec_from_file_location(
    "image_check_job", REPO / "scripts" / "image_check_job.py"
)
assert _spec is not None and _spec.loader is not None
ic = importlib.util.module_from_spec(_spec)
sys.modules["image_check_job"] = ic
_spec.loader.exec_module(ic)

SECRETS = {"early-repair-s3": ic.SECRET_VALUES}


def planned(tmp_path: Path, **changes: Any) -> list[dict[str, Any]]:
    """The quickstart's objects as `early-repair plan --out -` prints them, results on a
    loopback endpoint as image-check sets them."""
    spec = ic.derived_spec(QUICKSTART, "localhost/t:1", "s3://bucket/image", "http://127.0.0.1:9")
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return ic.plan(path, tmp_path)


def pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    tmp = tmp_path_factory.mktemp("plan")
    return planned(tmp), tmp


def test_the_jobs_restrictions_become_engine_flags(quickstart) -> None:
    """Read-only root, the Job's UID/GID, no capabilities, no privilege escalation, tmpfs
    for every emptyDir, the ConfigMap read-only, the memory limit and the command."""
    objects, tmp = quickstart
    pod, configmaps = ic.find_job(objects)
    dirs = ic.write_configmap_volumes(pod, configmaps, tmp / "volumes")
    args = ic.run_args(
        objects, engine="podman", index=2, secrets=SECRETS, configmap_dirs=dirs, name="n"
    )
    container = ic.trainer_container(pod)
    assert args[-1] == container["image"] == "localhost/t:1"
    assert pairs(args, "--user") == ["10001:10001"]
    assert "--read-only" in args and "--read-only-tmpfs=false" in args
    assert pairs(args, "--cap-drop") == ["ALL"]
    assert pairs(args, "--security-opt") == ["no-new-privileges"]
    assert sorted(t.split(":")[0] for t in pairs(args, "--tmpfs")) == ["/home/trainer", "/tmp"]
    assert pairs(args, "--shm-size") == [str(2**30)]
    assert pairs(args, "--memory") == [str(8 * 2**30)]
    assert json.loads(pairs(args, "--entrypoint")[0]) == container["command"]
    env = dict(e.split("=", 1) for e in pairs(args, "-e"))
    assert env["JOB_COMPLETION_INDEX"] == "2"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert env["AWS_SECRET_ACCESS_KEY"] == ic.SECRET_VALUES["AWS_SECRET_ACCESS_KEY"]
    assert {e["name"] for e in container["env"]} | {"JOB_COMPLETION_INDEX"} == set(env)
    (bind,) = pairs(args, "--volume")
    source, target, mode = bind.split(":")
    sweep = Path(source) / "sweep.json"
    assert (target, mode) == ("/etc/early-repair", "ro")
    assert sweep.read_text() == next(iter(configmaps.values()))["sweep.json"]
    assert sweep.stat().st_mode & 0o777 == 0o444


def test_flags_follow_the_plan_not_a_copy(tmp_path: Path) -> None:
    """A spec with another memory size, region and secret name gives other flags."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    objects = planned(
        tmp_path,
        resources={**spec.get("resources", {}), "memory": "3Gi"},
        kubernetes={"s3_secret": "other-secret"},
    )
    pod, configmaps = ic.find_job(objects)
    dirs = ic.write_configmap_volumes(pod, configmaps, tmp_path / "v")
    args = ic.run_args(
        objects,
        engine="docker",
        index=0,
        secrets={"other-secret": ic.SECRET_VALUES},
        configmap_dirs=dirs,
        name="n",
    )
    assert pairs(args, "--memory") == [str(3 * 2**30)]
    assert "--read-only-tmpfs=false" not in args  # a podman flag only
    with pytest.raises(ic.CheckError, match="Secret 'other-secret' has no key"):
        ic.run_args(
            objects, engine="docker", index=0, secrets=SECRETS, configmap_dirs=dirs, name="n"
        )


def test_pod_specs_it_cannot_honour_are_refused(quickstart) -> None:
    objects, _ = quickstart
    job = next(o for o in objects if o["kind"] == "Job")

    def with_pod(change) -> list[dict[str, Any]]:
        changed = copy.deepcopy(job)
        change(changed["spec"]["template"]["spec"])
        return [changed]

    def root(pod: dict) -> None:
        pod["containers"][0]["securityContext"]["runAsUser"] = 0

    def host_path(pod: dict) -> None:
        pod["volumes"][1] = {"name": pod["volumes"][1]["name"], "hostPath": {"path": "/"}}

    for change, message in [(root, "runAsNonRoot with runAsUser 0"), (host_path, "hostPath")]:
        with pytest.raises(ic.CheckError, match=message):
            ic.run_args(
                with_pod(change),
                engine="podman",
                index=0,
                secrets=SECRETS,
                configmap_dirs={"sweep": Path("/x")},
                name="n",
            )


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("8Gi", 8 * 2**30), ("512M", 512 * 10**6), ("1e9", 10**9), ("1024", 1024), (64, 64)],
)
def test_memory_quantities(quantity: str, expected: int) -> None:
    assert ic.quantity_bytes(quantity) == expected


def test_a_memory_quantity_kubernetes_refuses_is_one_line() -> None:
    with pytest.raises(ic.CheckError, match="'8 GB' is not one Kubernetes accepts"):
        ic.quantity_bytes("8 GB")


def test_trees_compare_without_timings_and_name_the_first_difference() -> None:
    record = {"accuracy": 0.9, "seconds": 1.0, "rr": 50.0}
    history = b"epoch,loss,seconds\n1,0.5,3.2\n"
    host = {
        "s/r/epoch_001/base/metrics.json": json.dumps(record).encode(),
        "s/r/train/history.csv": history,
        "s/r/logs/trainer.log": b"host log",
    }
    image = {
        "s/r/epoch_001/base/metrics.json": json.dumps({**record, "seconds": 9.0}).encode(),
        "s/r/train/history.csv": history.replace(b"3.2", b"7.7"),
        "s/r/logs/trainer.log": b"another log",
    }
    assert ic.compare_trees(image, host) is None
    image["s/r/epoch_001/base/metrics.json"] = json.dumps({**record, "rr": 0.0}).encode()
    assert ic.compare_trees(image, host) == (
        "s/r/epoch_001/base/metrics.json: rr = 0.0 (image) vs 50.0 (host)"
    )
    image["s/r/epoch_005/base/metrics.json"] = b"{}"
    assert ic.compare_trees(image, host) == (
        "s/r/epoch_005/base/metrics.json: only in the image's results"
    )
