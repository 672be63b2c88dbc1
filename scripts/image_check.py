"""Build the trainer image and run it as the Job's pod runs it; compare with the host.

Why this exists: the Dockerfile and the Job's restrictions (read-only root filesystem,
UID 10001, every capability dropped, no privilege escalation, emptyDir for /tmp, HOME and
/dev/shm) are otherwise only checked on paper. This script (``scripts/image-check``):

1. builds the Dockerfile's target (``gpu``, the Job's default) with podman or docker;
2. renders the Job with ``early-repair plan SPEC --out -`` - the objects ``submit`` creates -
   and turns its pod template into ``<engine> run`` arguments (``run_args``: env with the
   Secret's keys resolved, the ConfigMap mounted read-only, emptyDir as tmpfs, the security
   context, the memory limit), so the container runs under the same restrictions and no
   second, hand-written copy of them can drift;
3. runs the chosen indices in the image, results to a moto S3 server on loopback (the
   container shares the host's network, as a pod reaches MinIO over the cluster's), and the
   same indices on the host with the same sweep JSON into another prefix;
4. compares every result object (metrics, patches, search histories, checkpoints'
   tensors, predictions) minus timings, and prints build seconds, image size, run seconds
   and "identical" or the first difference. Exit 0 only when identical; 1 when they differ
   or a step failed; 2 on bad input.

Engine flags for podman as root on a host without systemd (cgroupfs, runc, overlay) are the
default when run as root; ``IMAGE_CHECK_PODMAN_FLAGS`` replaces them. Without
``CONTAINERS_CONF``, podman gets a containers.conf with ``default_ulimits = []`` (the
container inherits the engine's limits instead of podman's nofile default, which a nested
sandbox's hard limit may refuse).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO / "settings" / "quickstart.yaml"
DEFAULT_TAG = "localhost/early-repair-trainer:image-check"
BUCKET = "image-check"
CONTAINER = "trainer"  # the Job's container name (manifests.py)
# What the Job's Secret holds, played by this script: moto accepts any credentials.
SECRET_VALUES = {"AWS_ACCESS_KEY_ID": "image-check", "AWS_SECRET_ACCESS_KEY": "image-check-key"}
PODMAN_ROOT_FLAGS = "--runtime runc --cgroup-manager cgroupfs --storage-driver overlay"
CA_ENV = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
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


# --- engine, build, runs ---------------------------------------------------------------------


@dataclass
class Engine:
    name: str
    argv: list[str]
    env: dict[str, str]

    def cmd(self, *args: str) -> list[str]:
        return [*self.argv, *args]


def make_engine(name: str, workdir: Path) -> Engine:
    if shutil.which(name) is None:
        raise CheckError(f"--engine {name}: {name} is not installed", 2)
    env = dict(os.environ)
    argv = [name]
    if name == "podman":
        flags = os.environ.get("IMAGE_CHECK_PODMAN_FLAGS")
        if flags is None:
            flags = PODMAN_ROOT_FLAGS if os.geteuid() == 0 else ""
        argv += shlex.split(flags)
        if "CONTAINERS_CONF" not in env:
            conf = workdir / "containers.conf"
            conf.write_text("[containers]\ndefault_ulimits = []\n")
            env["CONTAINERS_CONF"] = str(conf)
    else:
        env["DOCKER_BUILDKIT"] = "1"  # RUN --mount needs BuildKit
    return Engine(name, argv, env)


def ca_bundle(explicit: str | None) -> Path | None:
    """The CA bundle pip in the build should trust: --ca-bundle, else PIP_CERT & co."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise CheckError(f"--ca-bundle {explicit}: no such file", 2)
        return path
    for var in CA_ENV:
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


@contextmanager
def timed() -> Iterator[Callable[[], float]]:
    t0 = time.perf_counter()
    elapsed: list[float] = []
    yield lambda: elapsed[0] if elapsed else time.perf_counter() - t0
    elapsed.append(time.perf_counter() - t0)


def run_logged(argv: list[str], log: Path, env: Mapping[str, str] | None = None, **kw: Any) -> int:
    with log.open("wb") as out:
        return subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False, **kw
        ).returncode


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def build(engine: Engine, args: argparse.Namespace, workdir: Path) -> tuple[float, str]:
    """Build the image; returns seconds and what pip did (downloads against its cache)."""
    argv = engine.cmd("build", "--network", "host", "--target", args.target, "-t", args.tag)
    if engine.name == "podman":
        # The OCI format has no SHELL: podman would run every RUN with /bin/sh, silently
        # dropping bash's pipefail and [[ ]] (the weights stage's checks). Docker's keeps it.
        argv += ["--format", "docker"]
    if args.base:
        argv += ["--build-arg", f"BASE={args.base}"]
    cert = ca_bundle(args.ca_bundle)
    if cert is not None:
        argv += ["--secret", f"id=pip-cert,src={cert}"]
    if args.rebuild:
        argv.append("--no-cache")  # every step again; pip's cache mount is what remains
    log = workdir / "build.log"
    print(f"building {args.tag} ({engine.name}, target {args.target}); log {log}", file=sys.stderr)
    with timed() as seconds:
        rc = run_logged([*argv, str(REPO)], log, engine.env)
    if rc != 0:
        raise CheckError(f"the build failed (exit {rc}):\n{tail(log)}")
    text = log.read_text(errors="replace")
    downloads = len(re.findall(r"^\s*Downloading \S+\.whl", text, re.M))
    # `pip download` into the cache's wheelhouse, or pip's own HTTP cache.
    cached = len(re.findall(r"^\s*(File was already downloaded|Using cached) \S+", text, re.M))
    return seconds(), f"{downloads} wheels downloaded, {cached} from pip's cache"


def image_size(engine: Engine, tag: str) -> int:
    out = subprocess.run(
        engine.cmd("image", "inspect", "--format", "{{.Size}}", tag),
        capture_output=True,
        text=True,
        env=engine.env,
        check=False,
    )
    if out.returncode != 0:
        raise CheckError(f"{engine.name} image inspect {tag}: {out.stderr.strip()}")
    return int(out.stdout.strip())


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


def host_env(workdir: Path) -> dict[str, str]:
    """The host trainer's environment: the Secret's credentials, its own HOME and TMPDIR."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    home, tmp = workdir / "host-home", workdir / "host-tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    return {
        **env,
        **SECRET_VALUES,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"),
    }


def read_tree(endpoint: str, prefix: str) -> dict[str, bytes]:
    from orchestrator.store import open_store

    os.environ.update(SECRET_VALUES)
    store = open_store(f"s3://{BUCKET}/{prefix}", endpoint_url=endpoint)
    keys = store.list("")
    blobs = store.read_many(keys)
    failed = [k for k, v in blobs.items() if isinstance(v, Exception)]
    if failed:
        raise CheckError(f"cannot read s3://{BUCKET}/{prefix}/{failed[0]}: {blobs[failed[0]]}")
    return {k: v for k, v in blobs.items() if isinstance(v, bytes)}


def save_tree(tree: Mapping[str, bytes], folder: Path) -> None:
    for key, blob in tree.items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)


@contextmanager
def moto() -> Iterator[str]:
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/image-check",
        description="Build the trainer image and run sweep indices in it as the Job's pod"
        " runs them; compare the results with the same indices run on this host.",
    )
    p.add_argument(
        "--engine",
        choices=("podman", "docker"),
        default=None,
        help="container engine (default: podman if installed, else docker)",
    )
    p.add_argument(
        "--base", help="base image for the Dockerfile's BASE (e.g. scripts/image-base's)"
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the image, the work folder (plan, logs) and both result trees",
    )
    p.add_argument("--target", choices=("gpu", "cpu"), default="gpu", help="Dockerfile target")
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="sweep spec (quickstart)")
    p.add_argument(
        "--index",
        type=int,
        action="append",
        dest="indices",
        help="run index to check (repeatable; default: every run of the spec)",
    )
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild every layer (--no-cache); pip's cache mount still serves",
    )
    p.add_argument("--tag", default=DEFAULT_TAG, help="image tag to build")
    p.add_argument(
        "--ca-bundle",
        help="CA bundle for pip in the build (default: $PIP_CERT,"
        " $SSL_CERT_FILE or $REQUESTS_CA_BUNDLE when set), passed as a build secret",
    )
    p.add_argument("--workdir", type=Path, help="work folder (default: a new temporary one)")
    return p.parse_args(argv)


@dataclass
class Prepared:
    """The Job as planned, and what running its indices here needs."""

    objects: list[dict[str, Any]]
    indices: list[int]
    configmap_dirs: dict[str, Path]
    secrets: dict[str, dict[str, str]]
    host_sweep: Path


def prepare(args: argparse.Namespace, endpoint: str, workdir: Path) -> Prepared:
    """Plan the spec (image and results on loopback) and lay out the pod's volumes."""
    spec = derived_spec(args.spec, args.tag, f"s3://{BUCKET}/image", endpoint)
    spec_file = workdir / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    objects = plan(spec_file, workdir)
    pod, configmaps = find_job(objects)
    n_runs = int(next(o for o in objects if o["kind"] == "Job")["spec"]["completions"])
    indices = args.indices if args.indices is not None else list(range(n_runs))
    bad = [i for i in indices if not 0 <= i < n_runs]
    if bad:
        raise CheckError(f"--index {bad[0]}: the spec has runs 0..{n_runs - 1}", 2)
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in trainer_container(pod).get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    # The same sweep JSON the pods read, its results in another prefix.
    host_sweep = json.loads(next(iter(configmaps.values()))["sweep.json"])
    host_sweep["results"] = f"s3://{BUCKET}/host"
    (workdir / "host-sweep.json").write_text(json.dumps(host_sweep))
    return Prepared(
        objects,
        indices,
        write_configmap_volumes(pod, configmaps, workdir / "volumes"),
        {ref["name"]: SECRET_VALUES for ref in refs},
        workdir / "host-sweep.json",
    )


def run_index(engine: Engine, job: Prepared, i: int, workdir: Path) -> tuple[float, float]:
    """Index ``i`` in the image, then on the host; returns both wall times."""
    argv = run_args(
        job.objects,
        engine=engine.name,
        index=i,
        secrets=job.secrets,
        configmap_dirs=job.configmap_dirs,
        name=f"early-repair-check-{os.getpid()}-{i}",
    )
    (workdir / f"run-{i}.argv").write_text(shlex.join(engine.cmd(*argv)) + "\n")
    host = [sys.executable, "-m", "orchestrator.cli", "trainer", "--sweep", str(job.host_sweep)]
    seconds = []
    for where, cmd, env in (
        ("image", engine.cmd(*argv), engine.env),
        ("host", [*host, "--run-index", str(i)], host_env(workdir)),
    ):
        log = workdir / f"{where}-{i}.log"
        with timed() as wall:
            rc = run_logged(cmd, log, env, cwd=workdir)
        if rc != 0:
            raise CheckError(f"index {i} failed on the {where} (exit {rc}):\n{tail(log)}")
        seconds.append(wall())
    return seconds[0], seconds[1]


def cpu_seconds(tree: Mapping[str, bytes]) -> dict[int, float]:
    """Per run index: the CPU seconds its stages recorded (run.json's costs). Wall times
    of the image and the host are not comparable on a shared machine (the container gets
    a cgroup of its own); CPU seconds are."""
    out = {}
    for key, blob in tree.items():
        if key.endswith("/run.json"):
            info = json.loads(blob)
            out[int(info["run"]["index"])] = sum(c["cpu_s"] for c in info.get("costs", []))
    return out


def check(args: argparse.Namespace, engine: Engine, workdir: Path) -> int:
    if not args.spec.is_file():
        raise CheckError(f"--spec {args.spec}: no such file", 2)
    build_s, pip_note = build(engine, args, workdir)
    size = image_size(engine, args.tag)
    base = args.base or "the Dockerfile's default"
    print(
        f"build     {build_s:7.1f} s  ({engine.name}, target {args.target}, base {base};"
        f" pip: {pip_note})"
    )
    print(f"image     {size / 1e9:7.2f} GB ({size:,} bytes) {args.tag}")
    with moto() as endpoint:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=SECRET_VALUES["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=SECRET_VALUES["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=BUCKET)
        job = prepare(args, endpoint, workdir)
        walls = {i: run_index(engine, job, i, workdir) for i in job.indices}
        image_tree, host_tree = read_tree(endpoint, "image"), read_tree(endpoint, "host")
    image_cpu, host_cpu = cpu_seconds(image_tree), cpu_seconds(host_tree)
    for i, (image_s, host_s) in sorted(walls.items()):
        print(
            f"run {i}     {image_s:7.1f} s in the image, {host_s:.1f} s on the host (wall);"
            f" its stages {image_cpu.get(i, 0):.1f} and {host_cpu.get(i, 0):.1f} CPU-s"
        )
    if args.keep:
        save_tree(image_tree, workdir / "results" / "image")
        save_tree(host_tree, workdir / "results" / "host")
    diff = compare_trees(image_tree, host_tree)
    if diff is not None:
        print(f"result    different: {diff}")
        return 1
    print(
        f"result    identical: {len(walls)} runs, {len(image_tree)} objects equal (metrics,"
        " patches, search histories, checkpoint tensors; timings and logs aside)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="image-check-"))).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    engine: Engine | None = None
    try:
        engine = make_engine(
            args.engine or ("podman" if shutil.which("podman") else "docker"), workdir
        )
        return check(args, engine, workdir)
    except CheckError as e:
        print(f"image-check: {e}", file=sys.stderr)
        return e.code
    finally:
        if args.keep:
            print(f"kept: {workdir} and the image {args.tag}", file=sys.stderr)
        else:
            if engine is not None:  # the image only; the build's layers and pip cache stay
                subprocess.run(
                    engine.cmd("rmi", args.tag), capture_output=True, env=engine.env, check=False
                )
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
