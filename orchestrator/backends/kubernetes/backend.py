"""Run a sweep on a Kubernetes cluster: submit, follow, read logs of and cancel Indexed Jobs.

Uses the official ``kubernetes`` client (kubeconfig with an optional context, else the
in-cluster config), created lazily; tests inject an ``ApiClient`` pointed at a stand-in API
server. Every object comes from ``manifests.render_sweep``, so ``plan --out`` shows
exactly what is created. Objects are handled as plain dicts (responses are read with
``_preload_content=False``): the generated model classes add nothing here and reject the
partial objects some servers return.

How it copes with the API server's usual behaviour:

- **Retries.** 429, 500, 502, 503 and 504 answers, timeouts and dropped connections are
  retried (``max_attempts`` in all) after ``Retry-After`` when the server sends one, else
  after an exponential back-off with jitter. urllib3's own retries are switched off: they
  cannot honour our injected clock, and they would hide that a create was retried. What
  retries could not fix is ``ClusterUnavailable`` (exit 69, ``EXIT_TRANSIENT``: try again
  later), unlike a refusal (401/403/422: exit 2) or another answer (exit 1).
- **Fail fast.** A server that cannot be connected to at all (connection refused, unknown
  host, no answer within the connect timeout, 5 s) on the first request is not retried: a
  wrong kubeconfig or context, or a cluster that is down, says so in one line at once
  instead of after the whole back-off. Once the server has answered, a failed connection
  is retried like any other transient failure (a restarting API server mid-watch).
- **Kueue.** A Job queued by Kueue waits, suspended, until its Workload is admitted; the
  Workload (found by Kueue's ``kueue.x-k8s.io/job-uid`` label through the
  CustomObjectsApi, v1beta2 else v1beta1) says why, and ``status`` shows it. A cluster
  without Kueue, or a Role that cannot read Workloads, costs that line, not the status.
- **Idempotent submit.** Object names are ``<sweep>-<spec hash>``. Objects of the sweep with
  the same hash are reported unchanged and left alone; objects with another hash are an
  error unless ``replace`` (then they are deleted first). A create answered 409 after an
  earlier try of the same create timed out or failed counts as created once the existing
  object's hash is checked. ``dry_run`` sends every create with server-side
  ``dryRun=All`` and deletes nothing. After the Job exists the ConfigMap gets the Job as
  owner, so the Job's ``ttlSecondsAfterFinished`` clean-up removes it too.
- **Watch.** List, then watch pods from the list's resourceVersion with bookmarks; a 410
  Gone (expired resourceVersion) re-lists; other errors back off with jitter; the server's
  watch timeout just starts the next watch. The Job is re-read on every pod event.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from orchestrator.backends.base import RunState, RunStatus, SubmitResult
from orchestrator.backends.kubernetes.changes import (
    Changes,
    hash_of,
    kind_of,
    name_of,
    plan_changes,
    ref,
)
from orchestrator.backends.kubernetes.manifests import (
    CONTAINER,
    INSTANCE_LABEL,
    QUEUE_LABEL,
    RUNS_ANNOTATION,
    SWEEP_KEY,
    render_sweep,
    sweep_selector,
    with_namespace,
)
from orchestrator.backends.kubernetes.state import (
    IndexRun,
    pod_index,
    run_states,
    workload_admission,
)
from orchestrator.errors import EXIT_FAILED, EXIT_TRANSIENT, BadInput, EarlyRepairError
from orchestrator.spec import KubernetesSpec, SweepSpec, parse_spec

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
DEFAULT_NAMESPACE = KubernetesSpec().namespace
KUEUE_GROUP = "kueue.x-k8s.io"
# Served Workload versions, newest first: v1beta2 since Kueue 0.15 (storage since 0.16),
# v1beta1 still served, deprecated, through 0.19 (config/components/crd/bases).
KUEUE_VERSIONS = ("v1beta2", "v1beta1")
# Kueue's label on a Workload naming the UID of the Job it admits.
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


class ClusterError(EarlyRepairError):
    """The Kubernetes API could not do what we asked (after retries)."""

    exit_code = EXIT_FAILED


class ClusterUnavailable(ClusterError):
    """The Kubernetes API could not be reached, or kept failing after retries: try later."""

    exit_code = EXIT_TRANSIENT


@dataclass
class _Tries:
    count: int = 0


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


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _api_message(exc: Any) -> str:
    """The API's own one-line message from an ApiException body (a Status object)."""
    body = getattr(exc, "body", None)
    try:
        data = json.loads(body) if body else {}
    except (TypeError, ValueError):
        data = {}
    msg = data.get("message") if isinstance(data, dict) else None
    return " ".join(str(msg or getattr(exc, "reason", "") or "").split())


def _after(tries: int) -> str:
    return f" after {tries} tries" if tries > 1 else ""


def _retry_after(exc: Any, now: Callable[[], float] = time.time) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    raw = headers.get("Retry-After") if hasattr(headers, "get") else None
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - now())
    except (TypeError, ValueError):
        return None


class KubernetesBackend:
    """Indexed Jobs on a cluster; see the module docstring for the behaviour."""

    def __init__(
        self,
        *,
        namespace: str | None = None,
        context: str | None = None,
        api_client: Any = None,
        store_opener: Callable[[SweepSpec], Any] | None = None,
        endpoint_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        max_attempts: int = 6,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        max_retry_after_s: float = 60.0,
        request_timeout: tuple[float, float] = (5.0, 60.0),
        watch_timeout_s: int = 300,
        max_watch_failures: int = 10,
        progress_every_s: float = 15.0,
    ) -> None:
        self.namespace = namespace
        self.context = context
        self._api_client = api_client
        self._store_opener = store_opener
        self.endpoint_url = endpoint_url
        self._sleep = sleep
        self._rand = rand
        self._clock = clock
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.request_timeout = request_timeout
        self.watch_timeout_s = watch_timeout_s
        self.max_watch_failures = max_watch_failures
        self.progress_every_s = progress_every_s
        self._core: Any = None
        self._batch: Any = None
        self._custom: Any = None
        self._kueue_version: str | None = None
        self._reached = False  # the API server has answered at least once

    name = "kubernetes"

    # The CLI options this backend takes (``open_backend`` refuses the others).
    options = ("namespace", "context", "endpoint_url")

    # --- client -------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._api_client is None:
            self._api_client = load_api_client(self.context)
        return self._api_client

    @property
    def core(self) -> Any:
        if self._core is None:
            from kubernetes import client

            self._core = client.CoreV1Api(self._client())
        return self._core

    @property
    def batch(self) -> Any:
        if self._batch is None:
            from kubernetes import client

            self._batch = client.BatchV1Api(self._client())
        return self._batch

    @property
    def custom(self) -> Any:
        if self._custom is None:
            from kubernetes import client

            self._custom = client.CustomObjectsApi(self._client())
        return self._custom

    def _ns(self, namespace: str | None = None) -> str:
        return namespace or self.namespace or DEFAULT_NAMESPACE

    def _host(self) -> str:
        cfg = getattr(self._client(), "configuration", None)
        return getattr(cfg, "host", "?")

    def backoff(self, attempt: int) -> float:
        """Exponential back-off with "equal jitter": half fixed, half random."""
        base = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return base / 2 + self._rand() * base / 2

    def _request(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        tries: _Tries | None = None,
        retry: bool = True,
        raw: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Call ``fn`` with retries; the parsed JSON body (or the raw response if ``raw``)."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        tries = tries or _Tries()
        kwargs.setdefault("_request_timeout", self.request_timeout)
        while True:
            tries.count += 1
            last = not retry or tries.count >= self.max_attempts
            try:
                resp = fn(*args, _preload_content=False, **kwargs)
                self._reached = True
                if raw:
                    return resp
                body = resp.data
                return json.loads(body) if body else {}
            except ApiException as e:
                self._reached = True
                if e.status not in RETRY_STATUS or last:
                    raise
                delay = _retry_after(e)
                delay = (
                    self.backoff(tries.count - 1)
                    if delay is None
                    else min(delay, self.max_retry_after_s)
                )
                log.info("%s: API answered %s, retrying in %.1fs", what, e.status, delay)
            except urllib3.exceptions.ConnectTimeoutError as e:  # also refused, unknown host
                if last or not self._reached:
                    raise ClusterUnavailable(
                        f"{what}: cannot reach the Kubernetes API at {self._host()}"
                        f" ({self._connect_problem(e)}{_after(tries.count)}): check that the"
                        " cluster is up and that KUBECONFIG / --context point at it"
                    ) from e
                delay = self.backoff(tries.count - 1)
                log.info("%s: %s, retrying in %.1fs", what, type(e).__name__, delay)
            except urllib3.exceptions.HTTPError as e:
                if last:
                    raise ClusterUnavailable(
                        f"{what}: cannot reach the Kubernetes API at {self._host()}"
                        f" ({type(e).__name__}) after {tries.count} tries"
                    ) from e
                delay = self.backoff(tries.count - 1)
                log.info("%s: %s, retrying in %.1fs", what, type(e).__name__, delay)
            self._sleep(delay)

    def _connect_problem(self, e: Exception) -> str:
        """``connection refused``, ``host name not resolved`` or ``no answer within 5 s``."""
        import urllib3

        if isinstance(e, urllib3.exceptions.NameResolutionError):
            return "host name not resolved"
        if isinstance(e, urllib3.exceptions.NewConnectionError):
            why = str(e).rpartition(": ")[2]
            return " ".join(why.split("] ")[-1].split()).lower() or "connection failed"
        return f"no answer within {self.request_timeout[0]:g} s"

    def _fail(self, e: Any, what: str, namespace: str) -> EarlyRepairError:
        """Our error for an ApiException that retries could not fix."""
        status, msg = getattr(e, "status", None), _api_message(e)
        if status == 401:
            return BadInput(
                f"{what}: the Kubernetes API refused our credentials (401): check"
                " your kubeconfig or --context"
            )
        if status == 403:
            return BadInput(
                f"{what}: forbidden in namespace {namespace!r} (403): bind the submitter Role"
                f" from k8s/rbac.yaml to your user ({msg})"
            )
        if status == 422 or status == 400:
            return BadInput(f"{what}: the API server rejected it ({status}): {msg}")
        if status in RETRY_STATUS:
            return ClusterUnavailable(
                f"{what}: the Kubernetes API kept answering {status} ({msg}); try again later"
            )
        return ClusterError(f"{what}: the Kubernetes API answered {status}: {msg}")

    def _call(self, what: str, namespace: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._request(what, fn, *a, **kw)
        except ApiException as e:
            raise self._fail(e, what, namespace) from e

    def _list(self, what: str, fn: Callable[..., Any], namespace: str, selector: str) -> Any:
        return self._call(f"list {what}", namespace, fn, namespace, label_selector=selector)

    def _get(self, what: str, fn: Callable[..., Any], name: str, namespace: str) -> Any:
        """The object, or None when it does not exist."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._request(f"get {what}/{name}", fn, name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise self._fail(e, f"get {what}/{name}", namespace) from e

    # --- submit -------------------------------------------------------------------------

    def submit(
        self, spec: SweepSpec, *, dry_run: bool = False, replace: bool = False
    ) -> SubmitResult:
        """Create the sweep's objects: list what exists, decide (pure), then apply."""
        spec = with_namespace(spec, self.namespace)
        desired = render_sweep(spec)
        ns, digest = spec.kubernetes.namespace, spec.spec_hash()
        selector = sweep_selector(spec.name)
        found = [
            {"kind": kind, **obj}
            for kind, lister in (
                ("ConfigMap", self.core.list_namespaced_config_map),
                ("Job", self.batch.list_namespaced_job),
            )
            for obj in self._list(f"{kind.lower()}s", lister, ns, selector)["items"]
        ]
        changes = plan_changes(
            desired, found, digest=digest, sweep=spec.name, namespace=ns, replace=replace
        )
        return self.apply(changes, spec.name, ns, digest, dry_run=dry_run)

    def apply(
        self, changes: Changes, sweep: str, ns: str, digest: str, *, dry_run: bool = False
    ) -> SubmitResult:
        """Carry out ``plan_changes``' decision; a dry run asks the server to check only."""
        result = SubmitResult(sweep=sweep, dry_run=dry_run)
        for obj in changes.delete:
            if not dry_run:
                self._delete(kind_of(obj), name_of(obj), ns, "Foreground")
            result.replaced.append(ref(obj))
        result.unchanged.extend(ref(o) for o in changes.unchanged)
        creators = {
            "configmap": (
                self.core.create_namespaced_config_map,
                self.core.read_namespaced_config_map,
            ),
            "job": (self.batch.create_namespaced_job, self.batch.read_namespaced_job),
        }
        job: dict[str, Any] | None = None
        for obj in changes.create:
            create, reader = creators[kind_of(obj)]
            outcome, body = self._create(kind_of(obj), obj, create, reader, ns, digest, dry_run)
            (result.created if outcome == "created" else result.unchanged).append(ref(obj))
            if kind_of(obj) == "job":
                job = body
        if not dry_run:
            job = job or next(o for o in changes.unchanged if kind_of(o) == "job")
            self._own_configmap(ns, name_of(job), job)
        return result

    def _create(
        self,
        kind: str,
        obj: dict[str, Any],
        create: Callable[..., Any],
        reader: Callable[..., Any],
        ns: str,
        digest: str,
        dry_run: bool,
    ) -> tuple[str, dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        name = obj["metadata"]["name"]
        what = f"create {kind}/{name}" + (" (dry run)" if dry_run else "")
        tries = _Tries()
        extra = {"dry_run": "All"} if dry_run else {}
        try:
            return "created", self._request(what, create, ns, obj, tries=tries, **extra)
        except ApiException as e:
            if e.status == 404:
                raise BadInput(
                    f"namespace {ns!r} does not exist: create it (kubectl apply -f"
                    " k8s/namespace.yaml) or pass --namespace"
                ) from e
            if e.status != 409:
                raise self._fail(e, what, ns) from e
        # 409: it exists. Ours if it carries our hash; then an earlier try (timed out or
        # answered 5xx) created it, so it counts as created, else someone else just did.
        existing = self._get(kind, reader, name, ns)
        if existing is None or hash_of(existing) != digest:
            raise BadInput(
                f"{kind}/{name} already exists in namespace {ns!r} and was not made from this"
                " spec: delete it or rename the sweep"
            )
        return ("created" if tries.count > 1 else "unchanged"), existing

    def _own_configmap(self, ns: str, name: str, job: dict[str, Any]) -> None:
        """Make the Job the ConfigMap's owner so the Job's TTL clean-up removes it too."""
        from kubernetes.client.exceptions import ApiException

        uid = _meta(job).get("uid")
        if not uid:
            return
        cm = self._get("configmap", self.core.read_namespaced_config_map, name, ns)
        if cm is None or any(r.get("uid") == uid for r in _meta(cm).get("ownerReferences") or []):
            return
        patch = {
            "metadata": {
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": uid,
                        "blockOwnerDeletion": False,
                    }
                ]
            }
        }
        try:
            self._request(
                f"patch configmap/{name}",
                self.core.patch_namespaced_config_map,
                name,
                ns,
                patch,
                _content_type="application/merge-patch+json",
            )
        except ApiException as e:
            # Not fatal: the sweep runs; `cancel` still removes the ConfigMap.
            log.warning(
                "configmap/%s keeps no owner (%s %s): delete it with `early-repair"
                " cancel` after the Job expires",
                name,
                e.status,
                _api_message(e),
            )

    # --- finding a sweep ----------------------------------------------------------------

    def find(self, sweep: str, namespace: str | None = None) -> Sweep:
        """The sweep's Job (newest, if several), spec and runs; BadInput if there is none."""
        ns = self._ns(namespace)
        selector = sweep_selector(sweep)
        jobs = self._list("jobs", self.batch.list_namespaced_job, ns, selector)["items"]
        jobs.sort(key=lambda j: (_meta(j).get("creationTimestamp") or "", _meta(j)["name"]))
        job = jobs[-1] if jobs else None
        if job is not None:
            cm = self._get(
                "configmap", self.core.read_namespaced_config_map, _meta(job)["name"], ns
            )
        else:
            cms = self._list("configmaps", self.core.list_namespaced_config_map, ns, selector)
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
                log.warning("configmap %s holds no readable sweep", _meta(cm).get("name"))
        if spec is not None:
            runs = [IndexRun(r.index, r.name) for r in spec.runs()]
        else:
            annotations = _meta(job or {}).get("annotations") or {}
            count = int(annotations.get(RUNS_ANNOTATION, "0") or 0)
            runs = [IndexRun(i, f"index-{i}") for i in range(count)]
        return Sweep(sweep, ns, job, spec, runs)

    def _progress(self, found: Sweep) -> dict[str, dict[str, Any]]:
        if found.spec is None:
            return {}
        from orchestrator.backends.progress import sweep_progress

        try:
            store = self._open_store(found.spec)
            return sweep_progress(store, found.spec.runs())
        except (EarlyRepairError, OSError, ImportError) as e:
            note = {"error": f"store not readable: {' '.join(str(e).split())[:120]}"}
            return {r.run: dict(note) for r in found.runs}

    def _open_store(self, spec: SweepSpec) -> Any:
        if self._store_opener is not None:
            return self._store_opener(spec)
        from orchestrator.store import open_results

        return open_results(spec.results, spec.storage, endpoint_url=self.endpoint_url)

    def _pods(self, found: Sweep) -> tuple[list[dict[str, Any]], str | None]:
        """The Job's pods and the list's resourceVersion."""
        data = self._list(
            "pods", self.core.list_namespaced_pod, found.namespace, sweep_selector(found.name)
        )
        return self._own_pods(found, data["items"]), _meta(data).get("resourceVersion")

    @staticmethod
    def _own_pods(found: Sweep, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Pods of an older Job of the same sweep (before --replace) are not this sweep's.
        name = found.job_name
        return [
            p
            for p in pods
            if name is None or (_meta(p).get("labels") or {}).get(INSTANCE_LABEL) == name
        ]

    # --- status and watch ---------------------------------------------------------------

    def _admission(self, found: Sweep) -> str:
        """Where Kueue stands with the sweep's Job; ``""`` when Kueue does not queue it."""
        from kubernetes.client.exceptions import ApiException

        job = found.job
        uid = _meta(job or {}).get("uid")
        if job is None or not uid or QUEUE_LABEL not in (_meta(job).get("labels") or {}):
            return ""
        for version in [self._kueue_version] if self._kueue_version else KUEUE_VERSIONS:
            try:
                data = self._request(
                    f"list workloads.{KUEUE_GROUP}/{version}",
                    self.custom.list_namespaced_custom_object,
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
                return f"cannot read Kueue Workloads ({e.status}: {_api_message(e)})"
            self._kueue_version = version
            items = sorted(
                data.get("items") or [], key=lambda w: _meta(w).get("creationTimestamp") or ""
            )
            return workload_admission(items[-1] if items else None)
        return "this cluster serves no Kueue Workloads (kueue.x-k8s.io): is Kueue installed?"

    def status(self, sweep: str, namespace: str | None = None) -> list[RunStatus]:
        found = self.find(sweep, namespace)
        pods, _rv = self._pods(found) if found.job else ([], None)
        found.admission = self._admission(found)
        return run_states(found.job, pods, found.runs, self._progress(found), found.admission)

    def watch(self, sweep: str, namespace: str | None = None) -> Iterator[list[RunStatus]]:
        """Yield the sweep's statuses whenever they change, until every run is terminal.

        A Job that disappears while watched was cancelled (or replaced): its open runs are
        reported CANCELLED and the watch ends.
        """
        import urllib3
        from kubernetes import watch as k8s_watch
        from kubernetes.client.exceptions import ApiException

        found = self.find(sweep, namespace)
        pods: dict[str, dict[str, Any]] = {}
        rv: str | None = None
        failures = 0
        last: list[RunStatus] = []
        progress: dict[str, dict[str, Any]] = {}
        progress_at = float("-inf")

        def changed() -> bool:
            nonlocal progress, progress_at, last
            if self._clock() - progress_at >= self.progress_every_s:
                progress, progress_at = self._progress(found), self._clock()
            states = run_states(
                found.job, list(pods.values()), found.runs, progress, found.admission
            )
            if states == last:
                return False
            last = states
            return True

        def done() -> bool:
            return all(s.state.terminal for s in last)

        def settle() -> tuple[list[list[RunStatus]], bool]:
            """What to yield after the Job or its pods may have moved, and whether to stop."""
            if not self._refresh_job(found):
                return [_cancelled(last)], True
            return ([last] if changed() else []), done()

        if found.job is None:  # nothing to watch: the store's word is all there is
            changed()
            yield last
            return
        while True:
            try:
                if rv is None:  # (re-)list: the only way back after 410 Gone
                    items, listed_rv = self._pods(found)
                    pods = {_meta(p)["name"]: p for p in items}
                    rv = listed_rv or ""
                    out, stop = settle()
                    yield from out
                    if stop:
                        return
                stream = k8s_watch.Watch(return_type="object").stream(
                    self.core.list_namespaced_pod,
                    found.namespace,
                    label_selector=sweep_selector(found.name),
                    resource_version=rv or None,
                    allow_watch_bookmarks=True,
                    timeout_seconds=self.watch_timeout_s,
                    _request_timeout=(self.request_timeout[0], self.watch_timeout_s + 15),
                )
                for event in stream:
                    failures = 0
                    obj = event.get("raw_object") or {}
                    rv = _meta(obj).get("resourceVersion") or rv
                    if event.get("type") == "BOOKMARK" or obj.get("kind", "Pod") != "Pod":
                        continue
                    name = _meta(obj).get("name")
                    if event.get("type") == "DELETED":
                        pods.pop(name, None)
                    elif name and self._own_pods(found, [obj]):
                        pods[name] = obj
                    out, stop = settle()
                    yield from out
                    if stop:
                        return
                # The server ended the watch (timeoutSeconds): look again, then watch on.
                out, stop = settle()
                yield from out
                if stop:
                    return
            except ApiException as e:
                if e.status == 410:
                    log.info("watch: resourceVersion %s expired (410 Gone); re-listing", rv)
                    rv = None
                    continue
                if e.status not in RETRY_STATUS:
                    raise self._fail(e, "watch pods", found.namespace) from e
                failures += 1
                self._pause(failures, _retry_after(e), f"API answered {e.status}")
            except urllib3.exceptions.ReadTimeoutError:
                continue  # a quiet watch outlived its read timeout: just watch again
            except urllib3.exceptions.HTTPError as e:
                failures += 1
                self._pause(failures, None, type(e).__name__)

    def _pause(self, failures: int, retry_after: float | None, why: str) -> None:
        if failures > self.max_watch_failures:
            raise ClusterError(f"watch pods: gave up after {failures - 1} failures ({why})")
        delay = (
            self.backoff(failures - 1)
            if retry_after is None
            else min(retry_after, self.max_retry_after_s)
        )
        log.info("watch: %s; watching again in %.1fs", why, delay)
        self._sleep(delay)

    def _refresh_job(self, found: Sweep) -> bool:
        """Re-read the Job; False when it is gone."""
        name = found.job_name
        if name is None:
            return False
        job = self._get("job", self.batch.read_namespaced_job, name, found.namespace)
        if job is None:
            return False
        found.job = job
        found.admission = self._admission(found)
        return True

    # --- logs ---------------------------------------------------------------------------

    def logs(
        self,
        sweep: str,
        run: str | None = None,
        *,
        follow: bool = False,
        namespace: str | None = None,
    ) -> Iterator[str]:
        """Log lines of one run (or of all runs, each after a ``==> run <==`` header).

        From the run's newest pod while the cluster still has it, else the log the trainer
        archived in the store (``results.log``).
        """
        found = self.find(sweep, namespace)
        targets = self._select(found, run)
        if follow and len(targets) > 1:
            raise BadInput("--follow: pass --run RUN; only one run's log can be followed")
        pods, _rv = self._pods(found) if found.job else ([], None)
        newest: dict[int, dict[str, Any]] = {}
        for pod in sorted(pods, key=lambda p: _meta(p).get("creationTimestamp") or ""):
            idx = pod_index(pod)
            if idx is not None:
                newest[idx] = pod
        for target in targets:
            if len(targets) > 1:
                yield f"==> {target.run} <=="
            pod = newest.get(target.index)
            resp = self._pod_log(found, pod, follow) if pod is not None else None
            if resp is not None:
                from kubernetes.watch.watch import iter_resp_lines

                try:
                    yield from iter_resp_lines(resp)
                finally:
                    resp.release_conn()
                continue
            archived = self._archived_log(found, target)
            if archived is None:
                log.warning(
                    "run %s: no log yet (no pod has started and none is archived)", target.run
                )
                continue
            yield from archived

    def _select(self, found: Sweep, run: str | None) -> list[IndexRun]:
        if run is None:
            return list(found.runs)
        for r in found.runs:
            if run in (r.run, str(r.index)):
                return [r]
        names = ", ".join(r.run for r in found.runs[:5])
        raise BadInput(f"--run: sweep {found.name!r} has no run {run!r} (runs: {names}...)")

    def _pod_log(self, found: Sweep, pod: dict[str, Any], follow: bool) -> Any:
        from kubernetes.client.exceptions import ApiException

        phase = (pod.get("status") or {}).get("phase")
        if phase in (None, "Pending"):
            return None
        name = _meta(pod)["name"]
        try:
            return self._request(
                f"logs of pod/{name}",
                self.core.read_namespaced_pod_log,
                name,
                found.namespace,
                container=CONTAINER,
                follow=follow,
                raw=True,
                retry=False,
                _request_timeout=(
                    self.request_timeout[0],
                    None if follow else self.request_timeout[1],
                ),
            )
        except ApiException as e:
            if e.status in (401, 403):
                raise self._fail(e, f"logs of pod/{name}", found.namespace) from e
            return None  # pod or node gone: the archived log is the fallback

    def _archived_log(self, found: Sweep, target: IndexRun) -> list[str] | None:
        if found.spec is None:
            return None
        from orchestrator.results import layout as results
        from orchestrator.store import KeyMissing

        store = self._open_store(found.spec)
        try:
            blob = store.read_bytes(results.log(found.name, target.run))
        except KeyMissing:
            return None
        return blob.decode("utf-8", errors="replace").splitlines()

    # --- cancel -------------------------------------------------------------------------

    def cancel(
        self, sweep: str, namespace: str | None = None, propagation: str = "Foreground"
    ) -> list[str]:
        """Delete the sweep's Jobs (their pods with them) and ConfigMaps; never results."""
        ns = self._ns(namespace)
        selector = sweep_selector(sweep)
        jobs = self._list("jobs", self.batch.list_namespaced_job, ns, selector)["items"]
        cms = self._list("configmaps", self.core.list_namespaced_config_map, ns, selector)
        if not jobs and not cms["items"]:
            raise BadInput(f"no sweep {sweep!r} in namespace {ns!r}: nothing to cancel")
        deleted = []
        for kind, items in (("job", jobs), ("configmap", cms["items"])):
            for obj in items:
                name = _meta(obj)["name"]
                if self._delete(kind, name, ns, propagation):
                    deleted.append(f"{kind}/{name}")
        return deleted

    def _delete(self, kind: str, name: str, ns: str, propagation: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        fn = (
            self.batch.delete_namespaced_job
            if kind == "job"
            else self.core.delete_namespaced_config_map
        )
        try:
            self._request(f"delete {kind}/{name}", fn, name, ns, propagation_policy=propagation)
            return True
        except ApiException as e:
            if e.status == 404:
                return False  # already gone: what we wanted
            raise self._fail(e, f"delete {kind}/{name}", ns) from e


def _cancelled(states: list[RunStatus]) -> list[RunStatus]:
    """``states`` with every open run CANCELLED: the Job went away under the watch."""
    return [
        s
        if s.state.terminal
        else RunStatus(
            s.index, s.run, RunState.CANCELLED, s.restarts, s.node, "Job was deleted", s.progress
        )
        for s in states
    ]


def load_api_client(context: str | None = None) -> Any:
    """An ApiClient from the kubeconfig (optionally a named context) or the in-cluster config.

    urllib3's retries are off: ``KubernetesBackend`` retries itself (see module doc).
    """
    import os

    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        # KUBECONFIG is read now, not when the kubernetes package was imported.
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None,
            context=context,
            client_configuration=cfg,
            persist_config=False,
        )
    except (config.ConfigException, OSError, TypeError, ValueError) as e:
        if context:
            raise BadInput(f"--context: cannot use context {context!r}: {e}") from e
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as e2:
            raise BadInput(
                "no Kubernetes configuration: set KUBECONFIG (or write ~/.kube/config), or"
                " run inside a cluster"
            ) from e2
    cfg.retries = False
    return client.ApiClient(cfg)
