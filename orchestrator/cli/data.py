"""Commands about data and specs: ``prepare`` (raw dataset -> splits) and ``schema``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli.app import DATA_PANEL, app
from orchestrator.cli.output import LocationOutputOpt, Output, dumps, only, render


@app.command(rich_help_panel=DATA_PANEL)
def schema(
    output: Annotated[
        Output,
        typer.Option(
            "--output", "-o", help="json or yaml.", metavar="FORMAT", case_sensitive=False
        ),
    ] = Output.json,
) -> None:
    """Print the JSON Schema of the sweep spec (every field, its type and meaning)."""
    from orchestrator.spec import json_schema

    only(output, (Output.json, Output.yaml), "schema")
    sys.stdout.write(dumps(json_schema(), output))


@app.command(rich_help_panel=DATA_PANEL)
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
    out: Annotated[
        str,
        typer.Option(
            help="Where the splits go: a path, file:// or s3:// URI.",
            show_default=False,
            metavar="URI",
        ),
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
    preprocess: Annotated[
        str | None,
        typer.Option(help="resize (default) or released: the released code's preprocessing."),
    ] = None,
    no_stratify: Annotated[
        bool,
        typer.Option(
            "--no-stratify", help="Split without regard to labels (the released gtsrb split)."
        ),
    ] = False,
    test_split_seed: Annotated[
        int | None,
        typer.Option(help="rsna: seed of the test split (default: the split seed; released 43)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace splits already at --out.")
    ] = False,
    endpoint_url: Annotated[str | None, typer.Option(help="S3 endpoint, e.g. MinIO's URL.")] = None,
    region: Annotated[str | None, typer.Option(help="S3 region.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Threads decoding images (default: CPUs, at most 8)."),
    ] = None,
    output: LocationOutputOpt = None,
) -> None:
    """Read a raw dataset once and write its prepared train/repair/test splits to a store."""
    import logging
    import os

    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from orchestrator.catalog import dataset_preparer
    from orchestrator.errors import BadInput
    from orchestrator.spec import DatasetSpec, StorageSpec, describe_error
    from orchestrator.urls import check_endpoint
    from trainer_image.data.prepared import SPLITS, prepare_to_store

    dataset_preparer(dataset)  # a dataset it cannot prepare is bad input before anything else
    fields = {
        "name": dataset,
        "input": str(input_dir),
        "image_size": image_size,
        "split_seed": split_seed,
        "max_bad_fraction": max_bad_fraction,
        "options": {"crop_roi": True} if crop_roi else {},
        "preprocess": preprocess,
        "stratify": False if no_stratify else None,
        "test_split_seed": test_split_seed,
    }
    if endpoint_url is not None:
        check_endpoint(endpoint_url, "--endpoint-url")
    try:
        spec = DatasetSpec.model_validate({k: v for k, v in fields.items() if v is not None})
        storage = StorageSpec(endpoint_url=endpoint_url, region=region)
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
                out,
                storage=storage,
                overwrite=overwrite,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                workers=workers or min(8, os.cpu_count() or 1),
            )
    finally:
        logger.removeHandler(handler)
    doc = {"uri": uri, "manifest": manifest}
    table = partial(_splits_table, f"{dataset} {'x'.join(map(str, manifest['image_shape']))}")
    render(doc, output, lambda: table(uri, manifest, SPLITS), location=uri, table_to_stderr=True)


def _splits_table(title: str, uri: str, manifest: dict[str, Any], splits: Sequence[str]) -> Any:
    """Images per split and class of prepared splits (a range per split past ten classes)."""
    from rich.table import Table

    n = manifest["num_classes"]
    table = Table(title=f"{title} -> {uri}")
    table.add_column("split")
    table.add_column("images", justify="right")
    labels = [f"class {c}" for c in range(n)] if n <= 10 else ["per class (min..max)"]
    for label in labels:
        table.add_column(label, justify="right")
    for name in splits:
        part = manifest["splits"][name]
        counts = part["class_counts"]
        cells = [str(c) for c in counts] if n <= 10 else [f"{min(counts)}..{max(counts)}"]
        table.add_row(name, str(part["count"]), *cells)
    return table
