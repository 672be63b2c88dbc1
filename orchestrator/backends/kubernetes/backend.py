"""Run a sweep on a Kubernetes cluster: plan, submit, follow, read logs of and cancel it.

The backend is a thin front over its parts, each one concern:

- ``client``: the API with one retry policy (``RetryPolicy``) and timeouts (``Timeouts``);
- ``plan``: the sweep's ConfigMap and Indexed Job, exactly as ``submit`` creates them
  (from ``manifests.render_sweep``, so ``plan --out`` shows what is created);
- ``verbs``: submit (idempotent, server-side dry run, ``--replace``), status and cancel;
- ``sweeps``: finding a submitted sweep, its pods, its Kueue admission and its progress;
- ``watch``: following the runs by a pod watch; ``logs``: a run's log, live or archived.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from orchestrator.backends.base import CancelResult, RunStatus, SubmitResult
from orchestrator.backends.kubernetes import logs as logs_
from orchestrator.backends.kubernetes import verbs
from orchestrator.backends.kubernetes import watch as watch_
from orchestrator.backends.kubernetes.client import (
    KUBERNETES_RETRY,
    ClusterError,
    ClusterUnavailable,
    KubeClient,
    Timeouts,
)
from orchestrator.backends.kubernetes.manifests import with_namespace
from orchestrator.backends.kubernetes.plan import KubernetesPlan
from orchestrator.backends.kubernetes.sweeps import DEFAULT_NAMESPACE, Sweep, Sweeps
from orchestrator.common.retry import RetryPolicy
from orchestrator.spec import SweepSpec
from orchestrator.store import Store

__all__ = [
    "ClusterError",
    "ClusterUnavailable",
    "KubernetesBackend",
    "KubernetesPlan",
    "RetryPolicy",
    "Timeouts",
]


class KubernetesBackend:
    """Indexed Jobs on a cluster, in ``namespace`` (default: each spec's own, and
    ``early-repair`` for commands that name only a sweep)."""

    name = "kubernetes"

    # The CLI options this backend takes (``open_backend`` refuses the others).
    options = ("namespace", "context", "endpoint_url")

    def __init__(
        self,
        *,
        namespace: str | None = None,
        context: str | None = None,
        api_client: Any = None,
        store_opener: Callable[[SweepSpec], Store] | None = None,
        endpoint_url: str | None = None,
        retry: RetryPolicy = KUBERNETES_RETRY,
        timeouts: Timeouts = Timeouts(),
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        progress_every_s: float = 15.0,
    ) -> None:
        self.namespace = namespace
        self.client = KubeClient(
            context=context,
            api_client=api_client,
            retry=retry,
            timeouts=timeouts,
            sleep=sleep,
            rand=rand,
        )
        self.sweeps = Sweeps(self.client, store_opener=store_opener, endpoint_url=endpoint_url)
        self._clock = clock
        self.progress_every_s = progress_every_s

    @property
    def where(self) -> str:
        """The namespace that commands naming only a sweep look in."""
        return self.namespace or DEFAULT_NAMESPACE

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.where

    def plan(self, spec: SweepSpec) -> KubernetesPlan:
        """The sweep's objects in this backend's namespace (else the spec's)."""
        return KubernetesPlan(with_namespace(spec, self.namespace))

    def submit(
        self, plan: KubernetesPlan, *, dry_run: bool = False, replace: bool = False
    ) -> SubmitResult:
        """Create the plan's objects (see ``verbs``); the same plan twice creates them once."""
        if not isinstance(plan, KubernetesPlan):
            raise TypeError(f"submit takes this backend's plan(spec), not {type(plan).__name__}")
        return verbs.submit(self.client, plan, dry_run=dry_run, replace=replace)

    def find(self, sweep: str, namespace: str | None = None) -> Sweep:
        """The sweep's Job, spec and runs; BadInput if there is none."""
        return self.sweeps.find(sweep, self._ns(namespace))

    def status(self, sweep: str, namespace: str | None = None) -> list[RunStatus]:
        return verbs.status(self.sweeps, sweep, self._ns(namespace))

    def watch(self, sweep: str, namespace: str | None = None) -> Iterator[list[RunStatus]]:
        """The sweep's statuses whenever they change, until every run has ended."""
        return watch_.watch(
            self.sweeps,
            sweep,
            self._ns(namespace),
            clock=self._clock,
            progress_every_s=self.progress_every_s,
        )

    def logs(
        self,
        sweep: str,
        run: str | None = None,
        *,
        follow: bool = False,
        namespace: str | None = None,
    ) -> Iterator[str]:
        """A run's log from its newest pod, else the one the trainer archived in the store."""
        return logs_.logs(self.sweeps, sweep, self._ns(namespace), run, follow=follow)

    def cancel(
        self, sweep: str, namespace: str | None = None, propagation: str = "Foreground"
    ) -> CancelResult:
        """Delete the sweep's Jobs (their pods with them) and ConfigMaps; never results."""
        ns = self._ns(namespace)
        deleted = verbs.cancel(self.client, sweep, ns, propagation)
        return CancelResult(
            sweep=sweep,
            stopped=deleted,
            message=f"cancelled sweep {sweep!r}: deleted {', '.join(deleted)}; results are kept",
            document={"sweep": sweep, "namespace": ns, "deleted": deleted},
            title=f"{sweep} ({ns})",
            rows=[[name, "deleted"] for name in deleted],
        )
