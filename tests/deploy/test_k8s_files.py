"""The plain manifests in k8s/ and the kind end-to-end script, checked without a cluster.

Every object must pass the official schemas (strict) of the Kubernetes versions we target
and the Pod Security "restricted" profile its namespace enforces; names must be the sweep
spec's defaults; the script must parse, pass shellcheck, fail loudly, and drive the CLI
with commands and flags that exist.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from early_repair_testing.k8s_checks import (
    KUBE_VERSIONS,
    load_file,
    pod_spec,
    restricted_violations,
    secret_refs,
    validate_strict,
)
from early_repair_testing.paths import REPO

from orchestrator.spec import KubernetesSpec, load_spec

K8S = REPO / "k8s"
SCRIPT = K8S / "kind-e2e.sh"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kind-config.yaml")
DEFAULTS = KubernetesSpec()

# What the submitter may do - and nothing else; never Secrets. ConfigMaps are created, read,
# listed (idempotent submit, cancel), patched (the new one's ownerReferences) and deleted;
# test_submitter_role_covers_every_call_the_backend_makes derives the calls from the
# backend's code. `status` reads Kueue's Workloads.
SUBMITTER_RULES = [
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["create", "get", "list", "watch", "delete", "patch"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["list", "watch"]},
    {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "verbs": ["create", "get", "list", "delete", "patch"],
    },
    {
        "apiGroups": ["kueue.x-k8s.io"],
        "resources": ["workloads"],
        "verbs": ["get", "list", "watch"],
    },
]


def objects(name: str) -> list[dict[str, Any]]:
    return load_file(K8S / name)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def test_manifests_exist() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"namespace.yaml", "rbac.yaml", "s3-secret.example.yaml", "minio.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_passes_official_schemas_strict(path: Path) -> None:
    objs = load_file(path)
    assert objs, f"{path.name} holds no objects"
    problems = [p for obj in objs for p in validate_strict(obj)]
    assert not problems, "\n".join(problems)


def test_validation_is_strict_enough_to_fail() -> None:
    # The same check must reject a typo'd field and a wrong type, or it proves nothing.
    deployment = copy.deepcopy(by_kind(objects("minio.yaml"), "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    assert validate_strict(deployment)
    job = copy.deepcopy(by_kind(objects("minio.yaml"), "Job")[0])
    job["spec"]["backoffLimit"] = "eight"
    assert validate_strict(job)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_namespaced_objects_live_in_the_default_namespace(path: Path) -> None:
    for obj in load_file(path):
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == DEFAULTS.namespace
        else:
            assert obj["metadata"]["namespace"] == DEFAULTS.namespace, obj["metadata"]["name"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_pod_templates_meet_restricted_pod_security(path: Path) -> None:
    problems = [p for obj in load_file(path) for p in restricted_violations(obj)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda pod, c: c["securityContext"].pop("allowPrivilegeEscalation"),
        lambda pod, c: c["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
        lambda pod, c: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        lambda pod, c: (
            pod["securityContext"].pop("runAsNonRoot"),
            c["securityContext"].pop("runAsNonRoot"),
        ),
        lambda pod, c: pod["securityContext"].pop("seccompProfile"),
        lambda pod, c: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        lambda pod, c: pod.update(hostNetwork=True),
        lambda pod, c: c["securityContext"].update(privileged=True),
        lambda pod, c: c["ports"].append({"containerPort": 80, "hostPort": 80}),
        lambda pod, c: pod["securityContext"].update(runAsUser=0),
    ],
    ids=[
        "escalation",
        "no-drop-all",
        "add-cap",
        "maybe-root",
        "no-seccomp",
        "hostpath",
        "hostnetwork",
        "privileged",
        "hostport",
        "uid0",
    ],
)
def test_restricted_check_catches_violations(mutate) -> None:
    deployment = copy.deepcopy(by_kind(objects("minio.yaml"), "Deployment")[0])
    pod = pod_spec(deployment)
    assert not restricted_violations(deployment)
    mutate(pod, pod["containers"][0])
    assert restricted_violations(deployment)


def test_namespace_enforces_restricted_pod_security() -> None:
    (ns,) = objects("namespace.yaml")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "latest"


def test_rbac_gives_the_submitter_exactly_what_it_needs() -> None:
    objs = objects("rbac.yaml")
    accounts = {sa["metadata"]["name"]: sa for sa in by_kind(objs, "ServiceAccount")}
    assert set(accounts) == {DEFAULTS.service_account, "early-repair-submitter"}
    # Neither identity needs an API token inside a pod.
    assert all(sa["automountServiceAccountToken"] is False for sa in accounts.values())
    (role,) = by_kind(objs, "Role")
    assert role["rules"] == SUBMITTER_RULES
    assert not any("secrets" in rule["resources"] for rule in role["rules"])
    assert not any("*" in rule["verbs"] + rule["resources"] for rule in role["rules"])
    (binding,) = by_kind(objs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "early-repair-submitter", "namespace": "early-repair"}
    ]
    # The trainer gets no Role at all.
    assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")


API_VERBS = {"list": "list", "read": "get", "get": "get", "create": "create", "delete": "delete"}
API_VERBS |= {"patch": "patch", "replace": "update"}
# Client method suffix -> (API group, resource).
RESOURCES = {
    "config_map": ("", "configmaps"),
    "job": ("batch", "jobs"),
    "pod": ("", "pods"),
    "pod_log": ("", "pods/log"),
    "event": ("", "events"),
}
BACKEND = REPO / "orchestrator" / "backends" / "kubernetes"


def backend_api_calls() -> set[tuple[str, str, str]]:
    """(group, verb, resource) of every namespaced API call in the Kubernetes backend's code
    (every module of its package), with `watch` for list calls that are streamed by a
    Watch. Custom objects (the CustomObjectsApi's ``*_namespaced_custom_object``) are
    Kueue's Workloads, the only custom resource the backend reads (checked below)."""
    import ast

    from orchestrator.backends.kubernetes.sweeps import KUEUE_GROUP

    modules = sorted(BACKEND.glob("*.py"))
    assert len(modules) > 5, modules  # the package's modules, not an empty glob
    tree = ast.Module(
        body=[node for m in modules for node in ast.parse(m.read_text()).body], type_ignores=[]
    )
    pattern = re.compile(rf"^({'|'.join(API_VERBS)})_namespaced_(\w+)$")
    resources = {**RESOURCES, "custom_object": (KUEUE_GROUP, "workloads")}
    calls = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (m := pattern.match(node.attr)):
            group, resource = resources[m.group(2)]
            calls.add((group, API_VERBS[m.group(1)], resource))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "stream"
            and node.args
            and isinstance(node.args[0], ast.Attribute)
            and (m := pattern.match(node.args[0].attr))
        ):
            group, resource = resources[m.group(2)]
            calls.add((group, "watch", resource))
    plurals = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in ("workloads", "clusterqueues")
    }
    assert plurals == {"workloads"}, "the backend reads a custom resource the test does not map"
    return calls


@pytest.mark.parametrize("source", ["k8s/rbac.yaml", "chart"])
def test_submitter_role_covers_every_call_the_backend_makes(source: str) -> None:
    calls = backend_api_calls()
    assert ("batch", "create", "jobs") in calls and ("", "get", "pods/log") in calls
    assert ("kueue.x-k8s.io", "list", "workloads") in calls  # the parse works
    if source == "chart":
        import helm_python as helm

        with helm.Chart.load(REPO / "charts" / "early-repair") as chart:
            manifests = chart.render({}, name="early-repair", namespace="early-repair")
        objs = [
            o
            for path, text in manifests.items()
            if path.endswith(".yaml")
            for o in yaml.safe_load_all(text)
            if o
        ]
        (role,) = by_kind(objs, "Role")
    else:
        (role,) = by_kind(objects("rbac.yaml"), "Role")
    granted = {
        (group, verb, resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert calls <= granted, f"the submitter Role lacks {sorted(calls - granted)}"


def test_secret_template_matches_what_pods_read() -> None:
    (secret,) = objects("s3-secret.example.yaml")
    assert secret["metadata"]["name"] == DEFAULTS.s3_secret
    assert secret["type"] == "Opaque"
    data = secret["stringData"]
    assert set(data) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # A template: placeholders only, never something that looks like a real key.
    assert all(v.startswith("REPLACE_WITH_") for v in data.values())
    assert "data" not in secret


def test_minio_is_wired_to_the_secret_and_its_service() -> None:
    objs = objects("minio.yaml")
    (deployment,) = by_kind(objs, "Deployment")
    (service,) = by_kind(objs, "Service")
    (pvc,) = by_kind(objs, "PersistentVolumeClaim")
    (job,) = by_kind(objs, "Job")
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec(deployment)["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [pvc["metadata"]["name"]]
    assert secret_refs(objs) == {DEFAULTS.s3_secret}
    # The bucket job reaches MinIO through the Service, with credentials from env vars that
    # are defined before the variable that refers to them (Kubernetes expands $(VAR) only
    # for variables defined earlier in the list).
    env = pod_spec(job)["containers"][0]["env"]
    names = [e["name"] for e in env]
    mc_host = next(e["value"] for e in env if e["name"] == "MC_HOST_minio")
    for ref in re.findall(r"\$\((\w+)\)", mc_host):
        assert ref in names[: names.index("MC_HOST_minio")]
    assert f"@{service['metadata']['name']}:9000" in mc_host
    args = pod_spec(job)["containers"][0]["args"]
    assert args[-1] == "minio/early-repair" and "--ignore-existing" in args


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_images_are_pinned(path: Path) -> None:
    for obj in load_file(path):
        pod = pod_spec(obj)
        for c in (pod or {}).get("containers", []):
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest", image
            assert re.fullmatch(r"RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z", tag), image


def test_kind_config_targets_the_oldest_supported_kubernetes() -> None:
    config = yaml.safe_load((K8S / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    (node,) = config["nodes"]
    assert node["role"] == "control-plane"
    repo, _, tag = node["image"].partition(":")
    assert repo == "kindest/node"
    major, minor = (int(x) for x in re.match(r"v(\d+)\.(\d+)\.\d+", tag).groups())
    assert f"{major}.{minor}" == KUBE_VERSIONS[0]


# --- kind-e2e.sh -------------------------------------------------------------------------


def test_kind_e2e_script_parses() -> None:
    assert os.access(SCRIPT, os.X_OK), "k8s/kind-e2e.sh must be executable"
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    # Fails at the first broken step, and says which.
    assert re.search(r"^set -E?euo pipefail$", text, re.M)
    assert re.search(r"^trap 'on_error \$LINENO' ERR$", text, re.M)


def test_kind_e2e_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck missing in CI: apt-get install -y shellcheck")
        pytest.skip("shellcheck not installed (Debian package `shellcheck`)")
    result = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=style", str(SCRIPT)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kind_e2e_script_refuses_to_start_without_its_tools(tmp_path: Path) -> None:
    # An empty PATH: nothing of docker, kind, kubectl or early-repair is there.
    result = subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(SCRIPT)],
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode == 127
    assert "missing on PATH: docker kind kubectl early-repair" in result.stderr
    assert not list(tmp_path.iterdir()), "it must not create anything before the check"


def _script_spec_writer() -> str:
    """The Python program kind-e2e.sh runs to write its temporary spec."""
    match = re.search(r"<<'PY'\n(.*?)\nPY\n", SCRIPT.read_text(), re.S)
    assert match, "kind-e2e.sh writes its spec with a quoted 'PY' heredoc"
    return match.group(1)


def test_kind_e2e_spec_is_a_cpu_sweep_on_minio(tmp_path: Path) -> None:
    """Run the script's own spec writer, then check what the cluster would get."""
    import sys

    out = tmp_path / "spec.yaml"
    env = {
        "E2E_SWEEP": "quickstart-e2e-20260101000000-42",
        "E2E_IMAGE": "early-repair-trainer:e2e-20260101000000-42",
        "E2E_RESULTS": "s3://early-repair/e2e-20260101000000-42",
        "E2E_NAMESPACE": "early-repair",
        "E2E_ENDPOINT": "http://early-repair-minio.early-repair.svc:9000",
    }
    subprocess.run(
        [sys.executable, "-", str(REPO / "settings" / "quickstart.yaml"), str(out)],
        input=_script_spec_writer(),
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    spec = load_spec(out)
    quickstart = load_spec(REPO / "settings" / "quickstart.yaml")
    assert spec.runs() and len(spec.runs()) == len(quickstart.runs())
    assert spec.resources.gpus == 0
    assert spec.image == env["E2E_IMAGE"] and spec.results == env["E2E_RESULTS"]
    assert spec.kubernetes.image_pull_policy == "Never"
    # The endpoint is the MinIO Service of k8s/minio.yaml, in its namespace.
    (service,) = by_kind(objects("minio.yaml"), "Service")
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert spec.storage.endpoint_url == f"http://{host}:{service['spec']['ports'][0]['port']}"

    from orchestrator.backends.kubernetes import manifests

    objs = manifests.render_sweep(spec)
    problems = [p for obj in objs for p in validate_strict(obj) + restricted_violations(obj)]
    assert not problems, "\n".join(problems)
    (job,) = by_kind(objs, "Job")
    container = pod_spec(job)["containers"][0]
    assert container["image"] == env["E2E_IMAGE"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert secret_refs([job]) == {DEFAULTS.s3_secret}


def _cli_calls() -> list[tuple[str, set[str]]]:
    """(command, --flags) of every `"$EARLY_REPAIR" <command> ...` line in the script."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    calls = []
    for line in text.splitlines():
        for match in re.finditer(r'"\$EARLY_REPAIR" ([a-z-]+)([^|>]*)', line):
            calls.append((match.group(1), set(re.findall(r"(--[a-z][a-z-]*)", match.group(2)))))
    return calls


def cli_problems(calls: list[tuple[str, set[str]]]) -> list[str]:
    """What in ``calls`` (command, --flags) the CLI does not have: a command, or a flag."""
    import typer

    from orchestrator.cli import app

    group = typer.main.get_command(app)
    problems = []
    for command, flags in calls:
        if command not in group.commands:
            problems.append(f"early-repair {command}: no such command")
            continue
        options = {opt for p in group.commands[command].params for opt in p.opts}
        if flags - options:
            problems.append(f"early-repair {command}: unknown {sorted(flags - options)}")
    return problems


def test_kind_e2e_script_uses_commands_and_flags_the_cli_has() -> None:
    calls = _cli_calls()
    assert {c for c, _ in calls} >= {"plan", "submit", "status", "logs", "aggregate"}
    assert cli_problems(calls) == []


def test_a_command_or_flag_the_cli_lacks_fails_the_script_check() -> None:
    calls = [("plan", {"--out"}), ("launch", {"--now"}), ("status", {"--watch", "--nope"})]
    assert cli_problems(calls) == [
        "early-repair launch: no such command",
        "early-repair status: unknown ['--nope']",
    ]
