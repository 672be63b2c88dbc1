"""Finding a submitted sweep in the cluster: its Job, spec, runs, pods and Kueue admission.

A sweep is found by its label (``manifests.sweep_selector``): the newest Job of that
sweep, the spec from the ConfigMap of the same name (else a run count from the Job's
annotation), the Job's own pods (pods of an older Job of the same sweep, before
``--replace``, are not this sweep's). A Job queued by Kueue waits, suspended, until its
Workload is admitted; the Workload (found by Kueue's ``kueue.x-k8s.io/job-uid`` label
through the CustomObjectsApi, v1beta2 else v1beta1) says why, and ``status`` shows it. A
cluster without Kueue, or a Role that cannot read Workloads, costs that line, not the
status. Progress comes from the store the sweep writes to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.backends.kubernetes.client import KubeClient, api_message, meta
from orchestrator.backends.kubernetes.manifests import (
    INSTANCE_LABEL,
    QUEUE_LABEL,
    RUNS_ANNOTATION,
    SWEEP_KEY,
    sweep_selector,
)
from orchestrator.backends.kubernetes.state import IndexRun, workload_admission
from orchestrator.backends.progress import sweep_progress
from orchestrator.errors import BadInput, EarlyRepairError
from orchestrator.spec import KubernetesSpec, SweepSpec, parse_spec
from orchestrator.store import Store, open_results

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = KubernetesSpec().namespace
KUEUE_GROUP = "kueue.x-k8s.io"
# Served Workload versions, newest first: v1beta2 since Kueue 0.15 (storage since 0.16),
# v1beta1 still served, deprecated, through 0.19 (config/components/crd/bases).
KUEUE_VERSIONS = ("v1beta2", "v1beta1")
# Kueue's label on a Workload naming the UID of the Job it admits.
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


@dataclass
class Sweep:
    """A submitted sweep as found in the cluster."""

    name: str
    namespace: str
    job: dict[str, Any] | None
    spec: SweepSpec | None
    runs: list[IndexRun] = field(default_factory=list)
    admission: str = ""  # where Kueue stands with the Job (state.workload_admission)

    @property
    def job_name(self) -> str | None:
        return (self.job or {}).get("metadata", {}).get("name")


class Sweeps:
    """Reads sweeps, their pods and their progress through ``client``."""

    def __init__(
        self,
        client: KubeClient,
        *,
        store_opener: Callable[[SweepSpec], Store] | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        self.client = client
        self._store_opener = store_opener
        self.endpoint_url = endpoint_url
        self._kueue_version: str | None = None

    def find(self, sweep: str, ns: str) -> Sweep:
        """The sweep's Job (newest, if several), spec and runs; BadInput if there is none."""
        c = self.client
        selector = sweep_selector(sweep)
        jobs = c.list("jobs", c.batch.list_namespaced_job, ns, selector)["items"]
        jobs.sort(key=lambda j: (meta(j).get("creationTimestamp") or "", meta(j)["name"]))
        job = jobs[-1] if jobs else None
        if job is not None:
            cm = c.get("configmap", c.core.read_namespaced_config_map, meta(job)["name"], ns)
        else:
            cms = c.list("configmaps", c.core.list_namespaced_config_map, ns, selector)
            cm = cms["items"][-1] if cms["items"] else None
            if cm is None:
                raise BadInput(
                    f"no sweep {sweep!r} in namespace {ns!r}: check the name and --namespace"
                    " (finished sweeps are removed after ttlSecondsAfterFinished; their"
                    " results stay in the store)"
                )
        spec = None
        if cm is not None:
            try:
                spec = parse_spec(json.loads((cm.get("data") or {})[SWEEP_KEY]), "configmap")
            except (KeyError, ValueError, BadInput):
                log.warning("configmap %s holds no readable sweep", meta(cm).get("name"))
        if spec is not None:
            runs = [IndexRun(r.index, r.name) for r in spec.runs()]
        else:
            annotations = meta(job or {}).get("annotations") or {}
            count = int(annotations.get(RUNS_ANNOTATION, "0") or 0)
            runs = [IndexRun(i, f"index-{i}") for i in range(count)]
        return Sweep(sweep, ns, job, spec, runs)

    def pods(self, found: Sweep) -> tuple[list[dict[str, Any]], str | None]:
        """The Job's pods and the list's resourceVersion (none before the Job exists)."""
        if found.job is None:
            return [], None
        c = self.client
        data = c.list(
            "pods", c.core.list_namespaced_pod, found.namespace, sweep_selector(found.name)
        )
        return own_pods(found, data["items"]), meta(data).get("resourceVersion")

    def refresh_job(self, found: Sweep) -> bool:
        """Re-read the Job and its admission; False when it is gone."""
        name = found.job_name
        if name is None:
            return False
        job = self.client.get("job", self.client.batch.read_namespaced_job, name, found.namespace)
        if job is None:
            return False
        found.job = job
        found.admission = self.admission(found)
        return True

    def admission(self, found: Sweep) -> str:
        """Where Kueue stands with the sweep's Job; ``""`` when Kueue does not queue it."""
        from kubernetes.client.exceptions import ApiException

        job = found.job
        uid = meta(job or {}).get("uid")
        if job is None or not uid or QUEUE_LABEL not in (meta(job).get("labels") or {}):
            return ""
        for version in [self._kueue_version] if self._kueue_version else KUEUE_VERSIONS:
            try:
                data = self.client.request(
                    f"list workloads.{KUEUE_GROUP}/{version}",
                    self.client.custom.list_namespaced_custom_object,
                    KUEUE_GROUP,
                    version,
                    found.namespace,
                    "workloads",
                    label_selector=f"{JOB_UID_LABEL}={uid}",
                )
            except ApiException as e:
                if e.status == 404:
                    continue  # this version is not served (Kueue < 0.15 has v1beta1 only)
                if e.status in (401, 403):
                    return (
                        f"cannot read Kueue Workloads ({e.status}): bind the submitter Role"
                        " from k8s/rbac.yaml (or the chart's) to your user"
                    )
                return f"cannot read Kueue Workloads ({e.status}: {api_message(e)})"
            self._kueue_version = version
            items = sorted(
                data.get("items") or [], key=lambda w: meta(w).get("creationTimestamp") or ""
            )
            return workload_admission(items[-1] if items else None)
        return "this cluster serves no Kueue Workloads (kueue.x-k8s.io): is Kueue installed?"

    def progress(self, found: Sweep) -> dict[str, dict[str, Any]]:
        """Each run's progress as the store shows it (an error note when it cannot)."""
        if found.spec is None:
            return {}
        try:
            store = self.open_store(found.spec)
            return sweep_progress(store, found.spec.runs())
        except (EarlyRepairError, OSError, ImportError) as e:
            note = {"error": f"store not readable: {' '.join(str(e).split())[:120]}"}
            return {r.run: dict(note) for r in found.runs}

    def open_store(self, spec: SweepSpec) -> Store:
        if self._store_opener is not None:
            return self._store_opener(spec)
        return open_results(spec.results, spec.storage, endpoint_url=self.endpoint_url)


def own_pods(found: Sweep, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods of the sweep's current Job: those of an older Job of the same sweep
    (before --replace) are not this sweep's."""
    name = found.job_name
    return [
        p for p in pods if name is None or (meta(p).get("labels") or {}).get(INSTANCE_LABEL) == name
    ]
