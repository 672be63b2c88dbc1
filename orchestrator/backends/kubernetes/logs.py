"""A run's log: from its newest pod while the cluster still has it, else from the store.

The trainer archives its log in the store (``results.log``) when it ends, so a run whose
pod is gone (finished, evicted, TTL-deleted) still has its log. ``--follow`` streams one
running pod's log; reading a pod's log is not retried (the archive is the fallback), but a
refusal (401/403) is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from orchestrator.backends.kubernetes.client import meta
from orchestrator.backends.kubernetes.manifests import CONTAINER
from orchestrator.backends.kubernetes.state import IndexRun, pod_index
from orchestrator.backends.kubernetes.sweeps import Sweep, Sweeps
from orchestrator.errors import BadInput
from orchestrator.results import layout as results
from orchestrator.store import KeyMissing

log = logging.getLogger(__name__)


def logs(
    sweeps: Sweeps, sweep: str, ns: str, run: str | None = None, *, follow: bool = False
) -> Iterator[str]:
    """Log lines of one run (or of all runs, each after a ``==> run <==`` header)."""
    found = sweeps.find(sweep, ns)
    targets = _select(found, run)
    if follow and len(targets) > 1:
        raise BadInput("--follow: pass --run RUN; only one run's log can be followed")
    pods, _rv = sweeps.pods(found)
    newest: dict[int, dict[str, Any]] = {}
    for pod in sorted(pods, key=lambda p: meta(p).get("creationTimestamp") or ""):
        idx = pod_index(pod)
        if idx is not None:
            newest[idx] = pod
    for target in targets:
        if len(targets) > 1:
            yield f"==> {target.run} <=="
        pod = newest.get(target.index)
        resp = _pod_log(sweeps, found, pod, follow) if pod is not None else None
        if resp is not None:
            from kubernetes.watch.watch import iter_resp_lines

            try:
                yield from iter_resp_lines(resp)
            finally:
                resp.release_conn()
            continue
        archived = _archived_log(sweeps, found, target)
        if archived is None:
            log.warning("run %s: no log yet (no pod has started and none is archived)", target.run)
            continue
        yield from archived


def _select(found: Sweep, run: str | None) -> list[IndexRun]:
    if run is None:
        return list(found.runs)
    for r in found.runs:
        if run in (r.run, str(r.index)):
            return [r]
    names = ", ".join(r.run for r in found.runs[:5])
    raise BadInput(f"--run: sweep {found.name!r} has no run {run!r} (runs: {names}...)")


def _pod_log(sweeps: Sweeps, found: Sweep, pod: dict[str, Any], follow: bool) -> Any:
    from kubernetes.client.exceptions import ApiException

    phase = (pod.get("status") or {}).get("phase")
    if phase in (None, "Pending"):
        return None
    client = sweeps.client
    name = meta(pod)["name"]
    try:
        return client.request(
            f"logs of pod/{name}",
            client.core.read_namespaced_pod_log,
            name,
            found.namespace,
            container=CONTAINER,
            follow=follow,
            raw=True,
            retry=False,
            _request_timeout=(
                client.timeouts.connect_s,
                None if follow else client.timeouts.read_s,
            ),
        )
    except ApiException as e:
        if e.status in (401, 403):
            raise client.fail(e, f"logs of pod/{name}", found.namespace) from e
        return None  # pod or node gone: the archived log is the fallback


def _archived_log(sweeps: Sweeps, found: Sweep, target: IndexRun) -> list[str] | None:
    if found.spec is None:
        return None
    store = sweeps.open_store(found.spec)
    try:
        blob = store.read_bytes(results.log(found.name, target.run))
    except KeyMissing:
        return None
    return blob.decode("utf-8", errors="replace").splitlines()
