"""A sweep as Kubernetes objects: one ConfigMap and one Indexed Job, as plain dicts.

Pure functions, no I/O: ``early-repair plan --out`` writes exactly what ``render_sweep``
returns and ``early-repair submit`` sends exactly the same objects, so what the tests check
against the official schemas (kubernetes-validate, strict) and pin in golden files is what a
cluster receives. Dict keys are inserted in a fixed order, so the YAML is stable too.

The objects target Kubernetes >= 1.33 and use only what is GA there. Choices a cluster
admin would ask about:

- **One index = one run.** ``completionMode: Indexed``, ``completions`` = number of runs,
  the trainer reads its run from ``JOB_COMPLETION_INDEX`` (set by the Job controller) and
  the sweep from the ConfigMap mounted read-only at ``/etc/early-repair/sweep.json``. The
  pods carry the controller's ``batch.kubernetes.io/job-completion-index`` label; the run
  name for an index is ``expand(spec)[index]`` (the ConfigMap holds the spec), so a pod
  template shared by all indexes needs no per-run label.
- **Failures.** ``backoffLimitPerIndex`` retries each run on its own and
  ``maxFailedIndexes`` (optional) stops the sweep early. ``podFailurePolicy`` (which needs
  ``restartPolicy: Never``): a pod disrupted by the cluster (preemption, eviction, node
  drain: condition ``DisruptionTarget``) is ``Ignore``d - it does not use up a retry; the
  trainer's bad-input exit code 2 (``EXIT_BAD_INPUT``) is ``FailIndex`` - retrying the same
  bad spec cannot help; the GPU guard's timeout exit code 75 (``EXIT_GUARD_TIMEOUT``, GPU
  memory never came free) and the transient exit code 69 (``EXIT_TRANSIENT``: object
  storage unreachable or failing after the store's own retries, say a MinIO restart) are an
  explicit ``Count``: the index is retried like after a crash, with the controller's growing
  back-off between tries, and bounded by ``backoffLimitPerIndex``. ``Ignore`` would retry
  them without bound, ``FailIndex`` would never retry a merely busy GPU or a store that
  comes back. With a pod failure policy the controller also waits until a
  failed pod has fully terminated before it starts the replacement, so an index never holds
  two GPUs at once.
- **Resources.** cpu and memory requests always; a memory limit equal to the request (a
  run that outgrows it is OOM-killed rather than taking the node's memory) and no CPU limit
  (CPU throttling only slows a run down). ``nvidia.com/gpu`` limits plus the matching
  toleration when the spec asks for GPUs; with 0 GPUs ``NVIDIA_VISIBLE_DEVICES=none`` keeps
  a CPU pod off any GPU an NVIDIA runtime would otherwise expose (CUDA images default to
  ``all``).
- **Security** (Pod Security "restricted"): non-root with the image's fixed UID/GID 10001,
  no privilege escalation, all capabilities dropped, seccomp RuntimeDefault, read-only root
  filesystem with emptyDir volumes for /tmp and HOME (which holds XDG_CACHE_HOME and
  MPLCONFIGDIR) and a memory-backed /dev/shm for PyTorch; no ServiceAccount token (the
  trainer never calls the API), no service links.
- **Credentials.** The S3 keys come only through ``secretKeyRef`` to the spec's Secret, with
  ``optional: false``: a missing Secret or key stops the pod in
  ``CreateContainerConfigError`` (shown by ``early-repair status``) instead of letting the
  trainer run with no credentials and fail later, or worse, talk to S3 anonymously. No
  secret value is ever part of a rendered object.
- **Kueue.** When ``kubernetes.queue`` names a LocalQueue the Job gets the
  ``kueue.x-k8s.io/queue-name`` label: Kueue's webhook suspends the Job and admits it, so
  we never set ``suspend`` ourselves. Kueue admits a Job as one Workload of
  ``parallelism`` pods, so a sweep wider than the queue's quota would wait forever; the
  ``kueue.x-k8s.io/job-min-parallelism`` annotation (partial admission, beta and on by
  default since Kueue 0.5) lets Kueue lower ``parallelism`` to what the quota holds, down
  to ``kubernetes.min_parallelism`` (default 1). ``completions`` never changes, so every
  run still runs, fewer at a time; Kueue does not raise ``parallelism`` again later.
  Kueue's webhook wants the annotation between 1 and ``parallelism - 1``, so it is left
  out when ``min_parallelism`` (or 1) is not below ``parallelism``.
- **Names.** ``<sweep>-<first 8 hex of the spec hash>`` for both objects: the same spec
  always maps to the same objects, a changed spec to new ones. Sweep names are at most 40
  characters, so the name is at most 49 and the pods' ``<job>-<index>`` host names stay
  within 63 characters for up to 10^7 runs.
"""

from __future__ import annotations

import json
import re
from typing import Any

from orchestrator import __version__
from orchestrator.errors import EXIT_BAD_INPUT, EXIT_GUARD_TIMEOUT, EXIT_TRANSIENT, BadInput
from orchestrator.spec import SweepSpec, parse_spec

# Label and annotation keys of our own; the prefix is a DNS subdomain as Kubernetes requires.
SWEEP_LABEL = "early-repair/sweep"
SPEC_HASH_ANNOTATION = "early-repair/spec-hash"
RESULTS_ANNOTATION = "early-repair/results"
RUNS_ANNOTATION = "early-repair/runs"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Kueue partial admission for batch/v1 Jobs (pkg/controller/jobs/job: JobMinParallelismAnnotation).
MIN_PARALLELISM_ANNOTATION = "kueue.x-k8s.io/job-min-parallelism"
# Set by the Job controller on every pod of an Indexed Job (label since 1.28, GA).
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# Every object and pod of one submitted sweep carries its object name here.
INSTANCE_LABEL = "app.kubernetes.io/instance"

APP_NAME = "early-repair"
CONTAINER = "trainer"
SWEEP_DIR = "/etc/early-repair"
SWEEP_KEY = "sweep.json"
SWEEP_FILE = f"{SWEEP_DIR}/{SWEEP_KEY}"
HOME = "/home/trainer"
# The image's user (Dockerfile): a fixed number so runAsNonRoot can be verified by the kubelet.
UID = 10001
GPU_RESOURCE = "nvidia.com/gpu"
SHM_SIZE = "1Gi"
HASH_CHARS = 8

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Kubernetes resource quantities (k8s.io/apimachinery resource.Quantity), e.g. 500m, 8Gi, 1e3.
_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[mkMGTPE]|[eE][+-]?\d+)?$")


def object_name(spec: SweepSpec) -> str:
    """``<sweep>-<8 hex>``: the ConfigMap's and the Job's name (DNS-1123 label)."""
    return f"{spec.name}-{spec.spec_hash()[:HASH_CHARS]}"


def label_value(value: str) -> str:
    """``value`` made a valid label value: at most 63 characters of [A-Za-z0-9-_.]."""
    out = re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^A-Za-z0-9_.-]+", "-", value))
    out = re.sub(r"[^A-Za-z0-9]+$", "", out[:63])
    assert _LABEL_VALUE.match(out), out
    return out


def sweep_selector(sweep: str) -> str:
    """Label selector for every object (ConfigMap, Job, pods) of one sweep."""
    return f"{SWEEP_LABEL}={label_value(sweep)}"


def labels(spec: SweepSpec, component: str) -> dict[str, str]:
    """The recommended ``app.kubernetes.io`` labels plus the sweep label."""
    return {
        "app.kubernetes.io/name": APP_NAME,
        INSTANCE_LABEL: object_name(spec),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": APP_NAME,
        "app.kubernetes.io/version": label_value(__version__),
        SWEEP_LABEL: label_value(spec.name),
    }


def with_namespace(
    spec: SweepSpec, namespace: str | None, source: str = "--namespace"
) -> SweepSpec:
    """The spec with ``kubernetes.namespace`` replaced (validated like the spec itself)."""
    if namespace is None or namespace == spec.kubernetes.namespace:
        return spec
    data = spec.model_dump(mode="json")
    data["kubernetes"]["namespace"] = namespace
    try:
        return parse_spec(data, source)
    except BadInput as e:
        raise BadInput(
            f"{source}: {namespace!r} is not a valid namespace name: use lower-case letters,"
            " digits and '-'"
        ) from e


def sweep_json(spec: SweepSpec) -> str:
    """The expanded spec (every default filled in) as the trainer reads it."""
    return json.dumps(spec.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def _check(spec: SweepSpec) -> None:
    if not spec.results.startswith("s3://") or len(spec.results) <= len("s3://"):
        raise BadInput(
            f"results: a Kubernetes Job writes its results to object storage, not to"
            f" {spec.results!r}; set results to s3://bucket/prefix (and storage.endpoint_url"
            " for MinIO)"
        )
    if not spec.image.strip():
        raise BadInput("image: empty; set image to the trainer image, e.g. registry/name:tag")
    for field, value in (("cpu", spec.resources.cpu), ("memory", spec.resources.memory)):
        if not _QUANTITY.match(value):
            raise BadInput(
                f"resources.{field}: {value!r} is not a Kubernetes quantity; write e.g."
                f" {'2 or 500m' if field == 'cpu' else '8Gi or 512Mi'}"
            )


# What a Kubernetes API server accepts: a ConfigMap's data (all values together) at most
# 1 MiB; any object at most etcd's default request size, 1.5 MiB.
CONFIGMAP_DATA_LIMIT = 1 << 20
OBJECT_LIMIT = 3 << 19


def check_configmap_size(spec: SweepSpec) -> None:
    """BadInput, before anything is created, when the sweep's ConfigMap would be larger
    than Kubernetes accepts (the expanded spec grows with datasets x models x seeds)."""
    size = len(sweep_json(spec).encode())
    if size > CONFIGMAP_DATA_LIMIT:
        raise BadInput(
            f"{spec.name}: the sweep's ConfigMap would hold {size:,} bytes of data, over"
            f" Kubernetes' limit of {CONFIGMAP_DATA_LIMIT:,} (1 MiB); split the sweep into"
            " several smaller sweeps (fewer seeds, datasets or models per spec)"
        )


def check_object_sizes(objects: list[dict[str, Any]]) -> None:
    """BadInput when any object is larger than an API server accepts (``OBJECT_LIMIT``;
    a ConfigMap's data: ``CONFIGMAP_DATA_LIMIT``), naming it and what to do."""
    for obj in objects:
        name = f"{obj['kind']} {obj['metadata']['name']}"
        data = sum(len(str(v).encode()) for v in (obj.get("data") or {}).values())
        size = len(json.dumps(obj, separators=(",", ":")).encode())
        if data > CONFIGMAP_DATA_LIMIT or size > OBJECT_LIMIT:
            raise BadInput(
                f"{name}: {max(size, data):,} bytes, over what Kubernetes accepts"
                f" ({CONFIGMAP_DATA_LIMIT:,} bytes of ConfigMap data, {OBJECT_LIMIT:,} per"
                " object); split the sweep into several smaller sweeps (fewer seeds,"
                " datasets or models per spec)"
            )


def render_configmap(spec: SweepSpec) -> dict[str, Any]:
    _check(spec)
    check_configmap_size(spec)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": object_name(spec),
            "namespace": spec.kubernetes.namespace,
            "labels": labels(spec, "sweep-config"),
            "annotations": {SPEC_HASH_ANNOTATION: spec.spec_hash()},
        },
        # The pods mount it; immutable keeps the kubelet from watching it and guarantees that
        # every index of the Job reads the same sweep.
        "immutable": True,
        "data": {SWEEP_KEY: sweep_json(spec)},
    }


def _env(spec: SweepSpec) -> list[dict[str, Any]]:
    k8s, storage = spec.kubernetes, spec.storage
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": HOME},
        {"name": "XDG_CACHE_HOME", "value": f"{HOME}/.cache"},
        {"name": "MPLCONFIGDIR", "value": f"{HOME}/.config/matplotlib"},
        {"name": "TMPDIR", "value": "/tmp"},
    ]
    if spec.resources.gpus == 0:
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"})
    if storage.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint_url})
    if storage.region:
        env.append({"name": "AWS_REGION", "value": storage.region})
        env.append({"name": "AWS_DEFAULT_REGION", "value": storage.region})
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.append(
            {
                "name": key,
                "valueFrom": {
                    "secretKeyRef": {"name": k8s.s3_secret, "key": key, "optional": False}
                },
            }
        )
    return env


def _resources(spec: SweepSpec) -> dict[str, Any]:
    res = spec.resources
    limits: dict[str, str] = {"memory": res.memory}
    if res.gpus:
        limits[GPU_RESOURCE] = str(res.gpus)
    return {"requests": {"cpu": res.cpu, "memory": res.memory}, "limits": limits}


def _pod_failure_policy() -> dict[str, Any]:
    def exit_codes(action: str, code: int) -> dict[str, Any]:
        return {
            "action": action,
            "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [code]},
        }

    return {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            exit_codes("FailIndex", EXIT_BAD_INPUT),
            exit_codes("Count", EXIT_TRANSIENT),
            exit_codes("Count", EXIT_GUARD_TIMEOUT),
        ]
    }


def _pod_spec(spec: SweepSpec) -> dict[str, Any]:
    k8s = spec.kubernetes
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": k8s.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if k8s.priority_class_name:
        pod["priorityClassName"] = k8s.priority_class_name
    if k8s.runtime_class_name:
        pod["runtimeClassName"] = k8s.runtime_class_name
    if k8s.node_selector:
        pod["nodeSelector"] = dict(sorted(k8s.node_selector.items()))
    if k8s.affinity:
        pod["affinity"] = k8s.affinity
    tolerations = list(k8s.tolerations)
    if spec.resources.gpus:
        gpu_toleration = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        if gpu_toleration not in tolerations:
            tolerations.insert(0, gpu_toleration)
    if tolerations:
        pod["tolerations"] = tolerations
    if k8s.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in k8s.image_pull_secrets]
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["containers"] = [
        {
            "name": CONTAINER,
            "image": spec.image,
            "imagePullPolicy": k8s.image_pull_policy,
            "command": ["early-repair", "trainer", "--sweep", SWEEP_FILE],
            "env": _env(spec),
            "resources": _resources(spec),
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
            },
            "volumeMounts": [
                {"name": "sweep", "mountPath": SWEEP_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "home", "mountPath": HOME},
                {"name": "dshm", "mountPath": "/dev/shm"},
            ],
            # The tail of the log becomes the termination message when the trainer dies
            # without writing one, so `status` can say why a run failed.
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    ]
    pod["volumes"] = [
        {
            "name": "sweep",
            "configMap": {
                "name": object_name(spec),
                "items": [{"key": SWEEP_KEY, "path": SWEEP_KEY}],
                "defaultMode": 0o444,
            },
        },
        {"name": "tmp", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
    ]
    return pod


def render_job(spec: SweepSpec) -> dict[str, Any]:
    _check(spec)
    k8s = spec.kubernetes
    runs = len(spec.runs())
    parallelism = min(k8s.parallelism or runs, runs)
    meta_labels = labels(spec, "trainer")
    annotations = {
        SPEC_HASH_ANNOTATION: spec.spec_hash(),
        RESULTS_ANNOTATION: spec.results,
        RUNS_ANNOTATION: str(runs),
    }
    if k8s.queue:
        meta_labels[QUEUE_LABEL] = k8s.queue
        min_parallelism = k8s.min_parallelism or 1
        if min_parallelism < parallelism:
            annotations[MIN_PARALLELISM_ANNOTATION] = str(min_parallelism)
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": runs,
        "parallelism": parallelism,
        "backoffLimitPerIndex": k8s.backoff_limit_per_index,
    }
    if k8s.max_failed_indexes is not None:
        job_spec["maxFailedIndexes"] = min(k8s.max_failed_indexes, runs)
    job_spec["podFailurePolicy"] = _pod_failure_policy()
    job_spec["ttlSecondsAfterFinished"] = k8s.ttl_seconds_after_finished
    if k8s.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = k8s.active_deadline_seconds
    job_spec["template"] = {
        "metadata": {"labels": labels(spec, "trainer")},
        "spec": _pod_spec(spec),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": object_name(spec),
            "namespace": k8s.namespace,
            "labels": meta_labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }


def render_sweep(spec: SweepSpec) -> list[dict[str, Any]]:
    """``[ConfigMap, Job]`` exactly as ``submit`` creates them, in creation order.

    Raises ``BadInput`` when the sweep cannot run as a Job (results not on s3://, a bad
    resource quantity, an object larger than Kubernetes accepts).
    """
    objects = [render_configmap(spec), render_job(spec)]
    check_object_sizes(objects)
    return objects


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML of ``objects``, keys in the order they were built.

    Multi-line strings (the sweep JSON) are written as literal blocks so the file reads
    like the hand-written manifest it replaces; it loads back to the same dicts.
    """
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump_all(
        objects, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=100
    )
