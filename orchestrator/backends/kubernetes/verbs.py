"""Submit, status and cancel of a sweep on the cluster: what changes, and doing it.

- **Idempotent submit.** Object names are ``<sweep>-<spec hash>``. Objects of the sweep with
  the same hash are reported unchanged and left alone; objects with another hash are an
  error unless ``replace`` (then they are deleted first). A create answered 409 after an
  earlier try of the same create timed out or failed counts as created once the existing
  object's hash is checked. ``dry_run`` sends every create with server-side
  ``dryRun=All`` and deletes nothing. After the Job exists the ConfigMap gets the Job as
  owner, so the Job's ``ttlSecondsAfterFinished`` clean-up removes it too.
- **Cancel** deletes the sweep's Jobs (their pods with them) and ConfigMaps, never results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from orchestrator.backends.base import RunStatus, SubmitResult
from orchestrator.backends.kubernetes.changes import (
    Changes,
    hash_of,
    kind_of,
    name_of,
    plan_changes,
    ref,
)
from orchestrator.backends.kubernetes.client import KubeClient, Tries, api_message, meta
from orchestrator.backends.kubernetes.manifests import sweep_selector
from orchestrator.backends.kubernetes.plan import KubernetesPlan
from orchestrator.backends.kubernetes.state import run_states
from orchestrator.backends.kubernetes.sweeps import Sweeps
from orchestrator.errors import BadInput

log = logging.getLogger(__name__)


def submit(
    client: KubeClient, plan: KubernetesPlan, *, dry_run: bool = False, replace: bool = False
) -> SubmitResult:
    """Create the plan's objects: list what exists, decide (pure), then apply."""
    spec, c = plan.spec, client
    ns, digest = plan.where, spec.spec_hash()
    desired = plan.objects
    selector = sweep_selector(spec.name)
    found = [
        {"kind": kind, **obj}
        for kind, lister in (
            ("ConfigMap", c.core.list_namespaced_config_map),
            ("Job", c.batch.list_namespaced_job),
        )
        for obj in c.list(f"{kind.lower()}s", lister, ns, selector)["items"]
    ]
    changes = plan_changes(
        desired, found, digest=digest, sweep=spec.name, namespace=ns, replace=replace
    )
    return apply(client, changes, spec.name, ns, digest, dry_run=dry_run)


def apply(
    client: KubeClient,
    changes: Changes,
    sweep: str,
    ns: str,
    digest: str,
    *,
    dry_run: bool = False,
) -> SubmitResult:
    """Carry out ``plan_changes``' decision; a dry run asks the server to check only."""
    c = client
    result = SubmitResult(sweep=sweep, dry_run=dry_run)
    for obj in changes.delete:
        if not dry_run:
            delete(client, kind_of(obj), name_of(obj), ns, "Foreground")
        result.replaced.append(ref(obj))
    result.unchanged.extend(ref(o) for o in changes.unchanged)
    creators = {
        "configmap": (c.core.create_namespaced_config_map, c.core.read_namespaced_config_map),
        "job": (c.batch.create_namespaced_job, c.batch.read_namespaced_job),
    }
    job: dict[str, Any] | None = None
    for obj in changes.create:
        create, reader = creators[kind_of(obj)]
        outcome, body = _create(client, obj, create, reader, ns, digest, dry_run)
        (result.created if outcome == "created" else result.unchanged).append(ref(obj))
        if kind_of(obj) == "job":
            job = body
    if not dry_run:
        job = job or next(o for o in changes.unchanged if kind_of(o) == "job")
        _own_configmap(client, ns, name_of(job), job)
    return result


def _create(
    client: KubeClient,
    obj: dict[str, Any],
    create: Callable[..., Any],
    reader: Callable[..., Any],
    ns: str,
    digest: str,
    dry_run: bool,
) -> tuple[str, dict[str, Any]]:
    from kubernetes.client.exceptions import ApiException

    kind, name = kind_of(obj), obj["metadata"]["name"]
    what = f"create {kind}/{name}" + (" (dry run)" if dry_run else "")
    tries = Tries()
    extra = {"dry_run": "All"} if dry_run else {}
    try:
        return "created", client.request(what, create, ns, obj, tries=tries, **extra)
    except ApiException as e:
        if e.status == 404:
            raise BadInput(
                f"namespace {ns!r} does not exist: create it (kubectl apply -f"
                " k8s/namespace.yaml) or pass --namespace"
            ) from e
        if e.status != 409:
            raise client.fail(e, what, ns) from e
    # 409: it exists. Ours if it carries our hash; then an earlier try (timed out or
    # answered 5xx) created it, so it counts as created, else someone else just did.
    existing = client.get(kind, reader, name, ns)
    if existing is None or hash_of(existing) != digest:
        raise BadInput(
            f"{kind}/{name} already exists in namespace {ns!r} and was not made from this"
            " spec: delete it or rename the sweep"
        )
    return ("created" if tries.count > 1 else "unchanged"), existing


def _own_configmap(client: KubeClient, ns: str, name: str, job: dict[str, Any]) -> None:
    """Make the Job the ConfigMap's owner so the Job's TTL clean-up removes it too."""
    from kubernetes.client.exceptions import ApiException

    uid = meta(job).get("uid")
    if not uid:
        return
    cm = client.get("configmap", client.core.read_namespaced_config_map, name, ns)
    if cm is None or any(r.get("uid") == uid for r in meta(cm).get("ownerReferences") or []):
        return
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name,
        "uid": uid,
        "blockOwnerDeletion": False,
    }
    try:
        client.request(
            f"patch configmap/{name}",
            client.core.patch_namespaced_config_map,
            name,
            ns,
            {"metadata": {"ownerReferences": [owner]}},
            _content_type="application/merge-patch+json",
        )
    except ApiException as e:
        # Not fatal: the sweep runs; `cancel` still removes the ConfigMap.
        log.warning(
            "configmap/%s keeps no owner (%s %s): delete it with `early-repair"
            " cancel` after the Job expires",
            name,
            e.status,
            api_message(e),
        )


def status(sweeps: Sweeps, sweep: str, ns: str) -> list[RunStatus]:
    """One row per run from the Job, its pods, Kueue and the store."""
    found = sweeps.find(sweep, ns)
    pods, _rv = sweeps.pods(found)
    found.admission = sweeps.admission(found)
    return run_states(found.job, pods, found.runs, sweeps.progress(found), found.admission)


def cancel(client: KubeClient, sweep: str, ns: str, propagation: str = "Foreground") -> list[str]:
    """Delete the sweep's Jobs (their pods with them) and ConfigMaps; never results."""
    c = client
    selector = sweep_selector(sweep)
    jobs = c.list("jobs", c.batch.list_namespaced_job, ns, selector)["items"]
    cms = c.list("configmaps", c.core.list_namespaced_config_map, ns, selector)["items"]
    if not jobs and not cms:
        raise BadInput(f"no sweep {sweep!r} in namespace {ns!r}: nothing to cancel")
    deleted = []
    for kind, items in (("job", jobs), ("configmap", cms)):
        for obj in items:
            name = meta(obj)["name"]
            if delete(client, kind, name, ns, propagation):
                deleted.append(f"{kind}/{name}")
    return deleted


def delete(client: KubeClient, kind: str, name: str, ns: str, propagation: str) -> bool:
    """Delete one Job or ConfigMap; False when it was already gone."""
    from kubernetes.client.exceptions import ApiException

    fn = (
        client.batch.delete_namespaced_job
        if kind == "job"
        else client.core.delete_namespaced_config_map
    )
    try:
        client.request(f"delete {kind}/{name}", fn, name, ns, propagation_policy=propagation)
        return True
    except ApiException as e:
        if e.status == 404:
            return False  # already gone: what we wanted
        raise client.fail(e, f"delete {kind}/{name}", ns) from e
