"""Offline checks of Kubernetes objects, shared by the chart and plain-manifest tests.

No cluster runs here, so the objects we ship are checked the two ways that do not need one:
against the official OpenAPI schemas of the Kubernetes versions we target
(kubernetes-validate, strict: unknown fields are errors), and against the Pod Security
"restricted" profile the namespace enforces - a pod template that breaks it would be
admitted as a Job and then never get a pod, which only shows on a real cluster.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes_validate import utils as kv

# The oldest Kubernetes the project targets and the newest the installed schemas know.
KUBE_VERSIONS = ("1.33", kv.major_minor(kv.latest_version()))

KUEUE_GROUP = "kueue.x-k8s.io"

# Pod Security Standards, "restricted" profile (https://kubernetes.io/docs/concepts/security/
# pod-security-standards/), the checks that apply to Linux pods, as of policy version v1.33.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
ALLOWED_SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def load_documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``text``."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def load_file(path: Path) -> list[dict[str, Any]]:
    return load_documents(path.read_text())


def is_kueue(obj: dict[str, Any]) -> bool:
    return str(obj.get("apiVersion", "")).startswith(f"{KUEUE_GROUP}/")


def validate_strict(obj: dict[str, Any]) -> list[str]:
    """Problems of ``obj`` against the official schemas of every version in KUBE_VERSIONS."""
    problems = []
    for version in KUBE_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "<root>"
            problems.append(f"{describe(obj)} @ {version}: {where}: {e.message}")
        except kv.SchemaNotFoundError as e:
            problems.append(f"{describe(obj)} @ {version}: {e.message}")
    return problems


def describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('name')}"


def object_meta_schema() -> dict[str, Any]:
    """The newest official ObjectMeta schema (strict, JSON Schema 2020-12), for kinds that
    have no schema here."""
    folder = f"v{kv.latest_version()}-local-strict"
    root = Path(kv.__file__).parent / "kubernetes-json-schema" / folder
    definitions = json.loads((root / "_definitions.json").read_text())
    return {
        "$schema": definitions["$schema"],
        "$defs": definitions["$defs"],
        "$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    }


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec an object runs, or None for objects without pods."""
    if obj.get("kind") == "Pod":
        return obj["spec"]
    if obj.get("kind") in POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]["spec"]
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key) or []


def restricted_violations(obj: dict[str, Any]) -> list[str]:
    """Why ``obj``'s pods would be rejected by a namespace enforcing "restricted"."""
    pod = pod_spec(obj)
    if pod is None:
        return []
    name = describe(obj)
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(f"{name}: {flag} is set")
    for vol in pod.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"{name}: volume {vol['name']} of type {sorted(kinds)} is not allowed")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"{name}: sysctl {sysctl.get('name')} is not allowed")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        out.append(f"{name}: pod seccompProfile is Unconfined")
    if (psc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        out.append(f"{name}: pod appArmorProfile is Unconfined")
    if (psc.get("seLinuxOptions") or {}).get("type") not in ALLOWED_SELINUX_TYPES:
        out.append(f"{name}: pod seLinuxOptions.type is not allowed")
    if psc.get("runAsUser") == 0:
        out.append(f"{name}: pod runAsUser is 0")
    for c in _containers(pod):
        where = f"{name} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}: capabilities must drop ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            out.append(f"{where}: capabilities add {sorted(extra)}")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"{where}: appArmorProfile is Unconfined")
        if (sc.get("seLinuxOptions") or {}).get("type") not in ALLOWED_SELINUX_TYPES:
            out.append(f"{where}: seLinuxOptions.type is not allowed")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{where}: procMount must be Default")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{where}: hostPort {port['hostPort']}")
    return out


def secret_refs(objs: Iterable[dict[str, Any]]) -> set[str]:
    """Names of every Secret the objects' pods read by secretKeyRef, envFrom or volume."""
    names: set[str] = set()
    for obj in objs:
        pod = pod_spec(obj)
        if pod is None:
            continue
        for c in _containers(pod):
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    names.add(ref["name"])
            for src in c.get("envFrom") or []:
                if "secretRef" in src:
                    names.add(src["secretRef"]["name"])
        for vol in pod.get("volumes") or []:
            if "secret" in vol:
                names.add(vol["secret"]["secretName"])
    return names


def strict_crd_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The openAPIV3Schema a CRD serves for ``version``, made strict like
    ``kubectl --validate=strict``: unknown fields are errors wherever the schema lists fields
    and does not ask to preserve unknown ones (the API server would otherwise prune them
    silently)."""
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema = json.loads(json.dumps(served["schema"]["openAPIV3Schema"]))
            break
    else:
        raise KeyError(f"{crd['metadata']['name']} does not serve {version}")

    def tighten(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                tighten(value)
        elif isinstance(node, list):
            for value in node:
                tighten(value)

    tighten(schema)
    return schema


def load_crds(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """CustomResourceDefinitions in ``folder``'s YAML files, by (group, kind)."""
    crds: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(folder.glob("*.y*ml")):
        for doc in load_file(path):
            if doc.get("kind") == "CustomResourceDefinition":
                spec = doc["spec"]
                crds[(spec["group"], spec["names"]["kind"])] = doc
    return crds
