"""The ``early-repair`` command line: parse, call, render - nothing else lives here.

Machine-readable output goes to stdout, logs and progress to stderr. Our errors become one
line on stderr and their exit code (0 ok, 1 a run failed, 2 bad input); heavy modules
(torch, boto3, kubernetes) are imported inside the commands that need them so that
``early-repair --help`` stays fast and torch-free.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.exceptions import TyperException

from orchestrator.errors import EXIT_BAD_INPUT, EarlyRepairError

app = typer.Typer(
    name="early-repair",
    help="Train, checkpoint, repair (Arachne) and compare - locally or as Kubernetes Jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Keeps every command a sub-command, even while only one exists."""


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


SpecArg = Annotated[
    Path,
    typer.Argument(help="Sweep spec (YAML), e.g. settings/quickstart.yaml.", show_default=False),
]


# --- spec ---------------------------------------------------------------------------


@app.command()
def schema() -> None:
    """Print the JSON Schema of the sweep spec."""
    from orchestrator.spec import json_schema

    print(json.dumps(json_schema(), indent=2))


# --- local runs and the trainer ---------------------------------------------------


@app.command()
def run(
    spec: SpecArg,
    results: Annotated[
        str | None,
        typer.Option(help="Where results go (path, file:// or s3://); overrides the spec's."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Runs at once (default: CPUs / training.num_threads).", show_default=False
        ),
    ] = None,
    endpoint_url: Annotated[
        str | None, typer.Option(help="S3 endpoint (e.g. MinIO); overrides storage.endpoint_url.")
    ] = None,
) -> None:
    """Run every run of a sweep on this machine; print where the results are."""
    from orchestrator.backends.local import LocalBackend
    from orchestrator.errors import BadInput
    from orchestrator.spec import load_spec, parse_spec

    sweep = load_spec(spec, results=results)
    if endpoint_url is not None:
        if not sweep.results.lower().startswith("s3://"):
            # As in `aggregate`: silently ignoring it would hide a results URI typo.
            raise BadInput(f"--endpoint-url applies to s3:// results only, not {sweep.results}")
        data = sweep.model_dump(mode="json")
        data["storage"] = {**data["storage"], "endpoint_url": endpoint_url}
        sweep = parse_spec(data, "--endpoint-url")
    outcome = LocalBackend(workers=workers).submit(sweep)
    err(outcome.summary())
    print(outcome.results)
    if outcome.failed:
        raise typer.Exit(1)


@app.command()
def trainer(
    sweep: Annotated[
        Path, typer.Option(help="Sweep file (YAML or JSON) holding the run.", show_default=False)
    ],
    run_index: Annotated[
        int | None,
        typer.Option(
            help="Which run of the sweep (default: $JOB_COMPLETION_INDEX).", show_default=False
        ),
    ] = None,
) -> None:
    """Run (or resume) one run of a sweep: the container entrypoint."""
    import os

    from orchestrator.errors import BadInput

    if run_index is None:
        raw = os.environ.get("JOB_COMPLETION_INDEX")
        if raw is None:
            raise BadInput("no run index: pass --run-index N or set JOB_COMPLETION_INDEX")
        try:
            run_index = int(raw)
        except ValueError as e:
            raise BadInput(f"JOB_COMPLETION_INDEX={raw!r} is not an integer") from e
    from trainer_image.entrypoint import run_trainer_process

    run_trainer_process(sweep, run_index)


# --- kubernetes ---------------------------------------------------------------------


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


def _status_backend(
    local: bool, namespace: str | None, context: str | None, endpoint_url: str | None
) -> Any:
    """The backend that answers status/logs for a sweep: this machine's or the cluster's."""
    if local:
        from orchestrator.backends.local import LocalBackend

        return LocalBackend()
    from orchestrator.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(namespace=namespace, context=context, endpoint_url=endpoint_url)


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

    from orchestrator.errors import BadInput
    from orchestrator.manifests import object_name, render_sweep, to_yaml, with_namespace
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

    from orchestrator.backends.kubernetes import KubernetesBackend
    from orchestrator.manifests import object_name, with_namespace
    from orchestrator.spec import load_spec

    sweep = with_namespace(load_spec(spec), namespace)
    result = KubernetesBackend(context=context).submit(sweep, dry_run=dry_run, replace=replace)
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
) -> None:
    """One row per run: state, restarts, node, progress. Exit 1 if a run failed or was cancelled."""
    from rich.console import Console

    from orchestrator.backends.kubernetes import DEFAULT_NAMESPACE
    from orchestrator.progress import describe

    backend = _status_backend(local, namespace, context, endpoint_url)
    ns = "local" if local else backend.namespace or DEFAULT_NAMESPACE

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
) -> None:
    """A run's log from its pod, or from the store once the pod is gone."""
    backend = _status_backend(local, namespace, context, endpoint_url)
    for line in backend.logs(sweep, run, follow=follow):
        print(line, flush=follow)


@app.command("cancel")
def k8s_cancel(
    sweep: SweepArg,
    namespace: NamespaceOpt = None,
    context: ContextOpt = None,
    local: LocalOpt = False,
) -> None:
    """Delete a sweep's Job (and so its pods) and ConfigMap; results stay in the store."""
    from orchestrator.backends.kubernetes import DEFAULT_NAMESPACE, KubernetesBackend

    if local:
        from orchestrator.backends.local import LocalBackend

        LocalBackend().cancel(sweep)
        err(f"cancelled local sweep {sweep!r}; results are kept, `run` again to resume")
        print(json.dumps({"sweep": sweep, "backend": "local", "cancelled": True}, indent=2))
        return

    backend = KubernetesBackend(namespace=namespace, context=context)
    deleted = backend.delete_sweep(sweep)
    err(f"cancelled sweep {sweep!r}: deleted {', '.join(deleted)}; results are kept")
    ns = backend.namespace or DEFAULT_NAMESPACE
    print(json.dumps({"sweep": sweep, "namespace": ns, "deleted": deleted}, indent=2))


# --- aggregation ----------------------------------------------------------------------


@app.command()
def aggregate(
    results_uri: Annotated[
        str,
        typer.Argument(
            help="Results root or one sweep's folder: a path, file:// or s3:// URI.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder.", show_default="./report/<sweep>"),
    ] = None,
    alpha: Annotated[
        list[float] | None,
        typer.Option(
            help="Weight of Acc_c in Qual = α·Acc_c + (1-α)·Acc_total; repeat for several.",
            show_default="0.2 0.5 0.8",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(help="Exit 2 on any incomplete or damaged result instead of reporting it."),
    ] = False,
    endpoint_url: Annotated[
        str | None, typer.Option(help="S3 endpoint for s3:// URIs, e.g. MinIO's URL.")
    ] = None,
    after_convergence: Annotated[
        str,
        typer.Option(
            help="Checkpoints after the convergence epoch: exclude (paper) or include them"
            " (adds the after-convergence pattern).",
        ),
    ] = "exclude",
    sweep: Annotated[
        str | None, typer.Option(help="Sweep to aggregate when the URI holds several.")
    ] = None,
    max_figures: Annotated[
        int, typer.Option(min=0, help="Cap on (run, class) pairs drawn as Fig. 3/Fig. 4.")
    ] = 24,
) -> None:
    """Tables (Table 1, switch points, Qual), figures and a report from a sweep's results."""
    from rich.console import Console

    from orchestrator import aggregate as ag
    from orchestrator import report
    from orchestrator.errors import BadInput
    from orchestrator.store import open_store

    if endpoint_url and not results_uri.startswith("s3://"):
        raise BadInput(f"--endpoint-url applies to s3:// URIs only, not {results_uri}")
    store = open_store(results_uri, **({"endpoint_url": endpoint_url} if endpoint_url else {}))
    agg = ag.aggregate(
        store,
        alphas=tuple(alpha) if alpha else ag.DEFAULT_ALPHAS,
        after_convergence=after_convergence,  # type: ignore[arg-type]  # checked there
        sweep=sweep,
    )
    if strict:
        ag.raise_if_problems(agg)
    folder = (out or Path("report") / agg.sweep).absolute()
    report.publish(agg, folder, max_figures=max_figures)
    console = Console(stderr=True)
    console.print(report.summary_table(agg))
    if len(agg.problems):
        err(f"{len(agg.problems)} incomplete or damaged result(s): see {folder / 'report.md'}")
    print(folder)


# --- datasets -------------------------------------------------------------------------


@app.command()
def prepare(
    dataset: Annotated[
        str, typer.Argument(help="Dataset to prepare: gtsrb or rsna.", show_default=False)
    ],
    input_dir: Annotated[
        Path,
        typer.Option(
            "--input",
            help="Raw dataset folder as distributed (inputs/README.md).",
            show_default=False,
        ),
    ],
    output: Annotated[
        str,
        typer.Option(help="Where the splits go: a path, file:// or s3:// URI.", show_default=False),
    ],
    image_size: Annotated[
        int | None, typer.Option(help="Side of the square images (default: gtsrb 32, rsna 160).")
    ] = None,
    split_seed: Annotated[
        int | None, typer.Option(help="Seed of the stratified split (default: 42).")
    ] = None,
    max_bad_fraction: Annotated[
        float | None,
        typer.Option(help="Share of unreadable/unlabelled files tolerated (default: 0.01)."),
    ] = None,
    crop_roi: Annotated[
        bool, typer.Option("--crop-roi", help="gtsrb: crop to the ROI first (the paper did not).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace splits already at --output.")
    ] = False,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint, e.g. MinIO's URL.")] = None,
    region: Annotated[str | None, typer.Option(help="S3 region.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Threads decoding images (default: CPUs, at most 8)."),
    ] = None,
) -> None:
    """Read a raw dataset once and write its prepared train/repair/test splits to a store."""
    import logging
    import os

    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from orchestrator.errors import BadInput
    from orchestrator.spec import DatasetSpec, StorageSpec, describe_error
    from trainer_image.data.prepared import PREPARERS, SPLITS, prepare_to_store

    if dataset not in PREPARERS:
        raise BadInput(
            f"prepare: no preparation for dataset {dataset!r}; use one of {sorted(PREPARERS)}"
        )
    fields = {
        "name": dataset,
        "input": str(input_dir),
        "image_size": image_size,
        "split_seed": split_seed,
        "max_bad_fraction": max_bad_fraction,
        "options": {"crop_roi": True} if crop_roi else {},
    }
    try:
        spec = DatasetSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise BadInput(describe_error(e, "prepare")) from e
    console = Console(stderr=True)
    # The readers log skipped files; show them here once, without configuring the root logger.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("trainer_image")
    logger.addHandler(handler)
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    # Off when stderr is not a terminal: a transient bar there only leaves a blank line,
    # which would make a bad-input error two lines instead of one.
    bar_off = not console.is_terminal
    try:
        with Progress(
            *columns, TimeRemainingColumn(), console=console, transient=True, disable=bar_off
        ) as bar:
            task = bar.add_task(f"reading {dataset}", total=None)
            uri, manifest = prepare_to_store(
                spec,
                output,
                storage=StorageSpec(endpoint_url=endpoint_url, region=region),
                overwrite=overwrite,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                workers=workers or min(8, os.cpu_count() or 1),
            )
    finally:
        logger.removeHandler(handler)
    n = manifest["num_classes"]
    table = Table(title=f"{dataset} {'x'.join(map(str, manifest['image_shape']))} -> {uri}")
    table.add_column("split")
    table.add_column("images", justify="right")
    labels = [f"class {c}" for c in range(n)] if n <= 10 else ["per class (min..max)"]
    for label in labels:
        table.add_column(label, justify="right")
    for name in SPLITS:
        part = manifest["splits"][name]
        counts = part["class_counts"]
        cells = [str(c) for c in counts] if n <= 10 else [f"{min(counts)}..{max(counts)}"]
        table.add_row(name, str(part["count"]), *cells)
    console.print(table)
    print(uri)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app and map our errors to one line and an exit code."""
    try:
        rv = app(args=argv, prog_name="early-repair", standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except TyperException as e:  # usage errors: unknown flag, bad value, missing argument
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx else ""
        err(f"error: {e.format_message()}{hint}")
        sys.exit(EXIT_BAD_INPUT if e.exit_code == 2 else e.exit_code)
    except typer.Abort:
        err("aborted")
        sys.exit(130)
    except EarlyRepairError as e:
        err(f"error: {e}")
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
