"""``aggregate``: results in a store -> tables, Table 1, figures and the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.app import ANALYSIS_PANEL, app, err
from orchestrator.cli.output import LocationOutputOpt, render


@app.command(rich_help_panel=ANALYSIS_PANEL)
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
        typer.Option(
            "--strict", help="Exit 2 on any incomplete or damaged result instead of reporting it."
        ),
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
    output: LocationOutputOpt = None,
) -> None:
    """Tables (Table 1, switch points, Qual), figures and a report from a sweep's results."""
    from functools import partial

    from orchestrator.analysis import report
    from orchestrator.analysis import tables as ag
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
    if len(agg.problems):
        err(f"{len(agg.problems)} incomplete or damaged result(s): see {folder / 'report.md'}")
    table = partial(report.summary_table, agg)
    render(report.summary(agg, folder), output, table, location=str(folder), table_to_stderr=True)
