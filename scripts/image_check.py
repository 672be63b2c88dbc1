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
from image_check_job import (
    SECRET_VALUES,
    CheckError,
    compare_trees,
    derived_spec,
    find_job,
    plan,
    run_args,
    trainer_container,
    write_configmap_volumes,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO / "settings" / "quickstart.yaml"
DEFAULT_TAG = "localhost/early-repair-trainer:image-check"
BUCKET = "image-check"
PODMAN_ROOT_FLAGS = "--runtime runc --cgroup-manager cgroupfs --storage-driver overlay"
CA_ENV = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


# --- engine, build, runs ---------------------------------------------------------------------


@dataclass
class Engine:
    name: str
    argv: list[str]
    env: dict[str, str]
    built: bool = False  # this run built the image (so it may remove it afterwards)

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


def tail(path: Path, lines: int = 15, width: int = 300) -> str:
    """The last lines of a log, each cut to ``width`` characters."""
    return "\n".join(
        line[:width] for line in path.read_text(errors="replace").splitlines()[-lines:]
    )


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
    engine.built = True
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
        f"result    identical: {len(walls)} run{'s' if len(walls) != 1 else ''},"
        f" {len(image_tree)} objects equal (metrics,"
        " patches, search histories, checkpoint tensors; timings and logs aside)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.spec.is_file():  # bad input: one line, nothing created or removed
        print(f"image-check: --spec {args.spec}: no such file", file=sys.stderr)
        return 2
    made = args.workdir is None
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
            if engine is not None and engine.built:  # the image; its layers, pip's cache stay
                subprocess.run(
                    engine.cmd("rmi", args.tag), capture_output=True, env=engine.env, check=False
                )
            if made:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
