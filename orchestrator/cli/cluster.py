"""Commands for a sweep on a Kubernetes cluster: plan, submit, status, logs, cancel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli.app import SpecArg, app, err

NamespaceOpt = Annotated[
    str | None,
    typer.Option(help="Kubernetes namespace.", show_default="the spec's, else early-repair"),
]
ContextOpt = Annotated[
    str | None,
    typer.Option(help="kubeconfig context.", show_default="current context, else in-cluster"),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(
        help="S3 endpoint to read progress/archived logs from here (when the spec's is an"
        " in-cluster address)."
    ),
]
SweepArg = Annotated[str, typer.Argument(help="Sweep name (the spec's `name`).")]
LocalOpt = Annotated[
    bool, typer.Option("--local", help="A sweep started with `early-repair run` on this machine.")
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Where the sweep runs: kubernetes or local (--local is short for --backend local).",
        show_default="kubernetes",
    ),
]


def _backend(
    local: bool,
    backend: str | None,
    namespace: str | None = None,
    context: str | None = None,
    endpoint_url: str | None = None,
) -> Any:
    """The backend a command talks to, by name (``--local`` is ``--backend local``)."""
    from orchestrator.backends import open_backend
    from orchestrator.errors import BadInput

    if local and backend not in (None, "local"):
        raise BadInput(f"--local contradicts --backend {backend}; pass one of them")
    name = "local" if local else backend or "kubernetes"
    return open_backend(name, namespace=namespace, context=context, endpoint_url=endpoint_url)


def _where(backend: Any) -> str:
    """``local``, or the namespace a cluster backend works in."""
    if backend.name == "local":
        return "local"
    from orchestrator.backends.kubernetes.backend import DEFAULT_NAMESPACE

    return backend.namespace or DEFAULT_NAMESPACE


def _runs_table(title: str, rows: list[list[str]], header: list[str]) -> object:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


@app.command("plan")
def k8s_plan(
    spec: SpecArg,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the Kubernetes objects `submit` creates (multi-document YAML)."),
    ] = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Expand and check a sweep, print its runs (JSON); --out writes its Job manifests."""
    from rich.console import Console

    from orchestrator.backends.kubernetes.manifests import (
        object_name,
        render_sweep,
        to_yaml,
        with_namespace,
    )
    from orchestrator.errors import BadInput
    from orchestrator.spec import load_spec

    sweep = with_namespace(load_spec(spec), namespace)
    runs = sweep.runs()
    doc: dict[str, object] = {
        "sweep": sweep.name,
        "spec_hash": sweep.spec_hash(),
        "runs": [
            {
                "index": r.index,
                "name": r.name,
                "dataset": r.dataset.key,
                "model": r.model.key,
                "seed": r.seed,
                "repair_classes": r.repair_classes,
            }
            for r in runs
        ],
    }
    if out is not None:
        objects = render_sweep(sweep)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(to_yaml(objects))
        except OSError as e:
            raise BadInput(f"--out: cannot write {out} ({e.strerror or e})") from e
        doc["namespace"] = sweep.kubernetes.namespace
        doc["objects"] = [f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objects]
        doc["out"] = str(out)
        err(f"wrote {len(objects)} objects ({object_name(sweep)}) to {out}")
    rows = [[str(r.index), r.name, r.dataset.key, r.model.key, str(r.seed)] for r in runs]
    header = ["index", "run", "dataset", "model", "seed"]
    Console(stderr=True).print(_runs_table(f"{sweep.name}: {len(runs)} runs", rows, header))
    print(json.dumps(doc, indent=2))


@app.command("submit")
def k8s_submit(
    spec: SpecArg,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    dry_run: Annotated[
        bool, typer.Option(help="Server-side dry run: the API server checks, nothing is created.")
    ] = False,
    replace: Annotated[
        bool, typer.Option(help="Delete a running sweep of the same name but another spec first.")
    ] = False,
) -> None:
    """Submit a sweep as an Indexed Job (idempotent: the same spec twice creates it once)."""
    from dataclasses import asdict

    from orchestrator.backends import open_backend
    from orchestrator.backends.kubernetes.manifests import object_name, with_namespace
    from orchestrator.spec import load_spec

    sweep = with_namespace(load_spec(spec), namespace)
    backend = open_backend("kubernetes", context=context)
    result = backend.submit(sweep, dry_run=dry_run, replace=replace)
    ns = sweep.kubernetes.namespace
    what = "dry run, nothing created: " if dry_run else ""
    err(
        f"{what}sweep {sweep.name!r} in namespace {ns!r}: created {len(result.created)},"
        f" unchanged {len(result.unchanged)}, replaced {len(result.replaced)}"
    )
    if not dry_run:
        err(f"follow it: early-repair status {sweep.name} --namespace {ns} --watch")
    print(json.dumps({**asdict(result), "namespace": ns, "name": object_name(sweep)}, indent=2))


_STATE_STYLE = {
    "PENDING": "yellow",
    "RUNNING": "cyan",
    "SUCCEEDED": "green",
    "FAILED": "bold red",
    "CANCELLED": "magenta",
    "UNKNOWN": "dim",
}


@app.command("status")
def k8s_status(
    sweep: SweepArg,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    watch: Annotated[bool, typer.Option(help="Follow until every run has ended.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON on stdout (one line per change with --watch).")
    ] = False,
    endpoint_url: EndpointOpt = None,
    local: LocalOpt = False,
    backend_name: BackendOpt = None,
) -> None:
    """One row per run: state, restarts, node, progress. Exit 1 if a run failed or was cancelled."""
    from rich.console import Console

    from orchestrator.backends.progress import describe

    backend = _backend(local, backend_name, namespace, context, endpoint_url)
    ns = _where(backend)

    def document(states: list) -> dict:
        return {
            "sweep": sweep,
            "namespace": ns,
            "runs": [
                {
                    "index": s.index,
                    "run": s.run,
                    "state": str(s.state),
                    "restarts": s.restarts,
                    "node": s.node,
                    "message": s.message,
                    "progress": s.progress,
                }
                for s in states
            ],
        }

    def table(states: list) -> object:
        counts: dict[str, int] = {}
        for s in states:
            counts[str(s.state)] = counts.get(str(s.state), 0) + 1
        title = f"{sweep} ({ns}): " + ", ".join(f"{n} {k.lower()}" for k, n in counts.items())
        rows = [
            [
                str(s.index),
                s.run,
                f"[{_STATE_STYLE[str(s.state)]}]{s.state}[/]",
                str(s.restarts),
                s.node or "-",
                describe(s.progress),
                s.message,
            ]
            for s in states
        ]
        header = ["index", "run", "state", "restarts", "node", "progress", "message"]
        return _runs_table(title, rows, header)

    console = Console()
    last: list = []
    if not watch:
        last = backend.status(sweep)
        if as_json:
            print(json.dumps(document(last), indent=2))
        else:
            console.print(table(last))
    elif as_json:
        for last in backend.watch(sweep):
            print(json.dumps(document(last)), flush=True)
    elif console.is_terminal:
        from rich.live import Live

        with Live(console=console, auto_refresh=False) as live:
            for last in backend.watch(sweep):
                live.update(table(last), refresh=True)
    else:
        for last in backend.watch(sweep):
            console.print(table(last))
    if any(str(s.state) in ("FAILED", "CANCELLED") for s in last):
        raise typer.Exit(1)


@app.command("logs")
def k8s_logs(
    sweep: SweepArg,
    run: Annotated[
        str | None, typer.Option(help="Run name or index (default: every run, one after another).")
    ] = None,
    follow: Annotated[bool, typer.Option(help="Stream the run's log as it grows.")] = False,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    endpoint_url: EndpointOpt = None,
    local: LocalOpt = False,
    backend_name: BackendOpt = None,
) -> None:
    """A run's log from its pod, or from the store once the pod is gone."""
    backend = _backend(local, backend_name, namespace, context, endpoint_url)
    for line in backend.logs(sweep, run, follow=follow):
        print(line, flush=follow)


@app.command("cancel")
def k8s_cancel(
    sweep: SweepArg,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    local: LocalOpt = False,
    backend_name: BackendOpt = None,
) -> None:
    """Stop a sweep: delete its Job (and pods) and ConfigMap, or stop its local runs.

    Results stay in the store; running the same spec again resumes it."""
    backend = _backend(local, backend_name, namespace, context)
    stopped = backend.cancel(sweep)
    if backend.name == "local":
        err(f"cancelled local sweep {sweep!r}; results are kept, `run` again to resume")
        print(json.dumps({"sweep": sweep, "backend": "local", "cancelled": True}, indent=2))
        return
    err(f"cancelled sweep {sweep!r}: deleted {', '.join(stopped)}; results are kept")
    print(json.dumps({"sweep": sweep, "namespace": _where(backend), "deleted": stopped}, indent=2))
