"""Following a sweep's runs as they change: list, then watch the pods.

List the pods, then watch them from the list's resourceVersion with bookmarks; a 410 Gone
(expired resourceVersion) re-lists; other errors pause by the client's retry policy and
watch again (``attempts`` failures in a row give up); the server's watch timeout just
starts the next watch. The Job (and its Kueue admission) is re-read on every pod event and
after every watch, and the store's progress at most every ``progress_every_s`` seconds. A
Job that disappears while watched was cancelled (or replaced): its open runs are reported
CANCELLED and the watch ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from orchestrator.backends.base import RunState, RunStatus
from orchestrator.backends.kubernetes.client import RETRY_STATUS, meta, retry_after
from orchestrator.backends.kubernetes.manifests import sweep_selector
from orchestrator.backends.kubernetes.state import run_states
from orchestrator.backends.kubernetes.sweeps import Sweep, Sweeps, own_pods

log = logging.getLogger(__name__)


class _Runs:
    """The statuses last reported for a watched sweep, and what changes them."""

    def __init__(
        self, sweeps: Sweeps, found: Sweep, clock: Callable[[], float], progress_every_s: float
    ) -> None:
        self.sweeps, self.found = sweeps, found
        self.clock, self.progress_every_s = clock, progress_every_s
        self.pods: dict[str, dict[str, Any]] = {}
        self.last: list[RunStatus] = []
        self._progress: dict[str, dict[str, Any]] = {}
        self._progress_at = float("-inf")

    def changed(self) -> bool:
        """Recompute the statuses; whether they differ from the last reported."""
        if self.clock() - self._progress_at >= self.progress_every_s:
            self._progress, self._progress_at = self.sweeps.progress(self.found), self.clock()
        f = self.found
        states = run_states(f.job, list(self.pods.values()), f.runs, self._progress, f.admission)
        if states == self.last:
            return False
        self.last = states
        return True

    def settle(self) -> tuple[list[list[RunStatus]], bool]:
        """What to yield after the Job or its pods may have moved, and whether to stop."""
        if not self.sweeps.refresh_job(self.found):
            return [cancelled(self.last)], True
        out = [self.last] if self.changed() else []
        return out, all(s.state.terminal for s in self.last)

    def see(self, event: dict[str, Any]) -> None:
        """Take one pod event into the pods of the sweep."""
        obj = event.get("raw_object") or {}
        name = meta(obj).get("name")
        if event.get("type") == "DELETED":
            self.pods.pop(name, None)
        elif name and own_pods(self.found, [obj]):
            self.pods[name] = obj


def watch(
    sweeps: Sweeps,
    sweep: str,
    ns: str,
    *,
    clock: Callable[[], float],
    progress_every_s: float,
) -> Iterator[list[RunStatus]]:
    """Yield the sweep's statuses whenever they change, until every run is terminal."""
    import urllib3
    from kubernetes import watch as k8s_watch
    from kubernetes.client.exceptions import ApiException

    client = sweeps.client
    found = sweeps.find(sweep, ns)
    runs = _Runs(sweeps, found, clock, progress_every_s)
    if found.job is None:  # nothing to watch: the store's word is all there is
        runs.changed()
        yield runs.last
        return
    rv: str | None = None
    failures = 0
    while True:
        try:
            if rv is None:  # (re-)list: the only way back after 410 Gone
                items, listed_rv = sweeps.pods(found)
                runs.pods = {meta(p)["name"]: p for p in items}
                rv = listed_rv or ""
                out, stop = runs.settle()
                yield from out
                if stop:
                    return
            stream = k8s_watch.Watch(return_type="object").stream(
                client.core.list_namespaced_pod,
                found.namespace,
                label_selector=sweep_selector(found.name),
                resource_version=rv or None,
                allow_watch_bookmarks=True,
                timeout_seconds=client.timeouts.watch_s,
                _request_timeout=(client.timeouts.connect_s, client.timeouts.watch_s + 15),
            )
            for event in stream:
                failures = 0
                obj = event.get("raw_object") or {}
                rv = meta(obj).get("resourceVersion") or rv
                if event.get("type") == "BOOKMARK" or obj.get("kind", "Pod") != "Pod":
                    continue
                runs.see(event)
                out, stop = runs.settle()
                yield from out
                if stop:
                    return
            # The server ended the watch (timeoutSeconds): look again, then watch on.
            out, stop = runs.settle()
            yield from out
            if stop:
                return
        except ApiException as e:
            if e.status == 410:
                log.info("watch: resourceVersion %s expired (410 Gone); re-listing", rv)
                rv = None
                continue
            if e.status not in RETRY_STATUS:
                raise client.fail(e, "watch pods", found.namespace) from e
            failures += 1
            client.pause(failures, retry_after(e), "watch pods", f"API answered {e.status}")
        except urllib3.exceptions.ReadTimeoutError:
            continue  # a quiet watch outlived its read timeout: just watch again
        except urllib3.exceptions.HTTPError as e:
            failures += 1
            client.pause(failures, None, "watch pods", type(e).__name__)


def cancelled(states: list[RunStatus]) -> list[RunStatus]:
    """``states`` with every open run CANCELLED: the Job went away under the watch."""
    return [
        s
        if s.state.terminal
        else RunStatus(
            s.index, s.run, RunState.CANCELLED, s.restarts, s.node, "Job was deleted", s.progress
        )
        for s in states
    ]
