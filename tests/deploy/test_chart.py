"""The Helm chart, rendered and linted by the real Helm SDK (helm-python-sdk, Helm v4).

Rendered for the default values and for every values file in charts/early-repair/ci/, each
object must pass the official Kubernetes schemas (strict) for the versions we target and
the "restricted" Pod Security profile; values.schema.json must reject bad values; and the
names the chart creates must be the ones the trainer Job refers to by default.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
from early_repair_testing.k8s_checks import (
    KUBE_VERSIONS,
    is_kueue,
    load_crds,
    load_documents,
    load_file,
    object_meta_schema,
    pod_spec,
    restricted_violations,
    secret_refs,
    strict_crd_schema,
    validate_strict,
)
from early_repair_testing.paths import REPO

from orchestrator.spec import KubernetesSpec, load_spec

CHART = REPO / "charts" / "early-repair"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "early-repair"
DEFAULTS = KubernetesSpec()
NAMESPACE = DEFAULTS.namespace
# The one finding Helm's linter reports at "info" level, and why we leave it.
ACCEPTED_LINT_INFO = {"icon is recommended"}  # no project icon exists to point at


def ci_values(name: str) -> dict[str, Any]:
    return helm.values_from_yaml((CHART / "ci" / f"{name}-values.yaml").read_text())


def value_cases() -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {"defaults": {}}
    for path in CI_VALUES:
        cases[path.stem.removesuffix("-values")] = helm.values_from_yaml(path.read_text())
    # Older Kueue releases (< 0.15) serve only v1beta1, where the cohort field is `cohort`.
    v1beta1 = copy.deepcopy(cases["gpu-kueue"])
    v1beta1["kueue"]["apiVersion"] = "kueue.x-k8s.io/v1beta1"
    cases["gpu-kueue-v1beta1"] = v1beta1
    return cases


CASES = value_cases()


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(
    chart: helm.Chart,
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> tuple[list[dict[str, Any]], str]:
    """(objects, NOTES.txt) of an install with ``values``."""
    manifests = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    objs: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
        else:
            objs.extend(load_documents(text))
    return objs, notes


def kinds(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def test_chart_metadata() -> None:
    with helm.Chart.load(CHART) as loaded:
        meta = loaded.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "early-repair"
    assert meta["kubeVersion"] == ">=1.33.0-0"
    assert CI_VALUES, "charts/early-repair/ci/ holds the values files CI renders"


def test_chart_packages_and_renders_from_the_archive(chart: helm.Chart, tmp_path: Path) -> None:
    archive = Path(helm.package(CHART, destination=tmp_path))
    assert archive.name == "early-repair-0.1.0.tgz"
    with helm.Chart.load_archive(archive.read_bytes()) as packaged:
        assert render(packaged, CASES["gpu-kueue"]) == render(chart, CASES["gpu-kueue"])
        assert packaged.schema == chart.schema


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_lint_reports_no_errors_or_warnings(case: str, kube: str) -> None:
    report = helm.lint(
        CHART, CASES[case], strict=True, namespace=NAMESPACE, kube_version=f"v{kube}.0"
    )
    assert report["errors"] == [], report
    findings = {m["error"] for m in report["messages"] if m["severity"] >= 2}
    assert not findings, report
    info = {m["error"] for m in report["messages"] if m["severity"] == 1}
    assert info <= ACCEPTED_LINT_INFO, info


@pytest.mark.parametrize("case", CASES)
def test_rendered_objects_pass_official_schemas_strict(chart: helm.Chart, case: str) -> None:
    objs, _ = render(chart, CASES[case])
    assert objs
    problems = [p for obj in objs if not is_kueue(obj) for p in validate_strict(obj)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES)
def test_rendered_pods_meet_restricted_pod_security(chart: helm.Chart, case: str) -> None:
    objs, _ = render(chart, CASES[case])
    problems = [p for obj in objs for p in restricted_violations(obj)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES)
def test_every_object_carries_the_standard_labels(chart: helm.Chart, case: str) -> None:
    objs, _ = render(chart, CASES[case])
    for obj in objs:
        labels = obj["metadata"]["labels"]
        assert labels["helm.sh/chart"] == "early-repair-0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "early-repair"
        for key in ("name", "instance", "version"):
            assert labels[f"app.kubernetes.io/{key}"], (obj["kind"], key)
        if obj["kind"] not in ("Namespace", "ClusterQueue", "ResourceFlavor"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


# --- Kueue --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["gpu-kueue", "gpu-kueue-v1beta1"])
def test_kueue_objects_hang_together(chart: helm.Chart, case: str) -> None:
    values = CASES[case]
    objs, notes = render(chart, values)
    kueue_objs = [o for o in objs if is_kueue(o)]
    api = chart.merge_values(values)["kueue"]["apiVersion"]
    assert {o["apiVersion"] for o in kueue_objs} == {api}
    (flavor,) = kinds(kueue_objs, "ResourceFlavor")
    (cq,) = kinds(kueue_objs, "ClusterQueue")
    (lq,) = kinds(kueue_objs, "LocalQueue")
    assert "namespace" not in flavor["metadata"] and "namespace" not in cq["metadata"]
    assert lq["metadata"]["namespace"] == NAMESPACE
    assert lq["spec"] == {"clusterQueue": cq["metadata"]["name"]}
    assert flavor["spec"]["nodeLabels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    # Only this namespace may use the queue unless the values say otherwise.
    assert cq["spec"]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}
    }
    cohort_field = "cohort" if api.endswith("/v1beta1") else "cohortName"
    assert cq["spec"][cohort_field] == "research"
    assert {"cohort", "cohortName"} - {cohort_field} & set(cq["spec"]) == set()
    (group,) = cq["spec"]["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    (flavor_quota,) = group["flavors"]
    assert flavor_quota["name"] == flavor["metadata"]["name"]
    quota = {r["name"]: r["nominalQuota"] for r in flavor_quota["resources"]}
    assert quota == {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": 8}
    # Kueue kinds have no schema in kubernetes-validate; their metadata is still ordinary
    # ObjectMeta, checked against the official (strict) schema.
    meta_schema = object_meta_schema()
    for obj in kueue_objs:
        jsonschema.Draft202012Validator(meta_schema).validate(obj["metadata"])
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert f"queue: {lq['metadata']['name']}" in notes


KUEUE_CRD_DIR = os.environ.get("KUEUE_CRD_DIR")


@pytest.mark.skipif(
    not KUEUE_CRD_DIR,
    reason="Kueue's CRD schemas are not available offline here: no PyPI package ships them and"
    " kubernetes-validate knows built-in kinds only. Set KUEUE_CRD_DIR to Kueue's"
    " config/components/crd/bases to check the Kueue objects against them.",
)
@pytest.mark.parametrize("case", ["gpu-kueue", "gpu-kueue-v1beta1"])
def test_kueue_objects_pass_kueue_crd_schemas(chart: helm.Chart, case: str) -> None:
    crds = load_crds(Path(KUEUE_CRD_DIR or "."))
    objs, _ = render(chart, CASES[case])
    for obj in filter(is_kueue, objs):
        group, version = obj["apiVersion"].split("/")
        schema = strict_crd_schema(crds[(group, obj["kind"])], version)
        jsonschema.Draft7Validator(schema).validate({**obj, "metadata": {}})


@pytest.mark.skipif(not KUEUE_CRD_DIR, reason="set KUEUE_CRD_DIR (see above)")
def test_values_comment_on_served_versions_matches_kueue() -> None:
    """values.yaml says v1beta2 and the deprecated v1beta1 are both served; Kueue's CRDs
    for every kind the chart renders must say the same."""
    crds = load_crds(Path(KUEUE_CRD_DIR or "."))
    for kind in ("ResourceFlavor", "ClusterQueue", "LocalQueue", "Workload"):
        versions = {v["name"]: v for v in crds[("kueue.x-k8s.io", kind)]["spec"]["versions"]}
        assert versions["v1beta2"]["served"] and versions["v1beta2"]["storage"], kind
        assert versions["v1beta1"]["served"] and versions["v1beta1"].get("deprecated"), kind
    comment = (CHART / "values.yaml").read_text()
    assert "no longer serve" not in comment
    assert "v1beta1 is deprecated since 0.16 but still served" in comment


def test_submitter_role_reads_kueue_workloads(chart: helm.Chart) -> None:
    objs, _ = render(chart)
    (role,) = kinds(objs, "Role")
    assert {
        "apiGroups": ["kueue.x-k8s.io"],
        "resources": ["workloads"],
        "verbs": ["get", "list", "watch"],
    } in role["rules"]


def test_strict_crd_schema_rejects_unknown_fields() -> None:
    # The helper behind the CRD check above, on a minimal CRD of the same shape.
    crd = {
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "localqueues.kueue.x-k8s.io"},
        "spec": {
            "group": "kueue.x-k8s.io",
            "names": {"kind": "LocalQueue"},
            "versions": [
                {
                    "name": "v1beta2",
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"clusterQueue": {"type": "string"}},
                                },
                                "metadata": {"type": "object"},
                            },
                        }
                    },
                }
            ],
        },
    }
    schema = strict_crd_schema(crd, "v1beta2")
    validator = jsonschema.Draft7Validator(schema)
    assert validator.is_valid({"spec": {"clusterQueue": "q"}})
    assert not validator.is_valid({"spec": {"clusterQueu": "q"}})
    with pytest.raises(KeyError):
        strict_crd_schema(crd, "v1beta1")


# --- values.schema.json -------------------------------------------------------------------


BAD_VALUES = {
    "unknown-top-level-key": {"minio_enabled": True},
    "typo-in-nested-key": {"kueue": {"enabeld": True}},
    "secret-without-credentials": {"s3": {"create": True}},
    "minio-short-password": {"s3": {"create": True, "accessKeyId": "abc", "secretAccessKey": "1"}},
    "service-account-not-a-name": {"serviceAccounts": {"trainer": {"name": "Early_Repair"}}},
    "secret-name-empty": {"s3": {"secretName": ""}},
    "queue-name-not-a-label": {"kueue": {"localQueue": {"name": "my.queue"}}},
    "unknown-kueue-api": {"kueue": {"apiVersion": "kueue.x-k8s.io/v1alpha1"}},
    "memory-not-a-quantity": {"kueue": {"quota": {"memory": "lots"}}},
    "negative-gpus": {"kueue": {"quota": {"gpus": -1}}},
    "boolean-as-string": {"minio": {"enabled": "yes"}},
    "unpinned-image": {"minio": {"image": {"tag": "latest"}}},
    "minio-as-root": {"minio": {"runAsUser": 0}},
    "bad-bucket-name": {"minio": {"bucket": "Results_2026"}},
    "weaker-pod-security-typo": {"namespace": {"podSecurity": {"level": "strict"}}},
    "bad-rbac-subject": {"rbac": {"extraSubjects": [{"kind": "Robot", "name": "x"}]}},
}


@pytest.fixture(scope="module")
def schema_validator(chart: helm.Chart) -> jsonschema.Draft7Validator:
    schema = chart.schema
    assert schema is not None, "the chart ships values.schema.json"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("case", BAD_VALUES)
def test_values_schema_rejects_bad_values(
    chart: helm.Chart, schema_validator: jsonschema.Draft7Validator, case: str
) -> None:
    values = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    # An install checks the schema before rendering anything.
    with pytest.raises(helm.HelmError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    # Helm and the JSON Schema reference implementation agree.
    assert not schema_validator.is_valid(chart.merge_values(values))


@pytest.mark.parametrize("case", CASES)
def test_values_schema_accepts_shipped_values(
    chart: helm.Chart, schema_validator: jsonschema.Draft7Validator, case: str
) -> None:
    chart.validate_schema(CASES[case])
    schema_validator.validate(chart.merge_values(CASES[case]))


# --- names agree with the trainer Job --------------------------------------------------


def test_default_names_are_the_spec_defaults(chart: helm.Chart) -> None:
    objs, notes = render(chart)
    accounts = {sa["metadata"]["name"] for sa in kinds(objs, "ServiceAccount")}
    assert DEFAULTS.service_account in accounts
    assert not kinds(objs, "Secret"), "by default the chart refers to a Secret you manage"
    assert f"Secret {DEFAULTS.s3_secret}" in notes
    assert CASES["gpu-kueue"]["kueue"].get("localQueue") is None  # the default name is used
    lq_objs, _ = render(chart, CASES["gpu-kueue"])
    (lq,) = kinds(lq_objs, "LocalQueue")
    assert lq["metadata"]["name"] == "early-repair"


@pytest.mark.parametrize("release", ["early-repair", "team-a", "x"])
def test_release_name_never_changes_the_names_the_job_uses(chart: helm.Chart, release: str) -> None:
    values = {**CASES["kind-minio"], "kueue": {"enabled": True}}
    objs, _ = render(chart, values, release=release)
    assert DEFAULTS.service_account in {
        o["metadata"]["name"] for o in kinds(objs, "ServiceAccount")
    }
    assert [o["metadata"]["name"] for o in kinds(objs, "Secret")] == [DEFAULTS.s3_secret]
    assert [o["metadata"]["name"] for o in kinds(objs, "LocalQueue")] == ["early-repair"]
    assert secret_refs(objs) == {DEFAULTS.s3_secret}


def _quickstart(**kubernetes: Any) -> Any:
    spec = load_spec(REPO / "settings" / "quickstart.yaml")
    data = spec.model_dump(mode="json")
    data["results"] = "s3://early-repair/sweeps"
    data["kubernetes"].update(kubernetes)
    from orchestrator.spec import parse_spec

    return parse_spec(data, "quickstart")


@pytest.mark.parametrize("gpus", [0, 1])
def test_chart_names_agree_with_the_rendered_job(chart: helm.Chart, gpus: int) -> None:
    """The Job's default ServiceAccount, Secret and queue exist in the chart."""
    from orchestrator.backends.kubernetes import manifests

    values = {**CASES["kind-minio"], **CASES["gpu-kueue"]}
    objs, _ = render(chart, values)
    (lq,) = kinds(objs, "LocalQueue")
    (cq,) = kinds(objs, "ClusterQueue")
    spec = _quickstart(queue=lq["metadata"]["name"])
    data = spec.model_dump(mode="json")
    data["resources"]["gpus"] = gpus
    from orchestrator.spec import parse_spec

    spec = parse_spec(data, "quickstart")
    configmap, job = manifests.render_sweep(spec)
    pod = pod_spec(job)
    chart_accounts = {o["metadata"]["name"] for o in kinds(objs, "ServiceAccount")}
    chart_secrets = {o["metadata"]["name"] for o in kinds(objs, "Secret")}
    assert pod["serviceAccountName"] in chart_accounts
    assert secret_refs([job]) and secret_refs([job]) <= chart_secrets
    assert job["metadata"]["namespace"] == configmap["metadata"]["namespace"] == NAMESPACE
    assert lq["metadata"]["namespace"] == job["metadata"]["namespace"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == lq["metadata"]["name"]
    assert "suspend" not in job["spec"]
    # Kueue admits a workload only if the ClusterQueue covers every resource it requests.
    covered = set(cq["spec"]["resourceGroups"][0]["coveredResources"])
    for container in pod["containers"]:
        for kind in ("requests", "limits"):
            assert set(container["resources"].get(kind, {})) <= covered
    # The trainer pod itself is admissible in the chart's restricted namespace.
    assert not restricted_violations(job)


def test_queue_label_only_when_the_spec_names_a_queue() -> None:
    from orchestrator.backends.kubernetes import manifests

    _, job = manifests.render_sweep(_quickstart())
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]


# --- the chart and the plain manifests in k8s/ say the same ------------------------------


def test_chart_matches_the_plain_manifests(chart: helm.Chart) -> None:
    objs, _ = render(chart, CASES["kind-minio"])
    plain = {
        name: load_file(REPO / "k8s" / name)
        for name in ("namespace.yaml", "rbac.yaml", "minio.yaml", "s3-secret.example.yaml")
    }
    (role,) = kinds(objs, "Role")
    (plain_role,) = kinds(plain["rbac.yaml"], "Role")
    assert role["rules"] == plain_role["rules"]
    assert {o["metadata"]["name"] for o in kinds(objs, "ServiceAccount")} == {
        o["metadata"]["name"] for o in kinds(plain["rbac.yaml"], "ServiceAccount")
    }
    (ns,) = kinds(objs, "Namespace")
    (plain_ns,) = plain["namespace.yaml"]

    def pss(o: dict[str, Any]) -> dict[str, str]:
        return {k: v for k, v in o["metadata"]["labels"].items() if k.startswith("pod-security")}

    assert pss(ns) == pss(plain_ns)
    assert ns["metadata"]["name"] == plain_ns["metadata"]["name"]

    def images(items: list[dict[str, Any]]) -> set[str]:
        return {c["image"] for o in items if pod_spec(o) for c in pod_spec(o)["containers"]}

    assert images(objs) == images(plain["minio.yaml"])
    (secret,) = kinds(objs, "Secret")
    (plain_secret,) = plain["s3-secret.example.yaml"]
    assert secret["metadata"]["name"] == plain_secret["metadata"]["name"]
    assert set(secret["stringData"]) == set(plain_secret["stringData"])
    (svc,) = kinds(objs, "Service")
    (plain_svc,) = kinds(plain["minio.yaml"], "Service")
    assert svc["metadata"]["name"] == plain_svc["metadata"]["name"]
    assert svc["spec"]["ports"] == plain_svc["spec"]["ports"]


def test_minio_restarts_when_the_chart_changes_its_credentials(chart: helm.Chart) -> None:
    def checksum(secret_key: str) -> str:
        values = copy.deepcopy(CASES["kind-minio"])
        values["s3"]["secretAccessKey"] = secret_key
        objs, _ = render(chart, values)
        (deployment,) = kinds(objs, "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/s3-secret"]

    assert checksum("first-secret-key") != checksum("second-secret-key")


def test_minio_without_persistence_uses_an_emptydir(chart: helm.Chart) -> None:
    objs, _ = render(chart, CASES["kind-minio"])
    assert not kinds(objs, "PersistentVolumeClaim")
    (deployment,) = kinds(objs, "Deployment")
    data = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "emptyDir": {}}
    values = copy.deepcopy(CASES["kind-minio"])
    values["minio"]["persistence"] = {"enabled": True, "size": "5Gi", "storageClass": "fast"}
    objs, _ = render(chart, values)
    (pvc,) = kinds(objs, "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    # Results outlive `helm uninstall`.
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_secret_is_created_only_with_its_credentials(chart: helm.Chart) -> None:
    objs, _ = render(chart, CASES["kind-minio"])
    (secret,) = kinds(objs, "Secret")
    assert secret["stringData"] == {
        "AWS_ACCESS_KEY_ID": "ci-access-key",
        "AWS_SECRET_ACCESS_KEY": "ci-secret-access-key",
    }
    # Credentials never leak into other objects (env comes by secretKeyRef only).
    others = [o for o in objs if o["kind"] != "Secret"]
    assert "ci-secret-access-key" not in repr(others)


# --- NOTES.txt ----------------------------------------------------------------------------


def test_notes_tell_the_next_command(chart: helm.Chart) -> None:
    _, notes = render(chart)
    assert f"early-repair submit SPEC --namespace {NAMESPACE}" in notes
    assert f"early-repair status SWEEP --namespace {NAMESPACE} --watch" in notes
    assert "kubectl -n early-repair create secret generic early-repair-s3" in notes
    assert "pod-security.kubernetes.io/enforce=restricted" in notes
    assert "differ from the sweep spec's defaults" not in notes
    _, notes = render(chart, CASES["kind-minio"])
    assert "endpoint_url: http://early-repair-minio.early-repair.svc:9000" in notes
    assert "results: s3://early-repair/" in notes
    assert "create secret" not in notes


def test_other_names_move_everything_and_are_called_out(chart: helm.Chart) -> None:
    values = {
        "namespace": {"name": "team-a", "create": True},
        "serviceAccounts": {"trainer": {"name": "team-a-trainer"}},
        "s3": {"secretName": "team-a-s3"},
        "kueue": {"enabled": True},
    }
    objs, notes = render(chart, values, namespace="default")
    namespaced = [
        o for o in objs if o["kind"] not in ("Namespace", "ClusterQueue", "ResourceFlavor")
    ]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"team-a"}
    (ns,) = kinds(objs, "Namespace")
    assert ns["metadata"]["name"] == "team-a"
    (cq,) = kinds(objs, "ClusterQueue")
    assert cq["spec"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "team-a"
    }
    for line in ("namespace: team-a", "service_account: team-a-trainer", "s3_secret: team-a-s3"):
        assert line in notes
    assert "early-repair submit SPEC --namespace team-a" in notes
