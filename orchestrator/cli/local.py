"""Commands that run a sweep on this machine: ``run`` and the container entrypoint ``trainer``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.app import LOCAL_PANEL, SpecArg, app, err
from orchestrator.cli.output import LocationOutputOpt, render


@app.command(rich_help_panel=LOCAL_PANEL)
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
    output: LocationOutputOpt = None,
) -> None:
    """Run every run of a sweep on this machine; print where the results are."""
    from dataclasses import asdict
    from functools import partial

    from orchestrator.backends import open_backend
    from orchestrator.cli.cluster import LOCAL_BACKEND, _runs_table
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
    backend = open_backend(LOCAL_BACKEND, workers=workers)
    outcome = backend.submit(backend.plan(sweep))
    err(outcome.summary())
    doc = {
        "sweep": outcome.sweep,
        "results": outcome.results,
        "seconds": round(outcome.seconds, 3),
        "log_dir": outcome.log_dir,
        "failed": len(outcome.failed),
        "runs": [{**asdict(s), "state": str(s.state)} for s in outcome.runs],
    }
    rows = [[str(s.index), s.run, str(s.state), s.message] for s in outcome.runs]
    header = ["index", "run", "state", "message"]
    table = partial(_runs_table, f"{outcome.sweep}: {outcome.results}", rows, header)
    render(doc, output, table, location=outcome.results)
    if backend.stopped_by is not None:  # Ctrl-C (130) or SIGTERM (143), as a shell reports
        raise typer.Exit(128 + backend.stopped_by)
    if outcome.failed:
        raise typer.Exit(1)


# Hidden from --help (what pods and `run` start, not a user command) but callable.
@app.command(hidden=True, rich_help_panel=LOCAL_PANEL)
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
    from orchestrator.backends import die_with_parent
    from trainer_image.entrypoint import run_trainer_process

    die_with_parent()
    run_trainer_process(sweep, run_index)
