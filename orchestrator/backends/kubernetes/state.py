"""What a Job and its pods say about each run, as explicit tables (pure, no I/O).

The Job controller records finished indexes in ``status.completedIndexes`` and
``status.failedIndexes`` (interval strings like ``"0-2,5"``), the Job's conditions say
whether the whole Job ended or is suspended, and each pod (label
``batch.kubernetes.io/job-completion-index``) says what one try of one index is doing.
``run_states`` combines them in a fixed order of precedence, first match wins:

1. index in completedIndexes -> SUCCEEDED; in failedIndexes -> FAILED
2. the Job is being deleted -> CANCELLED
3. a Job condition from ``JOB_CONDITION_STATE`` that is True (Failed, Complete, Suspended...)
4. the index's newest pod, by ``POD_PHASE_STATE``; a Failed pod whose index is still open
   means the controller will retry it -> PENDING ("retrying")
5. no pod yet -> PENDING

A Job queued by Kueue is suspended until Kueue admits its Workload; ``workload_admission``
turns that Workload's conditions into the line shown for its waiting runs (why it is not
admitted, in Kueue's own words, or how many runs at once it was admitted with).

Anything the tables do not know (a new pod phase, a malformed index) is UNKNOWN rather
than a guess. Kept apart from the API calls so each rule is unit-tested on plain dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.backends.base import RunState, RunStatus
from orchestrator.backends.kubernetes.manifests import CONTAINER, INDEX_LABEL

# Job conditions (status "True") that decide every index the controller has not settled.
# FailureTarget/SuccessCriteriaMet are set before pods are cleaned up, Failed/Complete
# after; Suspended is a Job that Kueue (or a user) holds back.
JOB_CONDITION_STATE: dict[str, RunState] = {
    "Failed": RunState.FAILED,
    "FailureTarget": RunState.FAILED,
    "Complete": RunState.SUCCEEDED,
    "SuccessCriteriaMet": RunState.SUCCEEDED,
    "Suspended": RunState.PENDING,
}
# Order in which conditions are consulted when several are True.
_CONDITION_ORDER = ("Failed", "FailureTarget", "Complete", "SuccessCriteriaMet", "Suspended")

# Pod phase -> state of the index while the Job has not settled it.
POD_PHASE_STATE: dict[str, RunState] = {
    "Pending": RunState.PENDING,
    "Running": RunState.RUNNING,
    "Succeeded": RunState.SUCCEEDED,
    "Failed": RunState.PENDING,  # the controller starts another try (see module doc)
    "Unknown": RunState.UNKNOWN,  # the node stopped reporting
}

# Container waiting reasons worth showing: they explain a pod that never starts.
_WAITING_SHOWN = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


def parse_intervals(text: str | None) -> set[int]:
    """``"0-2,5"`` -> {0, 1, 2, 5}; the Job controller's compressed index lists."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            continue  # malformed: those indexes stay undecided rather than mis-stated
        out.update(range(first, last + 1))
    return out


def pod_index(pod: dict[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    raw = (meta.get("labels") or {}).get(INDEX_LABEL)
    if raw is None:
        raw = (meta.get("annotations") or {}).get(INDEX_LABEL)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _true_conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if str(c.get("status")) == "True"}


def _one_line(text: str | None, limit: int = 240) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return cs
    return {}


def termination(pod: dict[str, Any]) -> str:
    """``exit 2 (Error): last line of the termination message`` or ``""``."""
    state = _trainer_status(pod).get("state") or {}
    term = state.get("terminated")
    if not term:
        return ""
    text = f"exit {term.get('exitCode')}"
    if term.get("reason"):
        text += f" ({term['reason']})"
    if msg := _one_line(term.get("message")):
        text += f": {msg}"
    return text


def _pending_reason(pod: dict[str, Any]) -> str:
    waiting = (_trainer_status(pod).get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in _WAITING_SHOWN:
        return f"{waiting['reason']}: {_one_line(waiting.get('message'))}".rstrip(": ")
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and str(cond.get("status")) == "False":
            return f"{cond.get('reason', 'Unschedulable')}: {_one_line(cond.get('message'))}"
    return waiting.get("reason") or "pod pending"


def _created(pod: dict[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return (meta.get("creationTimestamp") or "", meta.get("name") or "")


@dataclass(frozen=True)
class IndexRun:
    """One index of the Job and the run it stands for."""

    index: int
    run: str


def workload_admission(workload: dict[str, Any] | None) -> str:
    """One line on where Kueue stands with a Job's Workload (``""`` when it has finished).

    Conditions (kueue.x-k8s.io Workload, v1beta1 and v1beta2 alike): ``Evicted`` wins
    (preempted, or its pods never got ready), then ``Admitted``, then ``QuotaReserved``
    (True: admission checks still pending; False: why it does not fit, e.g.
    ``insufficient quota for nvidia.com/gpu ...``).
    """
    if workload is None:
        return "Kueue has not created a Workload for the Job yet"
    conditions = _true_conditions(workload)
    if "Finished" in conditions:
        return ""
    if "Evicted" in conditions:
        cond = conditions["Evicted"]
        detail = _one_line(cond.get("message"))
        return f"evicted by Kueue ({cond.get('reason') or 'Evicted'}): {detail}".rstrip(": ")
    admission = (workload.get("status") or {}).get("admission") or {}
    queue = admission.get("clusterQueue") or "?"
    if "Admitted" in conditions:
        # One pod set for a Job ("main"); its count is what Kueue admitted, the spec's what
        # the Job asked for (its parallelism before a partial admission lowered it).
        assigned = (admission.get("podSetAssignments") or [{}])[0].get("count")
        wanted = (((workload.get("spec") or {}).get("podSets") or [{}])[0]).get("count")
        text = f"admitted by ClusterQueue {queue}"
        if isinstance(assigned, int) and isinstance(wanted, int) and assigned < wanted:
            text += f" with {assigned} of {wanted} runs at once (partial admission)"
        return text
    if "QuotaReserved" in conditions:
        return f"quota reserved in ClusterQueue {queue}; waiting for admission checks"
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "QuotaReserved":
            detail = _one_line(cond.get("message"))
            reason = cond.get("reason") or "Pending"
            return f"not admitted by Kueue ({reason}): {detail}".rstrip(": ")
    return "queued in Kueue; not considered yet"


def run_states(
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    runs: list[IndexRun],
    progress: dict[str, dict[str, Any]] | None = None,
    admission: str = "",
) -> list[RunStatus]:
    """One ``RunStatus`` per run, following the precedence in the module docstring.

    ``job`` None means the Job no longer exists (deleted, or expired after
    ttlSecondsAfterFinished): finished runs are then recognised from the store's
    ``done`` flag and everything else is UNKNOWN. ``admission`` (``workload_admission``)
    explains runs that wait for Kueue.
    """
    progress = progress or {}
    by_index: dict[int, list[dict[str, Any]]] = {}
    for pod in pods:
        idx = pod_index(pod)
        if idx is not None:
            by_index.setdefault(idx, []).append(pod)
    for tries in by_index.values():
        tries.sort(key=_created)

    status = (job or {}).get("status") or {}
    completed = parse_intervals(status.get("completedIndexes"))
    failed = parse_intervals(status.get("failedIndexes"))
    conditions = _true_conditions(job or {})
    deleting = bool(((job or {}).get("metadata") or {}).get("deletionTimestamp"))

    out: list[RunStatus] = []
    for r in runs:
        tries = by_index.get(r.index, [])
        last = tries[-1] if tries else None
        restarts = max(0, len(tries) - 1) + sum(
            int(cs.get("restartCount") or 0)
            for p in tries
            for cs in (p.get("status") or {}).get("containerStatuses") or []
        )
        node = ((last or {}).get("spec") or {}).get("nodeName")
        prog = progress.get(r.run, {})
        state, message = _decide(job, r.index, last, completed, failed, conditions, deleting, prog)
        suspended = "Suspended" in conditions
        if admission and state is RunState.PENDING and (suspended or last is None):
            # Waiting for Kueue (suspended) or for a slot of a partial admission.
            message = f"{'suspended' if suspended else message}; {admission}"
        out.append(RunStatus(r.index, r.run, state, restarts, node, message, prog))
    return out


def _decide(
    job: dict[str, Any] | None,
    index: int,
    last: dict[str, Any] | None,
    completed: set[int],
    failed: set[int],
    conditions: dict[str, dict[str, Any]],
    deleting: bool,
    progress: dict[str, Any],
) -> tuple[RunState, str]:
    if job is None:
        if progress.get("done"):
            return RunState.SUCCEEDED, "Job is gone; results complete"
        return RunState.UNKNOWN, "Job is gone (deleted, or expired after ttlSecondsAfterFinished)"
    if index in completed:
        return RunState.SUCCEEDED, ""
    if index in failed:
        return RunState.FAILED, termination(last) if last else "index failed"
    if deleting:
        return RunState.CANCELLED, "Job is being deleted"
    for ctype in _CONDITION_ORDER:
        if ctype in conditions:
            cond = conditions[ctype]
            reason = cond.get("reason") or ctype
            detail = _one_line(cond.get("message"))
            if ctype == "Suspended":
                return RunState.PENDING, "suspended: waiting for admission (Kueue) or resume"
            return JOB_CONDITION_STATE[ctype], f"{reason}: {detail}" if detail else reason
    if last is None:
        return RunState.PENDING, "waiting for a pod"
    phase = (last.get("status") or {}).get("phase") or "Pending"
    state = POD_PHASE_STATE.get(phase)
    if state is None:
        return RunState.UNKNOWN, f"unknown pod phase {phase!r}"
    if phase == "Failed":
        disrupted = "DisruptionTarget" in _true_conditions(last)
        why = "pod was disrupted (not counted)" if disrupted else termination(last) or "pod failed"
        return RunState.PENDING, f"retrying: {why}"
    if phase == "Pending":
        return state, _pending_reason(last)
    if phase == "Unknown":
        return state, "node stopped reporting the pod"
    meta = last.get("metadata") or {}
    return state, "terminating" if meta.get("deletionTimestamp") else ""
