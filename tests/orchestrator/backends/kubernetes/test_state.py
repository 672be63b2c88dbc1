"""The explicit Job/Pod -> RunState tables and the store progress, on plain dicts."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.backends.base import RunState
from orchestrator.backends.kubernetes.state import (
    JOB_CONDITION_STATE,
    POD_PHASE_STATE,
    IndexRun,
    parse_intervals,
    run_states,
    workload_admission,
)
from orchestrator.backends.progress import describe, history_epoch, run_progress
from orchestrator.results import layout as results
from orchestrator.spec import parse_spec

RUNS = [IndexRun(0, "a"), IndexRun(1, "b"), IndexRun(2, "c")]


def job(status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j", **meta}, "status": status or {}}


def pod(
    index: int,
    phase: str,
    *,
    created: str = "2026-01-01T00:00:00Z",
    name: str | None = None,
    **status: Any,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name or f"j-{index}-{created[-9:-1]}",
            "creationTimestamp": created,
            "labels": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "spec": {"nodeName": f"n{index}"},
        "status": {"phase": phase, **status},
    }


def terminated(code: int, message: str = "") -> list[dict[str, Any]]:
    return [
        {
            "name": "trainer",
            "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": "Error", "message": message}},
        }
    ]


def one(states: list, i: int) -> tuple[str, str]:
    return str(states[i].state), states[i].message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, set()),
        ("", set()),
        ("3", {3}),
        ("0-2,5", {0, 1, 2, 5}),
        ("1,3-4,7-7", {1, 3, 4, 7}),
        ("x,2", {2}),  # malformed parts are left undecided, not guessed
    ],
)
def test_parse_intervals(text: str | None, expected: set[int]) -> None:
    assert parse_intervals(text) == expected


def test_tables_cover_every_documented_value() -> None:
    assert set(POD_PHASE_STATE) == {"Pending", "Running", "Succeeded", "Failed", "Unknown"}
    assert set(JOB_CONDITION_STATE) == {
        "Complete",
        "SuccessCriteriaMet",
        "Failed",
        "FailureTarget",
        "Suspended",
    }


def test_index_lists_win_over_pods() -> None:
    pods = [pod(0, "Running"), pod(1, "Running")]
    st = run_states(job({"completedIndexes": "0", "failedIndexes": "1"}), pods, RUNS)
    assert [str(s.state) for s in st] == ["SUCCEEDED", "FAILED", "PENDING"]
    assert st[2].message == "waiting for a pod"


def test_failed_index_says_why_from_the_termination_message() -> None:
    pods = [pod(1, "Failed", containerStatuses=terminated(2, "x\nerror: datasets.0: bad\n"))]
    st = run_states(job({"failedIndexes": "1"}), pods, RUNS)
    assert one(st, 1) == ("FAILED", "exit 2 (Error): error: datasets.0: bad")


def test_job_conditions_decide_open_indexes() -> None:
    deadline = {
        "type": "Failed",
        "status": "True",
        "reason": "DeadlineExceeded",
        "message": "Job was active longer than specified deadline",
    }
    st = run_states(job({"completedIndexes": "0", "conditions": [deadline]}), [], RUNS)
    assert [str(s.state) for s in st] == ["SUCCEEDED", "FAILED", "FAILED"]
    assert st[1].message == "DeadlineExceeded: Job was active longer than specified deadline"
    suspended = {"type": "Suspended", "status": "True", "reason": "JobSuspended"}
    st = run_states(job({"conditions": [suspended]}), [pod(0, "Failed")], RUNS)
    assert one(st, 0) == ("PENDING", "suspended: waiting for admission (Kueue) or resume")
    not_true = {"type": "Failed", "status": "False"}
    assert str(run_states(job({"conditions": [not_true]}), [], RUNS)[0].state) == "PENDING"


def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def workload(*conditions: dict[str, Any], count: int | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conditions)}
    if count is not None:
        status["admission"] = {
            "clusterQueue": "early-repair",
            "podSetAssignments": [{"name": "main", "count": count}],
        }
    return {"spec": {"podSets": [{"name": "main", "count": 5, "minCount": 1}]}, "status": status}


# Kueue's own words (pkg/scheduler/flavorassigner) for a Job wider than the whole quota.
NO_FIT = (
    "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor"
    " early-repair, previously considered podsets requests (0) + current podset request (5)"
    " > maximum capacity (4)"
)


def test_workload_conditions_say_where_kueue_stands() -> None:
    assert workload_admission(None) == "Kueue has not created a Workload for the Job yet"
    assert workload_admission(workload()) == "queued in Kueue; not considered yet"
    pending = workload(condition("QuotaReserved", "False", "ExceedsMaxQuota", NO_FIT))
    assert workload_admission(pending) == f"not admitted by Kueue (ExceedsMaxQuota): {NO_FIT}"
    reserved = workload(condition("QuotaReserved", "True", "QuotaReserved"), count=5)
    assert workload_admission(reserved) == (
        "quota reserved in ClusterQueue early-repair; waiting for admission checks"
    )
    admitted = [condition("QuotaReserved", "True", "QuotaReserved")]
    admitted.append(condition("Admitted", "True", "Admitted"))
    assert workload_admission(workload(*admitted, count=5)) == (
        "admitted by ClusterQueue early-repair"
    )
    assert workload_admission(workload(*admitted, count=4)) == (
        "admitted by ClusterQueue early-repair with 4 of 5 runs at once (partial admission)"
    )
    evicted = condition("Evicted", "True", "Preempted", "Preempted to accommodate a workload")
    assert workload_admission(workload(*admitted, evicted, count=4)) == (
        "evicted by Kueue (Preempted): Preempted to accommodate a workload"
    )
    finished = condition("Finished", "True", "JobFinished", "Job finished successfully")
    assert workload_admission(workload(*admitted, finished, count=5)) == ""


def test_runs_waiting_for_kueue_say_why() -> None:
    suspended = {"type": "Suspended", "status": "True", "reason": "JobSuspended"}
    why = f"not admitted by Kueue (ExceedsMaxQuota): {NO_FIT}"
    st = run_states(job({"conditions": [suspended]}), [], RUNS, admission=why)
    assert [one(st, i) for i in range(3)] == [("PENDING", f"suspended; {why}")] * 3
    # Admitted in part: started runs say nothing about Kueue, waiting ones do.
    part = "admitted by ClusterQueue q with 2 of 3 runs at once (partial admission)"
    st = run_states(job({"active": 2}), [pod(0, "Running"), pod(1, "Running")], RUNS, None, part)
    assert [one(st, i) for i in range(3)] == [
        ("RUNNING", ""),
        ("RUNNING", ""),
        ("PENDING", f"waiting for a pod; {part}"),
    ]
    # Terminal runs keep their own message.
    st = run_states(job({"completedIndexes": "0-2"}), [], RUNS, admission=part)
    assert [one(st, i) for i in range(3)] == [("SUCCEEDED", "")] * 3


def test_a_job_being_deleted_cancels_open_runs() -> None:
    st = run_states(
        job({"completedIndexes": "2"}, deletionTimestamp="2026-01-01T00:00:00Z"),
        [pod(0, "Running")],
        RUNS,
    )
    assert [str(s.state) for s in st] == ["CANCELLED", "CANCELLED", "SUCCEEDED"]


def test_pod_phases_and_retries() -> None:
    disrupted = pod(
        0,
        "Failed",
        conditions=[
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
        ],
    )
    unschedulable = pod(
        1,
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    weird = pod(2, "Hibernating")
    st = run_states(job(), [disrupted, unschedulable, weird], RUNS)
    assert one(st, 0) == ("PENDING", "retrying: pod was disrupted (not counted)")
    assert one(st, 1) == (
        "PENDING",
        "Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
    )
    assert one(st, 2) == ("UNKNOWN", "unknown pod phase 'Hibernating'")
    st = run_states(job(), [pod(0, "Unknown"), pod(1, "Succeeded")], RUNS)
    assert one(st, 0) == ("UNKNOWN", "node stopped reporting the pod")
    assert one(st, 1) == ("SUCCEEDED", "")


def test_newest_pod_counts_and_older_ones_are_restarts() -> None:
    first = pod(0, "Failed", created="2026-01-01T00:00:01Z", containerStatuses=terminated(1))
    second = pod(0, "Failed", created="2026-01-01T00:00:02Z", containerStatuses=terminated(75))
    third = pod(0, "Running", created="2026-01-01T00:00:03Z")
    third["spec"]["nodeName"] = "newest"
    st = run_states(job(), [third, first, second], RUNS)
    assert (str(st[0].state), st[0].restarts, st[0].node) == ("RUNNING", 2, "newest")
    st = run_states(job(), [first, second], RUNS)
    assert one(st, 0) == ("PENDING", "retrying: exit 75 (Error)")


def test_a_vanished_job_leaves_the_store_as_witness() -> None:
    st = run_states(None, [], RUNS, {"a": {"done": True}, "b": {"done": False}})
    assert [s.state for s in st] == [RunState.SUCCEEDED, RunState.UNKNOWN, RunState.UNKNOWN]
    assert st[1].message.startswith("Job is gone")


def test_progress_from_keys_uses_the_result_layout() -> None:
    spec = parse_spec(
        {
            "name": "s",
            "datasets": ["digits"],
            "models": ["small_cnn"],
            "seeds": [1],
            "repair": {"classes": [3, 8]},
        },
        "test",
    )
    (run,) = spec.runs()
    keys = {
        results.checkpoint("s", run.name, 1),
        results.checkpoint("s", run.name, 10),
        results.base_metrics("s", run.name, 1),
        results.repair_metrics("s", run.name, 1, 3),
        results.repair_patch("s", run.name, 1, 8),  # not a finished repair
        results.checkpoint("s", run.name + "x", 99),  # another run's key
        f"s/{run.name}/epoch_1/base/metrics.json",  # not the layout's name
    }
    p = run_progress(keys, run)
    assert p == {
        "epoch": 10,
        "checkpoint": 10,
        "trained": False,
        "evaluated": 1,
        "checkpoints": None,
        "repairs_done": 1,
        "repairs_total": None,
        "done": False,
        "complete": False,
    }
    assert describe(p) == "epoch 10, eval 1/?, repairs 1/?"
    # Training has gone on past the last checkpoint: history.csv says how far.
    assert run_progress(keys, run, trained_epochs=13)["epoch"] == 13
    assert describe(run_progress(keys, run, trained_epochs=13)).startswith("epoch 13,")
    keys.add(results.summary_json("s", run.name))
    p = run_progress(keys, run, {"checkpoint_epochs": [1, 5, 10], "epochs_trained": 15})
    assert (p["trained"], p["checkpoints"], p["repairs_total"]) == (True, 3, 6)
    assert (p["epoch"], p["checkpoint"]) == (15, 10)
    assert describe(p) == "trained, eval 1/3, repairs 1/6"
    keys.add(results.success("s", run.name))
    assert describe(run_progress(keys, run)) == "done"
    assert describe({}) == ""
    assert describe({"error": "store not readable: x"}) == "? (store not readable: x)"


def test_a_run_is_complete_only_with_every_output_of_its_classes() -> None:
    def spec(classes: list[int]) -> Any:
        data = {"name": "s", "datasets": ["digits"], "models": ["small_cnn"], "seeds": [1]}
        (run,) = parse_spec({**data, "repair": {"classes": classes}}, "test").runs()
        return run

    run = spec([3, 8])
    summary = {"checkpoint_epochs": [1, 5]}
    keys = {results.summary_json("s", run.name), results.success("s", run.name)}
    for e in (1, 5):
        keys.add(results.base_metrics("s", run.name, e))
        keys |= {results.repair_metrics("s", run.name, e, c) for c in (3, 8)}
    assert run_progress(keys, run, summary)["complete"]
    # A class added since it finished: _SUCCESS is there, but work is left.
    wider = spec([3, 8, 9])
    p = run_progress(keys, wider, summary)
    assert p["done"] and not p["complete"] and (p["repairs_done"], p["repairs_total"]) == (4, 6)
    # A class dropped: still complete, and the dropped class's records are not counted.
    narrower = run_progress(keys, spec([3]), summary)
    assert narrower["complete"] and narrower["repairs_done"] == 2
    for missing in (
        results.success("s", run.name),
        results.base_metrics("s", run.name, 5),
        results.repair_metrics("s", run.name, 1, 8),
    ):
        assert not run_progress(keys - {missing}, run, summary)["complete"], missing
    assert not run_progress(keys, run, None)["complete"]  # summary unread: cannot tell
    assert not run_progress(keys, run, {"checkpoint_epochs": "garbage"})["complete"]


def test_history_epoch_reads_the_last_whole_row() -> None:
    header = "epoch,loss,acc,val_loss,val_acc,lr,seconds\n"
    row = "{},0.5,0.8,0.6,0.7,0.001,1.2\n"
    assert history_epoch(b"") is None
    assert history_epoch(header.encode()) is None
    assert history_epoch((header + row.format(1) + row.format(2)).encode()) == 2
    # A row being written (no newline yet) is not counted; garbage is no epoch.
    assert history_epoch((header + row.format(1) + "2,0.4").encode()) == 1
    assert history_epoch(b"epoch\nnot-a-number\n") is None
