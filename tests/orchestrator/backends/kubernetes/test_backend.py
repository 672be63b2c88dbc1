"""KubernetesBackend with the real kubernetes client over HTTP against a stand-in API server.

The server is kmock's KubernetesEmulator with the hooks in tests/kube_api.py (resource
versions, label selectors, server-side dry run, injected faults). The tests play the Job
controller and kubelet through the same API (``Controller``): they create pods with the
completion-index label and patch Job and pod status, so every state the backend reports
came to it over the wire, by list or by watch.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kmock
import pytest
import yaml
from early_repair_testing.k8s_checks import load_crds, strict_crd_schema
from early_repair_testing.kube_api import Cluster, Controller, Fault
from early_repair_testing.paths import QUICKSTART
from early_repair_testing.s3_server import moto_endpoint, s3_bucket, s3_env  # noqa: F401

from orchestrator.backends.kubernetes.backend import (
    ClusterUnavailable,
    KubernetesBackend,
    Timeouts,
)
from orchestrator.backends.kubernetes.manifests import (
    MIN_PARALLELISM_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    object_name,
    render_sweep,
)
from orchestrator.errors import EXIT_TRANSIENT, BadInput
from orchestrator.results import layout as results
from orchestrator.spec import SweepSpec, load_spec, parse_spec
from orchestrator.store import write_json
from orchestrator.store.file import FileStore

pytestmark = pytest.mark.timeout(60)


NS = "early-repair"


def make_spec(**top: Any) -> SweepSpec:
    data = load_spec(QUICKSTART, results="s3://bucket/results").model_dump(mode="json")
    data.update(top)
    return parse_spec(data, "test")


@pytest.fixture
def cluster():
    with Cluster() as c:
        yield c


@pytest.fixture
def s3(request: pytest.FixtureRequest) -> Any:
    """A fresh bucket on the session's moto server (tests/s3_server.py), fake credentials."""
    return request.getfixturevalue("s3_bucket")


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "results")


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(round(seconds, 6))


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def backend(cluster: Cluster, store: FileStore, sleeps: Sleeps) -> KubernetesBackend:
    return KubernetesBackend(
        api_client=cluster.api_client(),
        store_opener=lambda spec: store,
        sleep=sleeps,
        rand=lambda: 0.5,
        timeouts=Timeouts(connect_s=2.0, read_s=2.0, watch_s=1),
        progress_every_s=0,
    )


@pytest.fixture
def ctl(cluster: Cluster) -> Controller:
    return Controller(cluster, NS)


def states(statuses) -> list[str]:
    return [str(s.state) for s in statuses]


# --- submit ---------------------------------------------------------------------------


def test_submit_twice_creates_once(cluster: Cluster, backend: KubernetesBackend) -> None:
    spec = make_spec()
    name = object_name(spec)
    first = backend.submit(backend.plan(spec))
    assert first.created == [f"configmap/{name}", f"job/{name}"]
    assert first.unchanged == [] and first.replaced == []
    second = backend.submit(backend.plan(spec))
    assert second.created == []
    assert second.unchanged == [f"configmap/{name}", f"job/{name}"]
    assert len(cluster.requests("CREATE", "jobs")) == 1
    assert len(cluster.requests("CREATE", "configmaps")) == 1

    # What the server holds is exactly what render_sweep produced (plus server fields).
    configmap, job = render_sweep(spec)
    stored_job = cluster.stored("jobs", NS)[name]
    assert stored_job["spec"] == job["spec"]
    assert stored_job["metadata"]["labels"] == job["metadata"]["labels"]
    stored_cm = cluster.stored("configmaps", NS)[name]
    assert stored_cm["data"] == configmap["data"]
    # The Job owns the ConfigMap, so the Job's TTL clean-up takes it along.
    (owner,) = stored_cm["metadata"]["ownerReferences"]
    assert owner["kind"] == "Job" and owner["name"] == name
    assert owner["uid"] == stored_job["metadata"]["uid"]
    patches = cluster.requests("UPDATE", "configmaps")
    assert len(patches) == 1  # the second submit saw the owner and left it alone
    assert patches[0].headers["Content-Type"] == "application/merge-patch+json"


def test_changed_spec_is_refused_without_replace(
    cluster: Cluster, backend: KubernetesBackend
) -> None:
    old = make_spec()
    backend.submit(backend.plan(old))
    new = make_spec(seeds=[1, 2])
    with pytest.raises(BadInput, match=r"another spec .*pass --replace"):
        backend.submit(backend.plan(new))
    assert set(cluster.stored("jobs", NS)) == {object_name(old)}
    assert cluster.requests("DELETE") == []

    result = backend.submit(backend.plan(new), replace=True)
    assert result.replaced == [f"job/{object_name(old)}", f"configmap/{object_name(old)}"]
    assert result.created == [f"configmap/{object_name(new)}", f"job/{object_name(new)}"]
    assert set(cluster.stored("jobs", NS)) == {object_name(new)}
    assert set(cluster.stored("configmaps", NS)) == {object_name(new)}
    job = cluster.stored("jobs", NS)[object_name(new)]
    assert job["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == new.spec_hash()
    assert job["spec"]["completions"] == 2
    deletes = cluster.requests("DELETE", "jobs")
    assert [d.params.get("propagationPolicy") for d in deletes] == ["Foreground"]


def test_dry_run_creates_nothing(cluster: Cluster, backend: KubernetesBackend) -> None:
    spec = make_spec()
    result = backend.submit(backend.plan(spec), dry_run=True)
    assert result.dry_run
    assert result.created == [f"configmap/{object_name(spec)}", f"job/{object_name(spec)}"]
    creates = cluster.requests("CREATE")
    assert len(creates) == 2 and all(c.params.get("dryRun") == "All" for c in creates)
    assert cluster.stored("jobs", NS) == {} and cluster.stored("configmaps", NS) == {}
    assert cluster.requests("UPDATE") == []

    # With a running sweep of another spec, --replace --dry-run deletes nothing either.
    backend.submit(backend.plan(spec))
    replaced = backend.submit(backend.plan(make_spec(seeds=[7])), replace=True, dry_run=True)
    assert replaced.replaced == [f"job/{object_name(spec)}", f"configmap/{object_name(spec)}"]
    assert cluster.requests("DELETE") == []
    assert set(cluster.stored("jobs", NS)) == {object_name(spec)}


def test_missing_namespace_is_bad_input(cluster: Cluster, backend: KubernetesBackend) -> None:
    cluster.api.faults.append(Fault("CREATE", "configmaps", 404))
    with pytest.raises(BadInput, match=r"namespace 'early-repair' does not exist"):
        backend.submit(backend.plan(make_spec()))
    assert cluster.stored("jobs", NS) == {}


def test_rejected_object_is_bad_input_with_the_servers_message(
    cluster: Cluster, backend: KubernetesBackend
) -> None:
    cluster.api.faults.append(Fault("CREATE", "configmaps", 422))
    with pytest.raises(BadInput, match=r"rejected it \(422\): injected 422"):
        backend.submit(backend.plan(make_spec()))


# --- retries --------------------------------------------------------------------------


def test_429_and_500_answers_are_retried(
    cluster: Cluster, backend: KubernetesBackend, sleeps: Sleeps
) -> None:
    spec = make_spec()
    cluster.api.faults += [
        Fault("LIST", "configmaps", 500),
        Fault("CREATE", "jobs", 429, times=2, headers={"Retry-After": "3"}),
        Fault("CREATE", "configmaps", 503),
    ]
    result = backend.submit(backend.plan(spec))
    assert result.created == [f"configmap/{object_name(spec)}", f"job/{object_name(spec)}"]
    # Back-off with jitter (rand=0.5: 0.5 x (1/2 + 0.5/2)) for 500/503; Retry-After for 429.
    assert sleeps == [0.375, 0.375, 3.0, 3.0]
    assert len(cluster.requests("CREATE", "jobs")) == 3  # two refused, one created
    assert len(cluster.stored("jobs", NS)) == 1


def test_backoff_grows_and_gives_up(
    cluster: Cluster, backend: KubernetesBackend, sleeps: Sleeps
) -> None:
    cluster.api.faults.append(Fault("LIST", "jobs", 503, times=99))
    with pytest.raises(ClusterUnavailable, match="kept answering 503") as info:
        backend.status("quickstart")
    assert info.value.exit_code == EXIT_TRANSIENT  # try again later, not "bad input"
    assert len(cluster.requests("LIST", "jobs")) == backend.client.retry.attempts == 6
    assert sleeps == [0.375, 0.75, 1.5, 3.0, 6.0]  # doubling, capped at max_backoff_s


def test_create_answered_409_after_a_timeout_counts_as_created(
    cluster: Cluster, backend: KubernetesBackend, sleeps: Sleeps
) -> None:
    spec = make_spec()
    backend.client.timeouts = Timeouts(connect_s=2.0, read_s=0.5, watch_s=1)
    # The server stores the Job but its answer comes after the client's read timeout.
    cluster.api.faults.append(Fault("CREATE", "jobs", 0, delay_after=1.0))
    result = backend.submit(backend.plan(spec))
    assert result.created == [f"configmap/{object_name(spec)}", f"job/{object_name(spec)}"]
    assert len(cluster.requests("CREATE", "jobs")) == 2  # timed out, then 409
    assert len(sleeps) == 1
    assert len(cluster.stored("jobs", NS)) == 1


def test_foreign_object_with_our_name_is_not_taken_over(
    cluster: Cluster, backend: KubernetesBackend, ctl: Controller
) -> None:
    spec = make_spec()
    name = object_name(spec)
    ctl.core.create_namespaced_config_map(
        NS, {"metadata": {"name": name}, "data": {"x": "y"}}, _preload_content=False
    )
    with pytest.raises(BadInput, match=f"configmap/{name} already exists"):
        backend.submit(backend.plan(spec))
    assert cluster.stored("jobs", NS) == {}


# --- status ---------------------------------------------------------------------------


def test_status_follows_indexes_from_pending_to_succeeded_and_failed(
    cluster: Cluster, backend: KubernetesBackend, ctl: Controller, store: FileStore
) -> None:
    spec = make_spec()
    backend.submit(backend.plan(spec))
    job = object_name(spec)
    runs = [r.name for r in spec.runs()]

    st = backend.status("quickstart")
    assert [s.run for s in st] == runs
    assert states(st) == ["PENDING"] * 3
    assert st[0].message == "waiting for a pod"

    pods = [ctl.start_pod(job, i, node=f"node-{i}") for i in range(3)]
    ctl.pod_status(
        pods[2],
        {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "restartCount": 0,
                    "state": {
                        "waiting": {
                            "reason": "CreateContainerConfigError",
                            "message": 'secret "early-repair-s3" not found',
                        }
                    },
                }
            ],
        },
    )
    ctl.run_pod(pods[0])
    ctl.run_pod(pods[1])
    st = backend.status("quickstart")
    assert states(st) == ["RUNNING", "RUNNING", "PENDING"]
    assert [s.node for s in st] == ["node-0", "node-1", "node-2"]
    assert st[2].message == 'CreateContainerConfigError: secret "early-repair-s3" not found'

    # Progress comes from the store, through the result layout's keys.
    run0 = runs[0]
    store.write_bytes(results.checkpoint("quickstart", run0, 1), b"x")
    store.write_bytes(results.checkpoint("quickstart", run0, 5), b"x")
    write_json(store, results.summary_json("quickstart", run0), {"checkpoint_epochs": [1, 5]})
    write_json(store, results.base_metrics("quickstart", run0, 1), {})
    write_json(store, results.repair_metrics("quickstart", run0, 1, 3), {})
    st = backend.status("quickstart")
    assert st[0].progress == {
        "epoch": 5,
        "checkpoint": 5,
        "trained": True,
        "evaluated": 1,
        "checkpoints": 2,
        "repairs_done": 1,
        "repairs_total": 6,
        "done": False,
        "complete": False,
    }

    # Index 0 succeeds; index 1 crashes once (retried), then exits 2 (bad input: FailIndex).
    ctl.end_pod(pods[0], 0)
    ctl.job_status(job, {"completedIndexes": "0", "active": 2})
    ctl.end_pod(pods[1], 1, "Traceback...\nRuntimeError: CUDA error")
    st = backend.status("quickstart")
    assert states(st) == ["SUCCEEDED", "PENDING", "PENDING"]
    assert st[1].message == "retrying: exit 1 (Error): RuntimeError: CUDA error"
    retry = ctl.start_pod(job, 1, node="node-9")
    ctl.run_pod(retry)
    st = backend.status("quickstart")
    assert (str(st[1].state), st[1].restarts, st[1].node) == ("RUNNING", 1, "node-9")
    ctl.end_pod(retry, 2, "error: datasets.0.input: no such folder")
    ctl.job_status(job, {"failedIndexes": "1"})
    st = backend.status("quickstart")
    assert str(st[1].state) == "FAILED"
    assert st[1].message == "exit 2 (Error): error: datasets.0.input: no such folder"

    ctl.run_pod(pods[2])
    ctl.end_pod(pods[2], 0)
    ctl.job_status(
        job,
        {
            "completedIndexes": "0,2",
            "conditions": [{"type": "Failed", "status": "True", "reason": "FailedIndexes"}],
        },
    )
    st = backend.status("quickstart")
    assert states(st) == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert all(s.state.terminal for s in st)


def test_status_of_an_unknown_sweep_is_bad_input(backend: KubernetesBackend) -> None:
    with pytest.raises(BadInput, match=r"no sweep 'nope' in namespace 'early-repair'"):
        backend.status("nope")


def test_status_when_the_store_is_unreachable_still_shows_the_cluster(
    cluster: Cluster, sleeps: Sleeps
) -> None:
    def broken(spec: SweepSpec) -> Any:
        raise BadInput("s3://bucket/results: bucket does not exist")

    backend = KubernetesBackend(api_client=cluster.api_client(), store_opener=broken, sleep=sleeps)
    backend.submit(backend.plan(make_spec()))
    st = backend.status("quickstart")
    assert states(st) == ["PENDING"] * 3
    assert st[0].progress["error"].startswith("store not readable: s3://bucket/results")


# --- watch ----------------------------------------------------------------------------


def test_watch_relists_after_410_gone_and_carries_on(
    cluster: Cluster, backend: KubernetesBackend, ctl: Controller
) -> None:
    spec = make_spec(seeds=[1, 2])
    backend.submit(backend.plan(spec))
    job = object_name(spec)
    # The first watch is told its resourceVersion is too old, as an API server does when
    # its watch cache has moved on.
    expired = {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": 410,
            "reason": "Expired",
            "message": "too old resource version: 1000 (1200)",
        },
    }
    cluster.api["watch", kmock.resource("v1/pods")][:1] << (expired,)

    updates = backend.watch("quickstart")
    assert states(next(updates)) == ["PENDING", "PENDING"]
    p0 = ctl.start_pod(job, 0)
    ctl.run_pod(p0)
    assert states(next(updates)) == ["RUNNING", "PENDING"]
    assert len(cluster.requests("LIST", "pods")) == 2  # the first list, the re-list after 410

    p1 = ctl.start_pod(job, 1)
    ctl.run_pod(p1)
    assert states(next(updates)) == ["RUNNING", "RUNNING"]
    watches = cluster.requests("WATCH", "pods")
    # Each watch starts from the resourceVersion of the list before it, newer after 410.
    assert int(watches[1].params["resourceVersion"]) > int(watches[0].params["resourceVersion"])
    assert all(w.params.get("allowWatchBookmarks") == "True" for w in watches)
    ctl.end_pod(p0, 0)
    assert states(next(updates)) == ["SUCCEEDED", "RUNNING"]
    ctl.end_pod(p1, 0)
    ctl.job_status(job, {"completedIndexes": "0-1"})
    assert states(next(updates)) == ["SUCCEEDED", "SUCCEEDED"]
    with pytest.raises(StopIteration):  # every run ended: the watch ends by itself
        next(updates)


def test_watch_backs_off_with_jitter_on_errors(
    cluster: Cluster, backend: KubernetesBackend, ctl: Controller, sleeps: Sleeps
) -> None:
    spec = make_spec(seeds=[1])
    backend.submit(backend.plan(spec))
    cluster.api.faults.append(Fault("WATCH", "pods", 500, times=2))
    updates = backend.watch("quickstart")
    assert states(next(updates)) == ["PENDING"]
    pod = ctl.start_pod(object_name(spec), 0)
    ctl.run_pod(pod)
    assert states(next(updates)) == ["RUNNING"]
    assert sleeps == [0.375, 0.75]
    ctl.end_pod(pod, 0)
    assert states(next(updates)) == ["SUCCEEDED"]


def test_watch_gives_up_by_the_same_policy_as_a_call(
    cluster: Cluster, backend: KubernetesBackend, sleeps: Sleeps
) -> None:
    spec = make_spec(seeds=[1])
    backend.submit(backend.plan(spec))
    cluster.api.faults.append(Fault("WATCH", "pods", 503, times=99))
    updates = backend.watch("quickstart")
    assert states(next(updates)) == ["PENDING"]
    with pytest.raises(ClusterUnavailable, match=r"gave up after 6 failures in a row") as info:
        next(updates)
    assert info.value.exit_code == EXIT_TRANSIENT
    # Six watches, the pauses between them those of a call that keeps failing.
    assert len(cluster.requests("WATCH", "pods")) == 6
    assert sleeps == [0.375, 0.75, 1.5, 3.0, 6.0]


def test_watch_sees_job_only_changes_when_a_watch_times_out(
    cluster: Cluster, backend: KubernetesBackend, ctl: Controller
) -> None:
    spec = make_spec(seeds=[1, 2])
    backend.submit(backend.plan(spec))
    job = object_name(spec)
    updates = backend.watch("quickstart")
    assert states(next(updates)) == ["PENDING", "PENDING"]
    # activeDeadlineSeconds ran out: only the Job changes, no pod event comes. The server
    # ends each watch after timeoutSeconds (1 s here); the backend then re-reads the Job.
    deadline = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}
    ctl.job_status(job, {"conditions": [deadline]})
    final = next(updates)
    assert states(final) == ["FAILED", "FAILED"]
    assert final[0].message == "DeadlineExceeded"
    watches = cluster.requests("WATCH", "pods")
    assert len(watches) >= 1 and watches[0].params["timeoutSeconds"] == "1"


def test_watch_ends_with_cancelled_runs_when_the_job_is_deleted(
    cluster: Cluster, backend: KubernetesBackend, ctl: Controller
) -> None:
    spec = make_spec(seeds=[1, 2])
    backend.submit(backend.plan(spec))
    job = object_name(spec)
    p0 = ctl.start_pod(job, 0)
    ctl.end_pod(p0, 0)
    ctl.job_status(job, {"completedIndexes": "0"})
    updates = backend.watch("quickstart")
    assert states(next(updates)) == ["SUCCEEDED", "PENDING"]
    backend.cancel("quickstart")
    ctl.pod_status(p0, {"phase": "Succeeded"})  # a pod event: the backend looks again
    final = next(updates)
    assert states(final) == ["SUCCEEDED", "CANCELLED"]
    assert final[1].message == "Job was deleted"
    with pytest.raises(StopIteration):
        next(updates)


# --- logs -----------------------------------------------------------------------------


def test_logs_from_the_pod_else_from_the_store(
    cluster: Cluster, backend: KubernetesBackend, ctl: Controller, store: FileStore
) -> None:
    spec = make_spec()
    backend.submit(backend.plan(spec))
    job = object_name(spec)
    runs = [r.name for r in spec.runs()]
    pod = ctl.start_pod(job, 0)
    ctl.run_pod(pod)
    cluster.api["get", kmock.resource("v1/pods"), kmock.subresource("log"), kmock.name(pod)] << (
        b"epoch 1 loss 2.30\nepoch 2 loss 1.10\n"
    )
    store.write_bytes(results.log("quickstart", runs[1]), b"archived line 1\narchived line 2\n")

    assert list(backend.logs("quickstart", runs[0])) == ["epoch 1 loss 2.30", "epoch 2 loss 1.10"]
    (log_req,) = cluster.requests("FETCH", "pods")[-1:]
    assert log_req.subresource == "log" and log_req.params["container"] == "trainer"
    assert list(backend.logs("quickstart", "1")) == ["archived line 1", "archived line 2"]
    everything = list(backend.logs("quickstart"))
    assert everything == [
        f"==> {runs[0]} <==",
        "epoch 1 loss 2.30",
        "epoch 2 loss 1.10",
        f"==> {runs[1]} <==",
        "archived line 1",
        "archived line 2",
        f"==> {runs[2]} <==",
    ]
    with pytest.raises(BadInput, match="--follow: pass --run"):
        list(backend.logs("quickstart", follow=True))
    with pytest.raises(BadInput, match="--run: sweep 'quickstart' has no run 'nope'"):
        list(backend.logs("quickstart", "nope"))


def test_logs_fall_back_to_the_archive_when_the_pod_is_gone(
    cluster: Cluster, backend: KubernetesBackend, ctl: Controller, store: FileStore
) -> None:
    spec = make_spec(seeds=[1])
    backend.submit(backend.plan(spec))
    pod = ctl.start_pod(object_name(spec), 0)
    ctl.end_pod(pod, 0)
    # The kubelet no longer has the container (node drained): the API answers 404.
    cluster.api["get", kmock.resource("v1/pods"), kmock.subresource("log")] << 404
    store.write_bytes(results.log("quickstart", spec.runs()[0].name), b"from the store\n")
    assert list(backend.logs("quickstart", follow=True)) == ["from the store"]


# --- cancel ---------------------------------------------------------------------------


def test_cancel_removes_the_objects_and_keeps_results(
    cluster: Cluster, backend: KubernetesBackend, store: FileStore
) -> None:
    spec = make_spec()
    backend.submit(backend.plan(spec))
    store.write_bytes(results.success("quickstart", spec.runs()[0].name), b"")
    deleted = backend.cancel("quickstart").stopped
    name = object_name(spec)
    assert deleted == [f"job/{name}", f"configmap/{name}"]
    assert cluster.stored("jobs", NS) == {} and cluster.stored("configmaps", NS) == {}
    (delete_job,) = cluster.requests("DELETE", "jobs")
    assert delete_job.params["propagationPolicy"] == "Foreground"  # pods go with the Job
    assert store.exists(results.success("quickstart", spec.runs()[0].name))
    with pytest.raises(BadInput, match="nothing to cancel"):
        backend.cancel("quickstart")


# --- the CLI over a kubeconfig -------------------------------------------------------


@pytest.fixture
def kubeconfig(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = cluster.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


@pytest.fixture
def spec_file(tmp_path: Path, s3) -> Path:
    """The quickstart with results in a (moto) bucket behind an in-cluster-only endpoint."""
    path = tmp_path / "sweep.yaml"
    path.write_text(
        QUICKSTART.read_text()
        + f"results: {s3.uri('sweeps')}\n"
        + "storage:\n  endpoint_url: http://minio.early-repair.svc:9000\n"
    )
    return path


def test_plan_and_dry_run_never_create_anything(
    cli, cluster: Cluster, kubeconfig: Path, spec_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "objects.yaml"
    r = cli("plan", spec_file, "--out", out)
    assert r.code == 0, r.err
    assert cluster.requests() == []  # plan does not even talk to the cluster

    r = cli("submit", spec_file, "--dry-run")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["dry_run"] is True and len(doc["created"]) == 2
    assert "dry run, nothing created" in r.err
    assert all(c.params.get("dryRun") == "All" for c in cluster.requests("CREATE"))
    assert cluster.requests("UPDATE") == [] and cluster.requests("DELETE") == []
    assert cluster.stored("jobs", NS) == {} and cluster.stored("configmaps", NS) == {}
    # What the dry run sent is what plan wrote.
    sent = [c.data for c in cluster.requests("CREATE")]
    assert sent == list(yaml.safe_load_all(out.read_text()))


def test_cli_submit_status_logs_cancel(
    cli, cluster: Cluster, kubeconfig: Path, spec_file: Path, s3
) -> None:
    from orchestrator.store import open_store

    r = cli("submit", spec_file)
    assert r.code == 0, r.err
    name = json.loads(r.out)["name"]
    assert json.loads(r.out)["created"] == [f"configmap/{name}", f"job/{name}"]
    assert "early-repair status quickstart" in r.err
    r = cli("submit", spec_file)
    assert r.code == 0 and len(json.loads(r.out)["unchanged"]) == 2

    ctl = Controller(cluster, NS)
    pod = ctl.start_pod(name, 0, node="gpu-7")
    ctl.run_pod(pod)
    # The pods reach S3 at an in-cluster address; from here --endpoint-url reaches it.
    spec = load_spec(spec_file)
    store = open_store(spec.results, endpoint_url=s3.endpoint_url)
    store.write_bytes(results.checkpoint("quickstart", spec.runs()[0].name, 5), b"x")
    r = cli("status", "quickstart", "--json", "--endpoint-url", s3.endpoint_url)
    assert r.code == 0, r.err
    runs = json.loads(r.out)["runs"]
    assert [x["state"] for x in runs] == ["RUNNING", "PENDING", "PENDING"]
    assert runs[0]["node"] == "gpu-7"
    assert runs[0]["progress"]["epoch"] == 5
    r = cli("status", "quickstart", "--endpoint-url", s3.endpoint_url, "-o", "table")
    assert r.code == 0 and "RUNNING" in r.out and "gpu-7" in r.out and "epoch 5" in r.out

    store.write_bytes(results.log("quickstart", spec.runs()[1].name), b"archived\n")
    r = cli("logs", "quickstart", "--run", "1", "--endpoint-url", s3.endpoint_url)
    assert (r.code, r.out) == (0, "archived\n")

    ctl.end_pod(pod, 2, "bad input")
    ctl.job_status(name, {"failedIndexes": "0"})
    r = cli("status", "quickstart", "--json", "--endpoint-url", s3.endpoint_url)
    assert r.code == 1  # a run failed
    assert json.loads(r.out)["runs"][0]["state"] == "FAILED"

    r = cli("cancel", "quickstart")
    assert r.code == 0, r.err
    assert json.loads(r.out)["deleted"] == [f"job/{name}", f"configmap/{name}"]
    r = cli("status", "quickstart")
    assert r.code == 2 and r.err.startswith("error: no sweep 'quickstart'")


def test_cli_watch_prints_one_json_line_per_change(
    cli, cluster: Cluster, kubeconfig: Path, spec_file: Path, tmp_path: Path, s3
) -> None:
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump({**yaml.safe_load(spec_file.read_text()), "seeds": [1]}))
    assert cli("submit", one).code == 0
    name = object_name(load_spec(one))
    ctl = Controller(cluster, NS)
    pod = ctl.start_pod(name, 0)
    ctl.end_pod(pod, 0)
    ctl.job_status(name, {"completedIndexes": "0"})
    r = cli("status", "quickstart", "--watch", "--json", "--endpoint-url", s3.endpoint_url)
    assert r.code == 0, r.err
    lines = [json.loads(x) for x in r.out.splitlines()]
    assert [x["runs"][0]["state"] for x in lines] == ["SUCCEEDED"]
    r = cli("status", "quickstart", "--watch", "--endpoint-url", s3.endpoint_url, "-o", "table")
    assert r.code == 0 and "1 succeeded" in r.out and "done" not in r.out


def test_cli_bad_input(cli, cluster: Cluster, kubeconfig: Path, tmp_path: Path) -> None:
    r = cli("submit", QUICKSTART)  # results is a local folder
    assert r.code == 2 and "set results to s3://" in r.err
    assert cluster.requests() == []
    r = cli("submit", QUICKSTART, "--namespace", "Bad_NS")
    assert r.code == 2 and r.err.startswith("error: --namespace: 'Bad_NS'")
    r = cli("status", "quickstart", "--context", "no-such-context")
    assert r.code == 2 and r.err.startswith("error: --context: cannot use context")
    assert len(r.err.strip().splitlines()) == 1


def test_cli_without_any_kubernetes_configuration(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    r = cli("status", "quickstart")
    assert r.code == 2
    assert r.err.strip() == (
        "error: no Kubernetes configuration: set KUBECONFIG (or write ~/.kube/config),"
        " or run inside a cluster"
    )


def test_progress_from_a_real_s3_store(cluster: Cluster, s3, sleeps: Sleeps) -> None:
    from orchestrator.store import open_store

    spec = make_spec(
        results=s3.uri("sweeps"),
        storage={
            "endpoint_url": s3.endpoint_url,
            "region": None,
            "addressing_style": "path",
        },
    )
    backend = KubernetesBackend(api_client=cluster.api_client(), sleep=sleeps)
    backend.submit(backend.plan(spec))
    run = spec.runs()[2].name
    s3 = open_store(spec.results, endpoint_url=s3.endpoint_url, addressing_style="path")
    s3.write_bytes(results.success("quickstart", run), b"")
    s3.write_bytes(results.log("quickstart", run), b"archived in S3\n")
    st = backend.status("quickstart")
    assert [s.progress.get("done") for s in st] == [False, False, True]
    assert list(backend.logs("quickstart", run)) == ["archived in S3"]


# --- an API server that cannot be reached -----------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[str]:
    """A loopback URL where nothing listens: the port is bound (so nobody else takes it)
    but not listening, so every connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_unreachable_api_server_fails_at_once(closed_port: str, sleeps: Sleeps) -> None:
    from kubernetes import client

    cfg = client.Configuration(host=closed_port)
    cfg.retries = False
    backend = KubernetesBackend(api_client=client.ApiClient(cfg), sleep=sleeps)
    with pytest.raises(ClusterUnavailable) as info:
        backend.status("quickstart")
    assert str(info.value) == (
        f"list jobs: cannot reach the Kubernetes API at {closed_port} (connection refused):"
        " check that the cluster is up and that KUBECONFIG / --context point at it"
    )
    assert sleeps == []  # no back-off before the first answer: one try, one line
    with pytest.raises(ClusterUnavailable):
        backend.submit(backend.plan(make_spec()))
    assert sleeps == []


def test_a_server_that_answered_once_is_retried_when_it_goes_away(sleeps: Sleeps) -> None:
    with Cluster() as cluster:
        backend = KubernetesBackend(api_client=cluster.api_client(), sleep=sleeps, rand=lambda: 0.5)
        backend.submit(backend.plan(make_spec()))
    # The server has gone (an API server restarting): now connections are refused.
    with pytest.raises(ClusterUnavailable, match=r"\(connection refused after 6 tries\)"):
        backend.status("quickstart")
    assert sleeps == [0.375, 0.75, 1.5, 3.0, 6.0]


def test_cli_against_a_closed_port_is_one_line_with_the_transient_code(
    cli, closed_port: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec_file: Path
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "gone", "cluster": {"server": closed_port}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
        "current-context": "gone",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    for args in (("submit", spec_file), ("status", "quickstart"), ("cancel", "quickstart")):
        r = cli(*args)
        assert r.code == EXIT_TRANSIENT, (args, r.err)
        assert r.out == ""
        (line,) = r.err.strip().splitlines()
        assert line.startswith("error: ") and "cannot reach the Kubernetes API at" in line
        assert "connection refused" in line and "Traceback" not in r.err


# --- Kueue ------------------------------------------------------------------------------


def kueue_condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


NO_FIT = (
    "couldn't assign flavors to pod set main: insufficient quota for cpu in flavor"
    " early-repair, previously considered podsets requests (0) + current podset request (6)"
    " > maximum capacity (4)"
)


def check_kueue_crd(workload: dict[str, Any], version: str) -> None:
    """The stand-in's Workload is one Kueue's CRD admits (when KUEUE_CRD_DIR is set): the
    conditions and admission the backend reads are shaped as a real Kueue writes them."""
    if not os.environ.get("KUEUE_CRD_DIR"):
        return
    crd = load_crds(Path(os.environ["KUEUE_CRD_DIR"]))[("kueue.x-k8s.io", "Workload")]
    jsonschema.Draft7Validator(strict_crd_schema(crd, version)).validate(
        {**workload, "metadata": {}}
    )


def queued_spec(**kubernetes: Any) -> SweepSpec:
    return make_spec(kubernetes={"queue": "early-repair", **kubernetes})


def test_status_says_why_kueue_holds_a_sweep_back_and_what_it_admitted(
    cluster: Cluster, backend: KubernetesBackend, ctl: Controller
) -> None:
    spec = queued_spec()
    backend.submit(backend.plan(spec))
    job = object_name(spec)
    sent = cluster.stored("jobs", NS)[job]
    assert sent["metadata"]["annotations"][MIN_PARALLELISM_ANNOTATION] == "1"
    # Kueue's webhook suspends the Job; its job controller creates the Workload.
    ctl.job_status(job, {"conditions": [{"type": "Suspended", "status": "True"}]})
    st = backend.status("quickstart")
    assert [s.message for s in st] == [
        "suspended; Kueue has not created a Workload for the Job yet"
    ] * 3
    workload = ctl.kueue_workload(job)
    assert ctl.workload(workload)["spec"]["podSets"][0] | {"template": None} == {
        "name": "main",
        "count": 3,
        "minCount": 1,
        "template": None,
    }
    ctl.workload_status(
        workload, {"conditions": [kueue_condition("QuotaReserved", "False", "Pending", NO_FIT)]}
    )
    st = backend.status("quickstart")
    assert [str(s.state) for s in st] == ["PENDING"] * 3
    assert st[0].message == f"suspended; not admitted by Kueue (Pending): {NO_FIT}"
    lists = cluster.requests("LIST", "workloads")
    assert lists[-1].params["labelSelector"] == (
        f"kueue.x-k8s.io/job-uid={sent['metadata']['uid']}"
    )
    assert lists[-1].resource.group == "kueue.x-k8s.io"
    assert lists[-1].resource.version == "v1beta2"

    # Partial admission: two runs at once fit; Kueue lowers parallelism and resumes.
    ctl.workload_status(
        workload,
        {
            "conditions": [
                kueue_condition("QuotaReserved", "True", "QuotaReserved", "Quota reserved"),
                kueue_condition("Admitted", "True", "Admitted", "The workload is admitted"),
            ],
            "admission": {
                "clusterQueue": "early-repair",
                "podSetAssignments": [
                    {
                        "name": "main",
                        "flavors": {"cpu": "early-repair", "memory": "early-repair"},
                        "resourceUsage": {"cpu": "4", "memory": "16Gi"},
                        "count": 2,
                    }
                ],
            },
        },
    )
    ctl.job_status(job, {"conditions": [], "active": 2})
    pods = [ctl.start_pod(job, i) for i in range(2)]
    for p in pods:
        ctl.run_pod(p)
    st = backend.status("quickstart")
    assert [str(s.state) for s in st] == ["RUNNING", "RUNNING", "PENDING"]
    assert st[2].message == (
        "waiting for a pod; admitted by ClusterQueue early-repair with 2 of 3 runs at once"
        " (partial admission)"
    )
    check_kueue_crd(ctl.workload(workload), "v1beta2")


def test_watch_follows_the_admission(
    cluster: Cluster, backend: KubernetesBackend, ctl: Controller
) -> None:
    spec = make_spec(seeds=[1], kubernetes={"queue": "early-repair"})
    backend.submit(backend.plan(spec))
    job = object_name(spec)
    ctl.job_status(job, {"conditions": [{"type": "Suspended", "status": "True"}]})
    workload = ctl.kueue_workload(job)
    updates = backend.watch("quickstart")
    assert next(updates)[0].message == "suspended; queued in Kueue; not considered yet"
    ctl.workload_status(
        workload, {"conditions": [kueue_condition("QuotaReserved", "False", "Pending", NO_FIT)]}
    )
    # Only the Workload changed: the next watch timeout (1 s) re-reads Job and Workload.
    assert next(updates)[0].message == f"suspended; not admitted by Kueue (Pending): {NO_FIT}"


@pytest.mark.parametrize("served", [("v1beta1",), ()], ids=["kueue-0.14", "no-kueue"])
def test_older_kueue_or_none(served: tuple[str, ...], sleeps: Sleeps) -> None:
    with Cluster(kueue_versions=served) as cluster:
        backend = KubernetesBackend(api_client=cluster.api_client(), sleep=sleeps)
        spec = queued_spec()
        backend.submit(backend.plan(spec))
        ctl = Controller(cluster, NS)
        job = object_name(spec)
        ctl.job_status(job, {"conditions": [{"type": "Suspended", "status": "True"}]})
        if served:
            workload = ctl.kueue_workload(job, version="v1beta1")
            pending = [kueue_condition("QuotaReserved", "False", "Pending", NO_FIT)]
            ctl.workload_status(workload, {"conditions": pending}, version="v1beta1")
            check_kueue_crd(ctl.workload(workload, "v1beta1"), "v1beta1")
            want = f"suspended; not admitted by Kueue (Pending): {NO_FIT}"
        else:
            want = (
                "suspended; this cluster serves no Kueue Workloads (kueue.x-k8s.io): is Kueue"
                " installed?"
            )
        assert backend.status("quickstart")[0].message == want
        assert backend.status("quickstart")[0].message == want
        versions = [r.resource.version for r in cluster.requests("LIST", "workloads")]
        if served:
            # v1beta2 first; once v1beta1 answered, only v1beta1.
            assert versions == ["v1beta2", "v1beta1", "v1beta1"]
        else:
            assert versions == ["v1beta2", "v1beta1"] * 2
        assert sleeps == []


def test_a_role_that_cannot_read_workloads_costs_one_line_not_the_status(
    cluster: Cluster, backend: KubernetesBackend, ctl: Controller
) -> None:
    spec = queued_spec()
    backend.submit(backend.plan(spec))
    ctl.job_status(object_name(spec), {"conditions": [{"type": "Suspended", "status": "True"}]})
    cluster.api.faults.append(Fault("LIST", "workloads", 403, times=99))
    st = backend.status("quickstart")
    assert [str(s.state) for s in st] == ["PENDING"] * 3
    assert st[0].message == (
        "suspended; cannot read Kueue Workloads (403): bind the submitter Role from"
        " k8s/rbac.yaml (or the chart's) to your user"
    )


def test_no_workload_lookup_for_a_sweep_without_a_queue(
    cluster: Cluster, backend: KubernetesBackend
) -> None:
    backend.submit(backend.plan(make_spec()))
    backend.status("quickstart")
    assert cluster.requests("LIST", "workloads") == []
