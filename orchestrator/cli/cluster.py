"""Commands for a sweep on a Kubernetes cluster: plan, submit, status, logs, cancel."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli.app import CLUSTER_PANEL, SpecArg, app, err
from orchestrator.cli.output import Output, OutputOpt, chosen, json_alias, render

NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        help="Kubernetes namespace.",
        show_default="the spec's, else early-repair",
    ),
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


def _sweep_arg(value: str) -> str:
    from orchestrator.spec import check_sweep_name

    return check_sweep_name(value)


SweepArg = Annotated[
    str, typer.Argument(help="Sweep name (the spec's `name`).", callback=_sweep_arg)
]
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
LocalResultsOpt = Annotated[
    str | None,
    typer.Option(
        "--results",
        help="Local sweeps: the results location the sweep ran into, when one sweep name was"
        " run into several.",
        show_default=False,
    ),
]


def _backend(
    local: bool,
    backend: str | None,
    namespace: str | None = None,
    context: str | None = None,
    endpoint_url: str | None = None,
    results: str | None = None,
) -> Any:
    """The backend a command talks to, by name (``--local`` is ``--backend local``)."""
    from orchestrator.backends import open_backend
    from orchestrator.errors import BadInput

    if endpoint_url is not None:
        from orchestrator.urls import check_endpoint

        check_endpoint(endpoint_url, "--endpoint-url")

    if local and backend not in (None, "local"):
        raise BadInput(f"--local contradicts --backend {backend}; pass one of them")
    name = "local" if local else backend or "kubernetes"
    return open_backend(
        name, namespace=namespace, context=context, endpoint_url=endpoint_url, results=results
    )


def _where(backend: Any) -> str:
    """``local``, or the namespace a cluster backend works in."""
    if backend.name == "local":
        return "local"
    from orchestrator.backends.kubernetes.backend import DEFAULT_NAMESPACE

    return backend.namespace or DEFAULT_NAMESPACE


_OBJECT_HEADER = ["object", "action"]


def _check_results(sweep: Any) -> None:
    """The results URI must at least open (scheme, bucket name, ``~user``): nothing is read
    or created, but a sweep `plan` passes must not fail on its URI once it runs."""
    from orchestrator.store import open_results

    open_results(sweep.results, sweep.storage)


# A table longer than this shows its first and last rows around a count of the rest: a
# 100,000-run sweep is read from the JSON on stdout, not from 100,000 table lines.
TABLE_HEAD, TABLE_TAIL = 15, 5


def _runs_table(
    title: str, rows: list[list[str]], header: list[str], *, summarise: bool = False
) -> object:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in header:
        table.add_column(name, overflow="fold")
    skipped = len(rows) - TABLE_HEAD - TABLE_TAIL
    if summarise and skipped > 1:
        gap = [f"... {skipped} more ...", *[""] * (len(header) - 1)]
        rows = [*rows[:TABLE_HEAD], gap, *rows[-TABLE_TAIL:]]
    for row in rows:
        table.add_row(*row)
    return table


@app.command("plan", rich_help_panel=CLUSTER_PANEL)
def k8s_plan(
    spec: SpecArg,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the Kubernetes objects `submit` creates (multi-document YAML) to this"
            " file; - writes them, and only them, to stdout (for `kubectl apply -f -`).",
            metavar="FILE",
        ),
    ] = None,
    namespace: NamespaceOpt = None,
    output: OutputOpt = None,
) -> None:
    """Expand and check a sweep and list its runs; --out writes its Job manifests."""
    import sys

    from rich.console import Console

    from orchestrator.backends.kubernetes.manifests import (
        check_configmap_size,
        object_name,
        render_sweep,
        to_yaml,
        with_namespace,
    )
    from orchestrator.errors import BadInput
    from orchestrator.spec import load_spec

    to_stdout = out is not None and str(out) == "-"
    if to_stdout and output is not None:
        raise BadInput("--out - prints the objects on stdout: drop -o, or --out to a file")
    sweep = with_namespace(load_spec(spec), namespace)
    _check_results(sweep)
    check_configmap_size(sweep)  # what submit could not create is no plan either
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
    rows = [[str(r.index), r.name, r.dataset.key, r.model.key, str(r.seed)] for r in runs]
    header = ["index", "run", "dataset", "model", "seed"]
    title = f"{sweep.name}: {len(runs)} runs"
    table = partial(_runs_table, title, rows, header, summarise=True)
    if out is not None:
        objects = render_sweep(sweep)
        if to_stdout:
            Console(stderr=True).print(table())
            sys.stdout.write(to_yaml(objects))
            return
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(to_yaml(objects))
        except OSError as e:
            raise BadInput(f"--out: cannot write {out} ({e.strerror or e})") from e
        doc["namespace"] = sweep.kubernetes.namespace
        doc["objects"] = [f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objects]
        doc["out"] = str(out)
        err(f"wrote {len(objects)} objects ({object_name(sweep)}) to {out}")
    render(doc, output, table, table_to_stderr=True)


@app.command("submit", rich_help_panel=CLUSTER_PANEL)
def k8s_submit(
    spec: SpecArg,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Server-side dry run: the API server checks, nothing is created."
        ),
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace", help="Delete a running sweep of the same name but another spec first."
        ),
    ] = False,
    output: OutputOpt = None,
) -> None:
    """Submit a sweep as an Indexed Job (idempotent: the same spec twice creates it once)."""
    from dataclasses import asdict

    from orchestrator.backends import open_backend
    from orchestrator.backends.kubernetes.manifests import object_name, with_namespace
    from orchestrator.spec import load_spec

    sweep = with_namespace(load_spec(spec), namespace)
    _check_results(sweep)
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
    doc = {**asdict(result), "namespace": ns, "name": object_name(sweep)}
    rows = [[obj, action] for action in ("created", "unchanged", "replaced") for obj in doc[action]]
    title = f"{sweep.name} ({ns}){' - dry run' if dry_run else ''}"
    render(doc, output, partial(_runs_table, title, rows, _OBJECT_HEADER))


_STATE_STYLE = {
    "PENDING": "yellow",
    "RUNNING": "cyan",
    "SUCCEEDED": "green",
    "FAILED": "bold red",
    "CANCELLED": "magenta",
    "UNKNOWN": "dim",
}


@app.command("status", rich_help_panel=CLUSTER_PANEL)
def k8s_status(
    sweep: SweepArg,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Follow until every run has ended (json: one line per change; yaml: one"
            " document per change).",
        ),
    ] = False,
    output: OutputOpt = None,
    as_json: Annotated[bool, typer.Option("--json", hidden=True, help="Same as -o json.")] = False,
    endpoint_url: EndpointOpt = None,
    local: LocalOpt = False,
    backend_name: BackendOpt = None,
    results: LocalResultsOpt = None,
) -> None:
    """One row per run: state, restarts, node, progress. Exit 1 if a run failed or was cancelled."""
    from rich.console import Console

    from orchestrator.backends.progress import describe

    backend = _backend(local, backend_name, namespace, context, endpoint_url, results)
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

    fmt = chosen(json_alias(output, as_json))
    console = Console()
    last: list = []
    if not watch:
        last = backend.status(sweep)
        render(document(last), fmt, partial(table, last))
    elif fmt is not Output.table:
        for last in backend.watch(sweep):
            render(document(last), fmt, partial(table, last), stream=True)
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


@app.command("logs", rich_help_panel=CLUSTER_PANEL)
def k8s_logs(
    sweep: SweepArg,
    run: Annotated[
        str | None, typer.Option(help="Run name or index (default: every run, one after another).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream the run's log as it grows.")
    ] = False,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    endpoint_url: EndpointOpt = None,
    local: LocalOpt = False,
    backend_name: BackendOpt = None,
    results: LocalResultsOpt = None,
) -> None:
    """A run's log from its pod (local: its live log), or from the store once it ended."""
    backend = _backend(local, backend_name, namespace, context, endpoint_url, results)
    for line in backend.logs(sweep, run, follow=follow):
        print(line, flush=follow)


@app.command("cancel", rich_help_panel=CLUSTER_PANEL)
def k8s_cancel(
    sweep: SweepArg,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    local: LocalOpt = False,
    backend_name: BackendOpt = None,
    output: OutputOpt = None,
    results: LocalResultsOpt = None,
) -> None:
    """Stop a sweep: delete its Job (and pods) and ConfigMap, or stop its local runs.

    Results stay in the store; running the same spec again resumes it."""
    backend = _backend(local, backend_name, namespace, context, results=results)
    stopped = backend.cancel(sweep)
    if backend.name == "local":
        err(f"cancelled local sweep {sweep!r}; results are kept, `run` again to resume")
        doc: dict[str, Any] = {"sweep": sweep, "backend": "local", "cancelled": True}
        render(doc, output, partial(_runs_table, sweep, [["local", "cancelled"]], _OBJECT_HEADER))
        return
    err(f"cancelled sweep {sweep!r}: deleted {', '.join(stopped)}; results are kept")
    ns = _where(backend)
    doc = {"sweep": sweep, "namespace": ns, "deleted": stopped}
    rows = [[name, "deleted"] for name in stopped]
    render(doc, output, partial(_runs_table, f"{sweep} ({ns})", rows, _OBJECT_HEADER))
