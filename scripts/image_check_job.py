"""scripts/image-check's pure half: the Job of `early-repair plan --out -` as container
engine arguments, and two result trees compared.

``run_args`` turns the Job's pod template into ``<engine> run`` arguments: env with the
Secret's keys resolved, the sweep ConfigMap mounted read-only, emptyDir as tmpfs
(memory-backed /dev/shm as the shm size), the pod's and container's securityContext
(UID/GID, read-only root, no privilege escalation, capabilities, seccomp) and the memory
limit. Whatever it cannot honour (another volume type, a Localhost seccomp profile, root
with runAsNonRoot) is refused with one line rather than run with fewer restrictions.
``compare_trees`` names the first difference between the image's and the host's results,
timings, logs and the store's location aside.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

CONTAINER = "trainer"  # the Job's container name (manifests.py)
# What the Job's Secret holds, played by image-check: moto accepts any credentials.
SECRET_VALUES = {"AWS_ACCESS_KEY_ID": "image-check", "AWS_SECRET_ACCESS_KEY": "image-check-key"}
TIMING = {"seconds"}  # fields that hold wall time, which no two runs share
WHERE = {"results", "storage"}  # where a store lives, not what was computed


class CheckError(Exception):
    """One line for the user; ``code`` 2 = bad input, 1 = a step failed."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- the Job's pod template -> engine arguments (pure) --------------------------------------

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def quantity_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity (``8Gi``, ``512M``, ``1e9``, ``1024``) in bytes."""
    text = str(quantity).strip()
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?(?:[eE][0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", text)
    if m is None:
        raise CheckError(f"memory quantity {text!r} is not one Kubernetes accepts", 2)
    number, suffix = m.groups()
    scale = _BINARY.get(suffix or "") or _DECIMAL.get(suffix or "") or 1
    return int(float(number) * scale)


def find_job(objects: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, dict]]:
    """The Job's pod spec and every ConfigMap's data by name, from ``plan --out -``."""
    jobs = [o for o in objects if o.get("kind") == "Job"]
    if len(jobs) != 1:
        raise CheckError(f"the plan holds {len(jobs)} Jobs, expected one")
    configmaps = {
        o["metadata"]["name"]: o.get("data", {}) for o in objects if o.get("kind") == "ConfigMap"
    }
    return jobs[0]["spec"]["template"]["spec"], configmaps


def trainer_container(pod: Mapping[str, Any]) -> dict[str, Any]:
    for c in pod.get("containers", []):
        if c.get("name") == CONTAINER:
            return c
    raise CheckError(f"the Job's pod has no container named {CONTAINER!r}")


def env_args(container: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]]) -> list[str]:
    """``-e NAME=VALUE`` for every env entry; secretKeyRef values from ``secrets``."""
    out: list[str] = []
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            value = str(entry["value"])
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            found = secrets.get(ref["name"], {}).get(ref["key"])
            if found is None:
                if ref.get("optional"):
                    continue
                raise CheckError(f"env {name}: Secret {ref['name']!r} has no key {ref['key']!r}")
            value = found
        else:
            raise CheckError(f"env {name}: only value and secretKeyRef are supported")
        out += ["-e", f"{name}={value}"]
    return out


def security_args(pod: Mapping[str, Any], container: Mapping[str, Any], engine: str) -> list[str]:
    """The pod's and container's securityContext as engine flags (the container's wins)."""
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})

    def pick(key: str) -> Any:
        return csc.get(key, psc.get(key))

    uid, gid = pick("runAsUser"), pick("runAsGroup")
    if uid is None:
        raise CheckError("securityContext.runAsUser is not set: the run's user is unknown")
    if pick("runAsNonRoot") and int(uid) == 0:
        raise CheckError("securityContext: runAsNonRoot with runAsUser 0")
    out = ["--user", f"{uid}:{gid if gid is not None else uid}"]
    if psc.get("fsGroup") is not None:
        out += ["--group-add", str(psc["fsGroup"])]
    if csc.get("privileged"):
        out.append("--privileged")
    if csc.get("readOnlyRootFilesystem"):
        out.append("--read-only")
        if engine == "podman":  # podman would add its own tmpfs on /tmp, /var/tmp and /run
            out.append("--read-only-tmpfs=false")
    if csc.get("allowPrivilegeEscalation") is False:
        out += ["--security-opt", "no-new-privileges"]
    caps = csc.get("capabilities", {})
    for cap in caps.get("drop", []):
        out += ["--cap-drop", cap]
    for cap in caps.get("add", []):
        out += ["--cap-add", cap]
    seccomp = (pick("seccompProfile") or {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        out += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":  # the engine's default profile is RuntimeDefault
        raise CheckError(f"securityContext.seccompProfile {seccomp!r} is not supported")
    return out


def volume_args(
    pod: Mapping[str, Any], container: Mapping[str, Any], configmap_dirs: Mapping[str, Path]
) -> list[str]:
    """ConfigMap volumes as read-only binds of ``configmap_dirs[volume]``; emptyDir as
    tmpfs (memory-backed /dev/shm as the engine's shm size)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    out: list[str] = []
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None:
            raise CheckError(f"volumeMount {mount['name']!r} names no volume of the pod")
        path = mount["mountPath"]
        if "configMap" in volume:
            source = configmap_dirs[volume["name"]]
            out += ["--volume", f"{source}:{path}:ro"]  # a configMap volume is always read-only
        elif "emptyDir" in volume:
            empty = volume["emptyDir"] or {}
            size = empty.get("sizeLimit")
            if path == "/dev/shm":
                if size is not None:
                    out += ["--shm-size", str(quantity_bytes(size))]
                continue
            opts = "rw,exec,nosuid,nodev,mode=0777"  # an emptyDir is world-writable, 0777
            if size is not None:
                opts += f",size={quantity_bytes(size)}"
            out += ["--tmpfs", f"{path}:{opts}"]
        else:
            kind = next((k for k in volume if k != "name"), "?")
            raise CheckError(f"volume {volume['name']!r}: {kind} volumes are not supported here")
    return out


def write_configmap_volumes(
    pod: Mapping[str, Any], configmaps: Mapping[str, Mapping[str, str]], root: Path
) -> dict[str, Path]:
    """Each ConfigMap volume's files (its ``items``, or every key) under ``root/<volume>``,
    with the volume's ``defaultMode``; returns volume name -> folder."""
    out: dict[str, Path] = {}
    for volume in pod.get("volumes", []):
        cm = volume.get("configMap")
        if cm is None:
            continue
        data = configmaps.get(cm["name"])
        if data is None:
            raise CheckError(
                f"volume {volume['name']!r}: ConfigMap {cm['name']!r} is not in the plan"
            )
        folder = root / volume["name"]
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        items = cm.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            target = folder / item["path"]
            target.write_text(data[item["key"]])
            target.chmod(item.get("mode", cm.get("defaultMode", 0o644)))
        out[volume["name"]] = folder
    return out


def run_args(
    objects: Sequence[Mapping[str, Any]],
    *,
    engine: str,
    index: int,
    secrets: Mapping[str, Mapping[str, str]],
    configmap_dirs: Mapping[str, Path],
    name: str,
) -> list[str]:
    """``<engine> run`` arguments for one index of the Job in ``objects`` (``plan --out -``)."""
    pod, _ = find_job(objects)
    container = trainer_container(pod)
    out = ["run", "--rm", "--name", name, "--pull", "never", "--network", "host"]
    # What the Job controller adds to every pod of an Indexed Job.
    out += ["-e", f"JOB_COMPLETION_INDEX={index}"]
    out += env_args(container, secrets)
    out += security_args(pod, container, engine)
    out += volume_args(pod, container, configmap_dirs)
    memory = container.get("resources", {}).get("limits", {}).get("memory")
    if memory is not None:
        out += ["--memory", str(quantity_bytes(memory))]
    if container.get("workingDir"):
        out += ["--workdir", container["workingDir"]]
    command = container.get("command")
    if command:
        out += ["--entrypoint", json.dumps(command)]
    return [*out, container["image"], *container.get("args", [])]


# --- comparing two result trees --------------------------------------------------------------


def comparable(key: str, blob: bytes) -> Any:
    """What a result object computed: timings, logs and the store's location left out."""
    name = key.rsplit("/", 1)[-1]
    if name in ("trainer.log", "_SUCCESS"):
        return "present"
    if name == "records.arrow":
        from orchestrator.results.records import load_run_records

        return load_run_records(blob).table.drop_columns(sorted(TIMING)).to_pylist()
    if name.endswith(".pt"):
        import torch

        state = torch.load(io.BytesIO(blob), weights_only=True)
        return {k: (str(v.dtype), tuple(v.shape), v.numpy().tobytes()) for k, v in state.items()}
    if name.endswith(".csv"):
        import pandas as pd

        frame = pd.read_csv(io.BytesIO(blob)) if blob.strip() else pd.DataFrame()
        return frame.drop(columns=[c for c in frame if c in TIMING]).to_dict("records")
    if name.endswith(".json"):
        data = json.loads(blob)
        if name == "run.json":  # timings, host name, versions: the run's spec is what counts
            return {k: v for k, v in data["run"].items() if k not in WHERE}
        if name == "sweep.json":
            return {k: v for k, v in data.items() if k not in WHERE}
        return {k: v for k, v in data.items() if k not in TIMING}
    return blob


def first_difference(key: str, a: Any, b: Any) -> str | None:
    """A line naming where ``a`` (the image's) and ``b`` (the host's) first differ."""
    if a == b:
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        for field in sorted(set(a) | set(b), key=str):
            if a.get(field) != b.get(field):
                x, y = _short(a.get(field)), _short(b.get(field))
                return f"{key}: {field} = {x} (image) vs {y} (host)"
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{key}: {len(a)} rows (image) vs {len(b)} (host)"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return first_difference(f"{key} row {i}", x, y)
    return f"{key}: {_short(a)} (image) vs {_short(b)} (host)"


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, bytes) else f"<{len(value)} bytes>"
    return text if len(text) <= 80 else text[:77] + "..."


def compare_trees(image: Mapping[str, bytes], host: Mapping[str, bytes]) -> str | None:
    """The first difference between two trees of result objects (key -> bytes), or None."""
    only = sorted(set(image) ^ set(host))
    if only:
        side = "image" if only[0] in image else "host"
        return f"{only[0]}: only in the {side}'s results"
    for key in sorted(image):
        diff = first_difference(key, comparable(key, image[key]), comparable(key, host[key]))
        if diff is not None:
            return diff
    return None


# --- the plan ----------------------------------------------------------------------------


def derived_spec(spec: Path, image: str, results: str, endpoint: str) -> dict[str, Any]:
    """The user's spec with the built image and results on the loopback S3 server."""
    try:
        data = yaml.safe_load(spec.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CheckError(f"--spec {spec}: cannot read it ({e})", 2) from e
    if not isinstance(data, dict):
        raise CheckError(f"--spec {spec}: not a sweep spec (a YAML mapping)", 2)
    data["image"] = image
    data["results"] = results
    data["storage"] = {**(data.get("storage") or {}), "endpoint_url": endpoint}
    return data


def plan(spec_file: Path, workdir: Path) -> list[dict[str, Any]]:
    """The Job exactly as ``submit`` would create it: ``early-repair plan SPEC --out -``."""
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "plan", str(spec_file), "--out", "-"],
        capture_output=True,
        text=True,
        check=False,
        cwd=workdir,
    )
    if out.returncode != 0:
        raise CheckError(
            "early-repair plan failed: " + (out.stderr.strip().splitlines() or ["?"])[-1],
            out.returncode,
        )
    (workdir / "plan.yaml").write_text(out.stdout)
    return [o for o in yaml.safe_load_all(out.stdout) if o]
