"""The Kubernetes objects of a sweep: official schemas, Pod Security, semantics, golden files.

Golden files pin the exact output of ``render_sweep`` (what ``plan --out`` writes and
``submit`` sends) for tests/golden/sweep.yaml, a frozen copy of the quickstart. After an
intended change (to manifests.py, or a spec field or default, which changes the spec hash
and so the names), regenerate them and review the diff:

    EARLY_REPAIR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest \
        tests/orchestrator/backends/kubernetes/test_manifests.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from early_repair_testing.k8s_checks import KUBE_VERSIONS, restricted_violations, validate_strict
from early_repair_testing.paths import GOLDEN, QUICKSTART

from orchestrator.backends.kubernetes.manifests import (
    GPU_RESOURCE,
    INDEX_LABEL,
    MIN_PARALLELISM_ANNOTATION,
    QUEUE_LABEL,
    SPEC_HASH_ANNOTATION,
    SWEEP_FILE,
    SWEEP_LABEL,
    label_value,
    object_name,
    render_sweep,
    to_yaml,
    with_namespace,
)
from orchestrator.errors import EXIT_BAD_INPUT, EXIT_GUARD_TIMEOUT, EXIT_TRANSIENT, BadInput
from orchestrator.spec import KubernetesSpec, SweepSpec, load_spec, parse_spec

UPDATE = os.environ.get("EARLY_REPAIR_UPDATE_GOLDEN") == "1"

RESULTS = "s3://early-repair/results"

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def quickstart(_base: Path = QUICKSTART, **changes: Any) -> SweepSpec:
    """The quickstart with results on S3 and ``changes`` (``a__b=v`` sets field a.b)."""
    spec = load_spec(_base, results=RESULTS)
    data = spec.model_dump(mode="json")
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = data
        for part in path:
            node = node[part]
        node[last] = value
    return parse_spec(data, "test")


GPU = {
    "resources__gpus": 2,
    "resources__cpu": "8",
    "resources__memory": "64Gi",
    "training__device": "cuda",
    "image": "registry.example.com/early-repair/trainer:0.1.0-cuda",
    "storage__endpoint_url": "http://minio.early-repair.svc:9000",
    "storage__region": "us-east-1",
    "kubernetes__parallelism": 2,
    "kubernetes__max_failed_indexes": 1,
    "kubernetes__active_deadline_seconds": 86400,
    "kubernetes__node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "kubernetes__runtime_class_name": "nvidia",
    "kubernetes__priority_class_name": "research-high",
    "kubernetes__tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    ],
    "kubernetes__affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["40000"]}
                        ]
                    }
                ]
            }
        }
    },
    "kubernetes__image_pull_secrets": ["registry-creds"],
}

CASES: dict[str, dict[str, Any]] = {
    "quickstart": {},
    "gpu": GPU,
    "gpu-queue": {**GPU, "kubernetes__queue": "early-repair"},
    "gpu-plain": {"resources__gpus": 1, "training__device": "cuda"},
}


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def trainer(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(job)["containers"]
    return container


def env(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in trainer(job)["env"]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_objects_pass_the_official_schemas_strictly(case: str) -> None:
    objects = render_sweep(quickstart(**CASES[case]))
    assert [o["kind"] for o in objects] == ["ConfigMap", "Job"]
    assert KUBE_VERSIONS[0] == "1.33" and KUBE_VERSIONS[-1] >= "1.37"
    problems = [p for obj in objects for p in validate_strict(obj)]
    assert problems == []


def test_strict_validation_catches_a_misspelt_field() -> None:
    # The check above must be able to fail: an unknown field is an error in strict mode.
    job = render_sweep(quickstart())[1]
    job["spec"]["backoffLimitPerIndexx"] = 1
    assert any("backoffLimitPerIndexx" in p for p in validate_strict(job))


@pytest.mark.parametrize("case", sorted(CASES))
def test_pods_meet_the_restricted_pod_security_profile(case: str) -> None:
    job = render_sweep(quickstart(**CASES[case]))[1]
    assert restricted_violations(job) == []
    pod = pod_spec(job)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sc = trainer(job)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in trainer(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/etc/early-repair", "/tmp", "/home/trainer", "/dev/shm"}
    assert mounts["/etc/early-repair"]["readOnly"] is True
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    for path in ("/tmp", "/home/trainer"):
        assert volumes[mounts[path]["name"]] == {"name": mounts[path]["name"], "emptyDir": {}}
    assert env(job)["HOME"]["value"] == "/home/trainer"
    assert env(job)["XDG_CACHE_HOME"]["value"].startswith("/home/trainer/")
    assert env(job)["MPLCONFIGDIR"]["value"].startswith("/home/trainer/")
    assert "TORCH_HOME" not in env(job)  # the image's read-only baked weights stay visible


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_the_golden_file(case: str) -> None:
    spec = quickstart(GOLDEN / "sweep.yaml", **CASES[case])
    text = to_yaml(render_sweep(spec))
    golden = GOLDEN / f"manifests-{case}.yaml"
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"{golden} missing: run with EARLY_REPAIR_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{golden.name} differs (regenerate if intended)"
    assert list(yaml.safe_load_all(text)) == render_sweep(spec)


def test_indexed_job_runs_one_index_per_run(tmp_path: Path) -> None:
    spec = quickstart()
    configmap, job = render_sweep(spec)
    js = job["spec"]
    assert js["completionMode"] == "Indexed"
    assert js["completions"] == len(spec.runs()) == 3
    assert js["parallelism"] == 3  # default: every run at once
    assert "suspend" not in js
    assert js["backoffLimitPerIndex"] == KubernetesSpec().backoff_limit_per_index
    assert "maxFailedIndexes" not in js and "activeDeadlineSeconds" not in js
    assert js["ttlSecondsAfterFinished"] == 86400
    assert pod_spec(job)["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert trainer(job)["command"] == ["early-repair", "trainer", "--sweep", SWEEP_FILE]
    assert trainer(job)["image"] == spec.image
    assert "JOB_COMPLETION_INDEX" not in env(job)  # the Job controller sets it per pod
    # The mounted file is the whole spec: the trainer reads back exactly this sweep.
    volume = next(v for v in pod_spec(job)["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    data = json.loads(configmap["data"][Path(SWEEP_FILE).name])
    assert parse_spec(data, "configmap") == spec
    assert parse_spec(data, "configmap").spec_hash() == spec.spec_hash()
    mounted = tmp_path / "sweep.json"  # read as the trainer reads --sweep
    mounted.write_text(configmap["data"]["sweep.json"])
    assert load_spec(mounted) == spec
    assert configmap["immutable"] is True


def test_parallelism_and_failure_limits_come_from_the_spec() -> None:
    job = render_sweep(quickstart(**GPU))[1]
    js = job["spec"]
    assert js["parallelism"] == 2
    assert js["maxFailedIndexes"] == 1
    assert js["activeDeadlineSeconds"] == 86400


def test_pod_failure_policy_ignores_disruptions_fails_bad_input_retries_transient() -> None:
    rules = render_sweep(quickstart())[1]["spec"]["podFailurePolicy"]["rules"]
    disruption = [r for r in rules if "onPodConditions" in r]
    assert disruption == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]

    def action_for(code: int) -> str:
        # First matching rule wins, as in the Job controller; no match = counted failure.
        for rule in rules:
            req = rule.get("onExitCodes")
            if req and req["containerName"] == "trainer" and code in req["values"]:
                assert req["operator"] == "In"
                return rule["action"]
        return "Count"

    assert action_for(EXIT_BAD_INPUT) == "FailIndex"
    assert action_for(EXIT_GUARD_TIMEOUT) == "Count"  # retried within backoffLimitPerIndex
    # A store that failed after its retries (MinIO restarting) is retried, not given up on.
    assert action_for(EXIT_TRANSIENT) == "Count"
    assert action_for(1) == "Count"
    # Both retriable codes are explicit rules, so a later rule for "everything else" (or a
    # change of the default action) cannot turn them into FailIndex.
    explicit = [r["onExitCodes"]["values"] for r in rules if r["action"] == "Count"]
    assert explicit == [[EXIT_TRANSIENT], [EXIT_GUARD_TIMEOUT]]
    assert len({EXIT_BAD_INPUT, EXIT_TRANSIENT, EXIT_GUARD_TIMEOUT, 0, 1}) == 5


def min_parallelism(job: dict[str, Any]) -> int | None:
    raw = job["metadata"]["annotations"].get(MIN_PARALLELISM_ANNOTATION)
    return None if raw is None else int(raw)


def test_a_queued_sweep_may_be_admitted_in_parts() -> None:
    queued = {"kubernetes__queue": "early-repair"}
    # Three runs at once wanted; Kueue may start with as few as one (the default).
    job = render_sweep(quickstart(**queued))[1]
    assert job["spec"]["parallelism"] == 3 and job["spec"]["completions"] == 3
    assert min_parallelism(job) == 1
    spec = quickstart(**queued, kubernetes__min_parallelism=2)
    configmap, job = render_sweep(spec)
    assert min_parallelism(job) == 2
    # Set, it is part of the spec (hash, names, the mounted sweep.json); unset, it is left
    # out of the dump, so sweeps that never set it keep their hash and object names.
    assert parse_spec(json.loads(configmap["data"]["sweep.json"]), "cm") == spec
    assert spec.spec_hash() != quickstart(**queued).spec_hash()
    assert "min_parallelism" not in quickstart(**queued).model_dump()["kubernetes"]
    # Kueue's webhook (validatePartialAdmissionCreate) accepts only 0 < min < pods count,
    # the pods count being min(parallelism, completions); anything else is left out.
    for changes in (
        {"kubernetes__min_parallelism": 3},  # = parallelism: all or nothing
        {"kubernetes__parallelism": 1},
        {"seeds": [1]},  # one run
        {"kubernetes__min_parallelism": 5},  # more than the runs: all or nothing
    ):
        job = render_sweep(quickstart(**queued, **changes))[1]
        assert MIN_PARALLELISM_ANNOTATION not in job["metadata"]["annotations"], changes
    for case in CASES.values():
        job = render_sweep(quickstart(**case))[1]
        pods = min(job["spec"]["parallelism"], job["spec"]["completions"])
        value = min_parallelism(job)
        assert value is None or 0 < value < pods
        assert (value is not None) == (QUEUE_LABEL in job["metadata"]["labels"] and pods > 1)
    # Without Kueue nothing would read it.
    assert min_parallelism(render_sweep(quickstart())[1]) is None


def test_min_parallelism_is_checked_in_the_spec() -> None:
    with pytest.raises(BadInput, match=r"^test: kubernetes: min_parallelism only applies to"):
        quickstart(kubernetes__min_parallelism=2)
    with pytest.raises(BadInput, match=r"min_parallelism \(3\) is larger than parallelism \(2\)"):
        quickstart(kubernetes__queue="q", kubernetes__parallelism=2, kubernetes__min_parallelism=3)
    with pytest.raises(BadInput, match=r"kubernetes\.min_parallelism: Input should be greater"):
        quickstart(kubernetes__queue="q", kubernetes__min_parallelism=0)


def test_gpus_become_limits_with_the_gpu_toleration() -> None:
    job = render_sweep(quickstart(**GPU))[1]
    res = trainer(job)["resources"]
    assert res["limits"][GPU_RESOURCE] == "2"
    assert GPU_RESOURCE not in res["requests"]  # extended resources: request = limit
    assert res["requests"] == {"cpu": "8", "memory": "64Gi"}
    assert res["limits"]["memory"] == "64Gi" and "cpu" not in res["limits"]
    pod = pod_spec(job)
    assert pod["tolerations"][0] == {
        "key": GPU_RESOURCE,
        "operator": "Exists",
        "effect": "NoSchedule",
    }
    assert pod["tolerations"][1] == GPU["kubernetes__tolerations"][0]
    assert pod["nodeSelector"] == GPU["kubernetes__node_selector"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["priorityClassName"] == "research-high"
    assert pod["affinity"] == GPU["kubernetes__affinity"]
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert "NVIDIA_VISIBLE_DEVICES" not in env(job)  # the device plugin sets it
    assert env(job)["AWS_ENDPOINT_URL"]["value"] == GPU["storage__endpoint_url"]
    assert env(job)["AWS_REGION"]["value"] == "us-east-1"


def test_zero_gpus_is_a_cpu_pod_that_sees_no_gpu() -> None:
    job = render_sweep(quickstart())[1]
    res = trainer(job)["resources"]
    assert GPU_RESOURCE not in res["limits"]
    assert res["requests"] == {"cpu": "2", "memory": "8Gi"}
    assert env(job)["NVIDIA_VISIBLE_DEVICES"] == {"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"}
    pod = pod_spec(job)
    for absent in ("tolerations", "nodeSelector", "runtimeClassName", "priorityClassName"):
        assert absent not in pod
    assert "AWS_ENDPOINT_URL" not in env(job)


def test_s3_credentials_only_by_secret_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    planted = "s3cr3t-value-that-must-never-appear-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", planted)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTEDNEVERSHOWN")
    for case in CASES.values():
        objects = render_sweep(quickstart(**case))
        text = to_yaml(objects)
        assert planted not in text and "AKIAPLANTEDNEVERSHOWN" not in text
        assert [o["kind"] for o in objects] == ["ConfigMap", "Job"]  # no Secret is rendered
        job = objects[1]
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            entry = env(job)[name]
            assert "value" not in entry
            assert entry["valueFrom"] == {
                "secretKeyRef": {"name": "early-repair-s3", "key": name, "optional": False}
            }
        assert "envFrom" not in trainer(job)
        # Nothing else in the pod's environment may look like a credential.
        for e in trainer(job)["env"]:
            if re.search(r"SECRET|TOKEN|PASSWORD|KEY", e["name"]):
                assert "secretKeyRef" in e.get("valueFrom", {}), e["name"]


def test_defaults_match_the_shared_identities() -> None:
    # The Helm chart and k8s/rbac.yaml create these names; the Job must use the same.
    job = render_sweep(quickstart())[1]
    assert job["metadata"]["namespace"] == "early-repair"
    assert pod_spec(job)["serviceAccountName"] == "early-repair-trainer"
    assert env(job)["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        "early-repair-s3"
    )


def test_labels_annotations_and_kueue() -> None:
    spec = quickstart()
    configmap, job = render_sweep(spec)
    for obj in (configmap, job, job["spec"]["template"]):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "early-repair"
        assert labels["app.kubernetes.io/instance"] == object_name(spec)
        assert labels["app.kubernetes.io/managed-by"] == "early-repair"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels[SWEEP_LABEL] == "quickstart"
        assert labels["app.kubernetes.io/component"] in ("trainer", "sweep-config")
        for key, value in labels.items():
            assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)
        assert QUEUE_LABEL not in labels
    for obj in (configmap, job):
        assert obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == spec.spec_hash()
    # The run of a pod is its index: the controller's label, not one of ours.
    assert INDEX_LABEL not in job["spec"]["template"]["metadata"]["labels"]

    queued = render_sweep(quickstart(**CASES["gpu-queue"]))[1]
    assert queued["metadata"]["labels"][QUEUE_LABEL] == "early-repair"
    assert QUEUE_LABEL not in queued["spec"]["template"]["metadata"]["labels"]
    assert "suspend" not in queued["spec"]  # Kueue suspends and admits; we never do


def test_names_are_deterministic_dns_labels_with_room_for_the_index() -> None:
    spec = quickstart()
    assert object_name(spec) == object_name(quickstart())
    assert re.fullmatch(r"quickstart-[0-9a-f]{8}", object_name(spec))
    assert object_name(spec) == f"quickstart-{spec.spec_hash()[:8]}"
    changed = quickstart(seeds=[1, 2])
    assert object_name(changed) != object_name(spec)
    longest = quickstart(name="x" * 40)
    name = object_name(longest)
    assert len(name) == 49 and DNS1123_LABEL.match(name)
    # Indexed Job pods are <job>-<index>-<5 random> with host name <job>-<index>.
    assert len(f"{name}-{9_999_999}") <= 63
    for obj in render_sweep(longest):
        assert obj["metadata"]["name"] == name


def test_label_value_sanitises_and_truncates() -> None:
    assert label_value("0.1.0+cuda/12") == "0.1.0-cuda-12"
    assert label_value("-" + "a" * 80 + "-") == "a" * 63
    assert label_value("v1.2.3-") == "v1.2.3"


def test_results_must_be_object_storage() -> None:
    spec = load_spec(QUICKSTART)  # results: the local folder default
    with pytest.raises(BadInput, match=r"^results: .*set results to s3://"):
        render_sweep(spec)
    with pytest.raises(BadInput, match="s3://"):
        render_sweep(quickstart(results="file:///data/results"))


def test_bad_quantities_are_bad_input() -> None:
    with pytest.raises(BadInput, match=r"^resources\.cpu: '2 cores' is not a Kubernetes"):
        render_sweep(quickstart(resources__cpu="2 cores"))
    with pytest.raises(BadInput, match=r"^resources\.memory: "):
        render_sweep(quickstart(resources__memory="8GB RAM"))
    for ok in ("500m", "0.5", "8Gi", "1e3", "512M"):
        render_sweep(quickstart(resources__cpu=ok))


def test_namespace_override_is_validated() -> None:
    spec = with_namespace(quickstart(), "team-a")
    assert spec.kubernetes.namespace == "team-a"
    assert all(o["metadata"]["namespace"] == "team-a" for o in render_sweep(spec))
    with pytest.raises(BadInput, match=r"^--namespace: 'Team_A' is not a valid namespace"):
        with_namespace(quickstart(), "Team_A")
    assert with_namespace(spec, None) is spec


def test_plan_out_writes_exactly_the_rendered_objects(cli, tmp_path: Path) -> None:
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(QUICKSTART.read_text() + f"results: {RESULTS}\n")
    out = tmp_path / "manifests" / "quickstart.yaml"
    r = cli("plan", spec_file, "--out", out)
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    spec = load_spec(spec_file)
    assert list(yaml.safe_load_all(out.read_text())) == render_sweep(spec)
    assert doc["objects"] == [f"configmap/{object_name(spec)}", f"job/{object_name(spec)}"]
    assert [run["name"] for run in doc["runs"]] == [run.name for run in spec.runs()]
    assert doc["spec_hash"] == spec.spec_hash()


def test_plan_without_out_needs_no_object_storage(cli) -> None:
    r = cli("plan", QUICKSTART)
    assert r.code == 0, r.err
    runs = json.loads(r.out)["runs"]
    assert [(x["index"], x["seed"]) for x in runs] == [(0, 1024), (1, 2048), (2, 4096)]
    assert "digits-small-cnn-s1024" in r.err  # the human table goes to stderr


def test_plan_out_with_local_results_is_bad_input(cli, tmp_path: Path) -> None:
    out = tmp_path / "m.yaml"
    r = cli("plan", QUICKSTART, "--out", out)
    assert r.code == 2
    assert r.err.startswith("error: results: ") and "s3://" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not out.exists()
