"""Following local sweeps from any shell: ``status``, ``watch``, ``logs`` and ``cancel``.

A sweep is found by this machine's record (its store and spec), else in the store alone
(``--results``). Status comes from the store's progress and, while the sweep's ``run``
process lives, from its record; logs are the live log of a running trainer, else the one
archived in the store; cancel signals the ``run`` process (or, after it was killed, the
trainers that outlived it) - only processes the record still names (``processes._ours``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from orchestrator.backends.base import CancelResult, RunState, RunStatus
from orchestrator.backends.local.processes import _ours, _terminate
from orchestrator.backends.local.records import Records
from orchestrator.backends.local.state_file import read_json_object
from orchestrator.backends.progress import describe, sweep_progress
from orchestrator.errors import BadInput, EarlyRepairError, StoreError
from orchestrator.results import layout as keys
from orchestrator.spec import RunSpec, SweepSpec, check_sweep_name, parse_spec
from orchestrator.store import KeyMissing, Store, open_results, open_store, read_json


class Following(Records):
    """``status``/``watch``/``logs``/``cancel`` of local sweeps by name; ``store``
    overrides where ``status`` and ``logs`` look (default: the results location recorded
    when the sweep was submitted on this machine)."""

    def __init__(
        self,
        state_root: Path,
        results: str | None,
        *,
        store: Store | None,
        poll_s: float,
        sleep: Callable[[float], None],
    ) -> None:
        super().__init__(state_root, results)
        self._store = store
        self.poll_s = poll_s
        self.sleep = sleep

    def _locate(self, sweep: str) -> tuple[Store, list[RunSpec], dict[str, Any] | None]:
        """The sweep's store and runs: from this machine's record, else from the store."""
        check_sweep_name(sweep)
        state = self.find_state(sweep)
        spec: SweepSpec | None = None
        if state and isinstance(state.get("spec_file"), str):
            with contextlib.suppress(OSError, ValueError, BadInput):
                spec = parse_spec(read_json_object(Path(state["spec_file"]), "sweep_json"))
        if spec is not None and spec.name != sweep:
            spec = None
        store = self._store
        if store is None and spec is None and self.results is not None:
            store = open_store(self.results)  # no record here: the store alone must do
        if store is None:
            if spec is None:
                raise BadInput(
                    f"sweep {sweep!r} was not run on this machine (no record in"
                    f" {self.state_root}); check the name, pass --results URI, or drop"
                    " --local for a cluster sweep"
                )
            # With the S3 endpoint and region it ran with.
            store = open_results(spec.results, spec.storage)
        if spec is None:
            try:
                spec = parse_spec(read_json(store, keys.sweep_json(sweep)), "sweep.json")
            except KeyMissing as e:
                raise BadInput(f"no sweep {sweep!r} in {store.uri}") from e
        return store, spec.runs(), state

    def status(self, sweep: str) -> list[RunStatus]:
        store, runs, state = self._locate(sweep)
        live = bool(state and _ours(state))
        recorded = (state or {}).get("runs", {})
        progress = sweep_progress(store, runs)
        out = []
        for run in runs:
            p = progress[run.name]
            rec = recorded.get(run.name, {})
            if p["done"]:
                st = RunState.SUCCEEDED
            elif live and rec.get("state") == RunState.RUNNING.value:
                st = RunState.RUNNING
            elif live and rec.get("state") in (None, RunState.PENDING.value):
                st = RunState.PENDING
            elif rec.get("state") in (RunState.FAILED.value, RunState.CANCELLED.value):
                st = RunState(rec["state"])
            elif p["epoch"] is not None or p["trained"]:
                st = RunState.FAILED  # started, not running, not done: a crash
            else:
                st = RunState.PENDING
            message = describe(p)
            if st is RunState.FAILED and rec.get("exit_code") not in (None, 0):
                message = f"exit {rec['exit_code']}; {message}"
            out.append(RunStatus(run.index, run.name, st, message=message, progress=p))
        return out

    def watch(self, sweep: str) -> Iterator[list[RunStatus]]:
        """``status`` every ``poll_s`` seconds while the sweep's processes are alive."""
        while True:
            states = self.status(sweep)
            yield states
            state = self.find_state(sweep)
            if not (state and _ours(state)) or all(s.state.terminal for s in states):
                return
            self.sleep(self.poll_s)

    @staticmethod
    def _select(sweep: str, runs: list[RunSpec], run: str | None) -> list[RunSpec]:
        """Every run, or the one ``run`` names by name or index (as ``--run`` says)."""
        if run is None:
            return runs
        for r in runs:
            if run in (r.name, str(r.index)):
                return [r]
        names = ", ".join(r.name for r in runs[:5]) + (", ..." if len(runs) > 5 else "")
        raise BadInput(
            f"--run: sweep {sweep!r} has no run {run[:80]!r}; runs (or their index"
            f" 0..{len(runs) - 1}): {names}"
        )

    def _live_logs(self, state: dict[str, Any] | None) -> dict[str, Path]:
        """The stderr log file of each run whose trainer is running now (kept in the
        record's own folder: a path elsewhere in a record is not read)."""
        if not state:
            return {}
        folder = self.record_dir(state["sweep"], state["results"])
        out = {}
        for name, rec in (state.get("runs") or {}).items():
            log = rec.get("log") if isinstance(rec, dict) else None
            if isinstance(log, str) and Path(log).parent == folder and _ours(rec, trainer=True):
                out[name] = Path(log)
        return out

    def logs(self, sweep: str, run: str | None = None, *, follow: bool = False) -> Iterator[str]:
        """Each run's log, prefixed with the run name when there are several: the live log
        of a run that is running now (its trainer's stderr), else the one archived in the
        store (``<run>/logs/trainer.log``, which also holds earlier attempts)."""
        store, runs, state = self._locate(sweep)
        wanted = [r.name for r in self._select(sweep, runs, run)]
        live = {n: p for n, p in self._live_logs(state).items() if n in wanted}
        seen = dict.fromkeys(wanted, 0)
        while True:
            blobs = store.read_many([keys.log(sweep, n) for n in wanted if n not in live])
            for name in wanted:
                if name in live:
                    try:
                        blob: Any = live[name].read_bytes()
                    except OSError:
                        continue
                else:
                    blob = blobs[keys.log(sweep, name)]
                if isinstance(blob, KeyMissing):
                    continue  # no log archived yet
                if isinstance(blob, EarlyRepairError):  # wrong credentials, no bucket, ...
                    raise blob
                if isinstance(blob, Exception):  # an OSError from a folder store
                    raise StoreError(f"{store.uri}/{keys.log(sweep, name)}: cannot read ({blob})")
                # While following, hold back a partial last line until it is complete.
                end = blob.rfind(b"\n", seen[name]) + 1 if follow else len(blob)
                chunk, seen[name] = blob[seen[name] : max(end, seen[name])], max(end, seen[name])
                for line in chunk.decode(errors="replace").splitlines():
                    yield line if len(wanted) == 1 else f"[{name}] {line}"
            state = self.find_state(sweep) if follow else None
            if not follow or not (state and _ours(state)):
                return
            self.sleep(self.poll_s)

    def cancel(self, sweep: str) -> CancelResult:
        """Stop a running local sweep: its runs end as CANCELLED and can be resumed later.

        ``stopped`` is what was signalled (``pid/N``)."""
        check_sweep_name(sweep)

        def trainers(state: dict[str, Any]) -> list[dict[str, Any]]:
            runs = state.get("runs") or {}
            return [r for r in runs.values() if isinstance(r, dict) and _ours(r, trainer=True)]

        # Only records with something running are candidates: the finished ones of the
        # same sweep name elsewhere make nothing ambiguous.
        active = [s for s in self._candidates(sweep) if _ours(s) or trainers(s)]
        state = self._one(sweep, active)
        # The `run` process terminates its runs and starts no more; runs that outlived a
        # killed `run` are stopped one by one.
        targets = [] if state is None else [state] if _ours(state) else trainers(state)
        stopped = [
            f"pid/{rec['pid']}" for rec in targets if _terminate(rec, trainer=rec is not state)
        ]
        if not stopped:
            raise BadInput(f"nothing is running for sweep {sweep!r} on this machine")
        return CancelResult(
            sweep=sweep,
            stopped=stopped,
            message=f"cancelled local sweep {sweep!r}; results are kept, `run` again to resume",
            document={"sweep": sweep, "backend": "local", "cancelled": True},
            title=sweep,
            rows=[["local", "cancelled"]],
        )
