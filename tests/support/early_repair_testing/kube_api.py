"""A stand-in Kubernetes API server on loopback for the backend tests (kmock + thin hooks).

kmock's ``KubernetesEmulator`` stores objects and serves list/watch/get/create/patch/delete
over real HTTP. What a real API server does and it does not, added here as small hooks:

- ``metadata.resourceVersion`` (one counter for all writes), ``uid``, ``creationTimestamp``
  and ``generation`` stamped on create and bumped on every patch, and the list's
  ``metadata.resourceVersion``: the watch-from-resourceVersion logic needs them;
- ``?watch=True`` (what the kubernetes client sends) is a watch, not only ``?watch=true``;
- equality-based ``labelSelector`` (``k=v,k2=v2``) on list and watch, and a watch that
  ends after its ``timeoutSeconds``;
- server-side dry run (``?dryRun=All``): the object is answered (201, or 409 when it
  exists) and not stored;
- ``faults``: answers injected *before* the request reaches the store (a 429 or 503 that
  was not processed, as a real server's would be), and ``delay_after``: the request is
  processed and its answer held back (a create whose response is lost to a timeout).

The server runs on its own event loop in a daemon thread, so the synchronous kubernetes
client in the tests talks to it exactly as it would to a cluster. ``Controller`` plays the
Job controller: it creates pods with the index label and patches Job/pod status through the
same HTTP API, so every change also reaches open watches. It also plays Kueue's job
controller and scheduler: ``kueue_workload`` creates the Workload Kueue makes for a queued
Job (its name, ``kueue.x-k8s.io/job-uid`` label, controller owner reference and pod set)
and ``workload_status`` sets its conditions and admission, served under
``/apis/kueue.x-k8s.io/<version>/`` for the versions the ``Cluster`` is told to serve.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
KUEUE_GROUP = "kueue.x-k8s.io"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


@dataclass
class Fault:
    """Answer the next ``times`` matching requests with ``status`` (+ headers)."""

    action: str  # kmock action: CREATE, LIST, WATCH, FETCH, UPDATE, DELETE
    plural: str  # "jobs", "pods", "configmaps"
    status: int
    times: int = 1
    headers: dict[str, str] | None = None
    delay_after: float = 0.0  # process the request, then wait this long before answering


def _matches(selector: str | None, labels: dict[str, str]) -> bool:
    for term in (selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.strip().rstrip("=")) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return ((obj or {}).get("metadata") or {}).get("labels") or {}


@attrs.define(kw_only=True)
class ClusterAPI(kmock.KubernetesEmulator):
    faults: list[Fault] = attrs.field(factory=list)
    _rv: itertools.count = attrs.field(factory=lambda: itertools.count(1000))
    _last_rv: int = 999

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # The kubernetes client sends watch=True (Go's ParseBool takes it); kmock only knows
        # "true". Requests are frozen attrs objects, so the parsed action is set in place.
        if (
            request.method == kmock.method.GET
            and request.resource is not None
            and str(request.params.get("watch", "")).lower() in ("true", "1", "t")
        ):
            object.__setattr__(request, "action", kmock.action.WATCH)
        delay = 0.0
        if request.resource is not None and request.action is not None:
            for fault in self.faults:
                if (
                    fault.times > 0
                    and fault.action == request.action.value
                    and fault.plural == request.resource.plural
                ):
                    fault.times -= 1
                    if fault.delay_after:
                        delay = fault.delay_after
                        break
                    body = {
                        "apiVersion": "v1",
                        "kind": "Status",
                        "status": "Failure",
                        "code": fault.status,
                        "message": f"injected {fault.status}",
                    }
                    return aiohttp.web.json_response(
                        body, status=fault.status, headers=fault.headers or {}
                    )
        if request.action == kmock.action.CREATE and request.params.get("dryRun") == "All":
            return await self._dry_run_create(request)
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("namespace", request.namespace)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).isoformat(
                timespec="microseconds"
            )
            meta["resourceVersion"] = self._next_rv()
            meta["generation"] = 1
        elif request.action == kmock.action.UPDATE and isinstance(request.data, dict):
            request.data.setdefault("metadata", {})["resourceVersion"] = self._next_rv()
        elif request.action == kmock.action.DELETE:
            self._next_rv()
        response = await super()._handle(request)
        if delay:
            await asyncio.sleep(delay)
        return response

    async def _dry_run_create(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        obj = dict(request.data or {})
        meta = obj.get("metadata") or {}
        key = (request.resource, request.namespace or meta.get("namespace"), meta.get("name"))
        if key in self.objects and not self.objects[key].deleted:
            return aiohttp.web.json_response(
                {"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409
            )
        return aiohttp.web.json_response(obj, status=201)

    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        result["items"] = [o for o in result["items"] if _matches(selector, _labels(o))]
        result["metadata"] = {"resourceVersion": str(self._last_rv)}
        return result

    async def _serve_watch(self, request: kmock.Request) -> Any:
        # Like the real server: only matching objects, and the stream ends after
        # timeoutSeconds (the client then watches again from its last resourceVersion).
        selector = request.params.get("labelSelector")
        loop = asyncio.get_running_loop()
        timeout = float(request.params.get("timeoutSeconds") or 0)
        deadline = loop.time() + timeout if timeout else None
        events = super()._serve_watch(request)
        try:
            while True:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return
                try:
                    event = await asyncio.wait_for(anext(events), left)
                except (StopAsyncIteration, TimeoutError):
                    return
                if not isinstance(event, dict) or _matches(selector, _labels(event.get("object"))):
                    yield event
        finally:
            await events.aclose()


class Cluster:
    """``ClusterAPI`` served on 127.0.0.1 from a background thread."""

    def __init__(self, kueue_versions: tuple[str, ...] = ("v1beta2", "v1beta1")) -> None:
        self.kueue_versions = kueue_versions  # () plays a cluster without Kueue
        self.loop = asyncio.new_event_loop()
        self.api: ClusterAPI
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kube-api", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with ClusterAPI() as api, kmock.Server(api) as server:
            kueue = [f"{KUEUE_GROUP}/{v}/workloads" for v in self.kueue_versions]
            for res in ("v1/pods", "v1/configmaps", "batch/v1/jobs", *kueue):
                api.resources[res] = kmock.ResourceInfo(namespaced=True)
            self.api = api
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Cluster:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the stand-in API server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def requests(self, action: str | None = None, plural: str | None = None) -> list[Any]:
        """Requests the server received, optionally of one action and resource."""
        out = []
        for req in list(self.api):
            if action is not None and (req.action is None or req.action.value != action):
                continue
            if plural is not None and (req.resource is None or req.resource.plural != plural):
                continue
            out.append(req)
        return out

    def stored(self, plural: str, namespace: str) -> dict[str, dict[str, Any]]:
        """Live objects of one resource in one namespace, by name."""
        out = {}
        for (res, ns, name), obj in list(self.api.objects.items()):
            if res.plural == plural and ns == namespace and not obj.deleted:
                out[name] = obj.raw
        return out

    def api_client(self) -> Any:
        from kubernetes import client

        cfg = client.Configuration(host=self.url)
        cfg.retries = False  # as load_api_client() sets it
        return client.ApiClient(cfg)

    def kubeconfig(self, path: Path, namespace: str = "early-repair") -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
                    "contexts": [
                        {
                            "name": "stand-in",
                            "context": {
                                "cluster": "stand-in",
                                "user": "tester",
                                "namespace": namespace,
                            },
                        }
                    ],
                    "current-context": "stand-in",
                }
            )
        )
        return path


class Controller:
    """Does through the API what the Job controller and the kubelet would do."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        from kubernetes import client

        api = cluster.api_client()
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.ns = namespace
        self._seq = itertools.count()

    def job(self, name: str) -> dict[str, Any]:
        import json

        resp = self.batch.read_namespaced_job(name, self.ns, _preload_content=False)
        return json.loads(resp.data)

    def start_pod(self, job: str, index: int, *, node: str = "gpu-node-1") -> str:
        """A pod for ``index`` as the controller makes it (template labels + index label)."""
        template = self.job(job)["spec"]["template"]
        labels = dict(template["metadata"]["labels"])
        labels[INDEX_LABEL] = str(index)
        labels["batch.kubernetes.io/job-name"] = job
        name = f"{job}-{index}-{next(self._seq):05d}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.ns,
                "labels": labels,
                "annotations": {INDEX_LABEL: str(index)},
            },
            "spec": {**template["spec"], "nodeName": node},
            "status": {"phase": "Pending"},
        }
        self.core.create_namespaced_pod(self.ns, pod, _preload_content=False)
        return name

    def pod_status(self, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(
            name,
            self.ns,
            {"status": status},
            _content_type="application/merge-patch+json",
            _preload_content=False,
        )

    def run_pod(self, name: str) -> None:
        self.pod_status(
            name,
            {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "trainer", "restartCount": 0, "state": {"running": {}}}
                ],
            },
        )

    def end_pod(self, name: str, exit_code: int, message: str = "") -> None:
        reason = "Completed" if exit_code == 0 else "Error"
        self.pod_status(
            name,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": exit_code,
                                "reason": reason,
                                "message": message,
                            }
                        },
                    }
                ],
            },
        )

    def kueue_workload(self, job: str, version: str = "v1beta2") -> str:
        """The Workload Kueue's job controller creates for a queued Job; returns its name."""
        import hashlib

        from kubernetes import client

        obj = self.job(job)
        meta, spec = obj["metadata"], obj["spec"]
        uid = meta["uid"]
        # pkg/controller/jobframework/workload_names.go: "job-<name>-<5 hex of a hash>".
        name = f"job-{job}-{hashlib.sha256(f'{job}{uid}'.encode()).hexdigest()[:5]}"
        pod_set: dict[str, Any] = {
            "name": "main",
            "count": min(spec["parallelism"], spec["completions"]),
            "template": spec["template"],
        }
        min_count = (meta.get("annotations") or {}).get("kueue.x-k8s.io/job-min-parallelism")
        if min_count is not None:
            pod_set["minCount"] = int(min_count)
        workload = {
            "apiVersion": f"{KUEUE_GROUP}/{version}",
            "kind": "Workload",
            "metadata": {
                "name": name,
                "namespace": self.ns,
                "labels": {JOB_UID_LABEL: uid},
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {
                "queueName": meta["labels"]["kueue.x-k8s.io/queue-name"],
                "podSets": [pod_set],
            },
        }
        client.CustomObjectsApi(self.core.api_client).create_namespaced_custom_object(
            KUEUE_GROUP, version, self.ns, "workloads", workload, _preload_content=False
        )
        return name

    def workload_status(self, name: str, status: dict[str, Any], version: str = "v1beta2") -> None:
        from kubernetes import client

        client.CustomObjectsApi(self.core.api_client).patch_namespaced_custom_object_status(
            KUEUE_GROUP,
            version,
            self.ns,
            "workloads",
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
            _preload_content=False,
        )

    def workload(self, name: str, version: str = "v1beta2") -> dict[str, Any]:
        import json

        from kubernetes import client

        resp = client.CustomObjectsApi(self.core.api_client).get_namespaced_custom_object(
            KUEUE_GROUP, version, self.ns, "workloads", name, _preload_content=False
        )
        return json.loads(resp.data)

    def job_status(self, job: str, status: dict[str, Any]) -> None:
        self.batch.patch_namespaced_job_status(
            job,
            self.ns,
            {"status": status},
            _content_type="application/merge-patch+json",
            _preload_content=False,
        )
