"""``aggregate``: results in a store -> headline, tables, Table 1, figures and the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.analysis.formats import DEFAULT_FORMATS
from orchestrator.cli.app import ANALYSIS_PANEL, app, err
from orchestrator.cli.output import LocationOutputOpt, printable_warnings, render


def _default_out(sweep: str, uri: str) -> Path:
    """``report/<sweep>`` when the sweep's name (which comes from the store: anyone who can
    write there chose it) is a valid sweep name - never a path such as ``/etc`` or ``../x``."""
    from orchestrator.errors import BadInput, one_line
    from orchestrator.spec import DNS1123_LABEL, MAX_SWEEP_NAME

    if len(sweep) <= MAX_SWEEP_NAME and DNS1123_LABEL.fullmatch(sweep):
        return Path("report") / sweep
    shown = one_line(repr(sweep), 80)
    raise BadInput(
        f"{uri}: the sweep's name {shown} is not a valid sweep name (lower-case letters,"
        " digits and '-'), so it does not name the output folder; pass --out DIR"
    )


def _checked(
    results_uri: str,
    endpoint_url: str | None,
    sweep: str | None,
    rules: str,
    after_convergence: str | None,
    formats: str,
) -> tuple[str, tuple[str, ...]]:
    """``aggregate``'s options checked before anything is read: (the after-convergence
    mode, the figure formats); BadInput naming the option otherwise."""
    from orchestrator.analysis import aggregate as ag
    from orchestrator.analysis.formats import parse_formats
    from orchestrator.errors import BadInput

    if sweep is not None:
        from orchestrator.spec import check_sweep_name

        check_sweep_name(sweep, "--sweep")
    if endpoint_url and not results_uri.startswith("s3://"):
        raise BadInput(f"--endpoint-url applies to s3:// URIs only, not {results_uri}")
    mode = after_convergence or "exclude"
    if rules == "notebook" and after_convergence is not None:
        raise BadInput(
            "--after-convergence applies to --rules text only; the notebook's rules compare"
            " every checkpoint against the last"
        )
    ag.check_rules(rules, mode)
    return mode, parse_formats(formats)


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
    rules: Annotated[
        str,
        typer.Option(
            help="Counting rules: text (the paper's text: reference = convergence checkpoint,"
            " it wins ties) or notebook (the paper's notebook: reference = last checkpoint,"
            " ties go to the earliest, a unit with any checkpoint missing is incomplete).",
        ),
    ] = "text",
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
        str | None,
        typer.Option(
            help="With --rules text, checkpoints after the convergence epoch: exclude (paper)"
            " or include them (adds the after-convergence pattern).",
            show_default="exclude",
        ),
    ] = None,
    sweep: Annotated[
        str | None, typer.Option(help="Sweep to aggregate when the URI holds several.")
    ] = None,
    max_figures: Annotated[
        int, typer.Option(min=0, help="Cap on (run, class) pairs drawn as Fig. 3/Fig. 4.")
    ] = 24,
    bootstrap_seed: Annotated[
        int, typer.Option(min=0, help="Seed of the bootstrap resampling behind every CI.")
    ] = 0,
    noise_alpha: Annotated[
        float,
        typer.Option(
            help="Level of the per-unit paired test: an early win is beyond noise when the"
            " best earlier checkpoint's Holm-adjusted p is below it.",
        ),
    ] = 0.05,
    formats: Annotated[
        str,
        typer.Option(
            "--formats",
            help="Figure formats, comma-separated: png (the report shows it) plus pdf and/or"
            " svg, written beside each PNG with their fonts embedded.",
        ),
    ] = ",".join(DEFAULT_FORMATS),
    output: LocationOutputOpt = None,
) -> None:
    """Headline, tables (Table 1, switch points, repair effects, Qual), figures and a report
    from a sweep's results."""
    from rich.console import Group

    from orchestrator.analysis import aggregate as ag
    from orchestrator.analysis.problems import raise_if_problems
    from orchestrator.analysis.words import plural
    from orchestrator.store import open_store

    mode, figure_formats = _checked(
        results_uri, endpoint_url, sweep, rules, after_convergence, formats
    )
    store = open_store(results_uri, **({"endpoint_url": endpoint_url} if endpoint_url else {}))
    agg = ag.aggregate(
        store,
        alphas=tuple(alpha) if alpha else ag.DEFAULT_ALPHAS,
        after_convergence=mode,  # type: ignore[arg-type]  # checked above
        rules=rules,  # type: ignore[arg-type]
        sweep=sweep,
        bootstrap_seed=bootstrap_seed,
        noise_alpha=noise_alpha,
    )
    if strict:
        raise_if_problems(agg.loaded.uri, agg.problems)
    folder = (out or _default_out(agg.sweep, agg.loaded.uri)).absolute()
    printable_warnings()  # matplotlib quotes labels (store names) in its font warnings
    # Only now: matplotlib writes its font cache on import, bad input must leave no trace.
    from orchestrator.analysis import output as report_files
    from orchestrator.analysis import terminal

    report_files.publish(agg, folder, max_figures=max_figures, formats=figure_formats)
    if len(agg.problems):
        err(
            f"{plural(len(agg.problems), 'incomplete or damaged result')}:"
            f" see {folder / 'report.md'}"
        )

    def table() -> Group:
        return Group(*terminal.terminal_summary(agg))

    render(terminal.summary(agg, folder), output, table, location=str(folder), table_to_stderr=True)
