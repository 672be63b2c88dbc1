"""Writing ``aggregate``'s outputs so that a half-written report never looks complete.

Everything is written into a hidden staging folder inside ``--out`` first. Only when all
of it is written are the files moved into place - the previous report.md/report.html
removed first, the new ones moved last - so a full disk or an unwritable folder leaves
the previous report untouched (or none), never a report that mixes two runs or lacks
figures. Such failures are one line and exit 2 (``BadInput``), naming the folder.
Files of the user's own in ``--out`` (or ``--out/figures``) are never touched; figures
named like ours from an earlier aggregate are replaced, so none of them is left stale.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from orchestrator.analysis import costs, latex, report
from orchestrator.analysis.aggregate import Aggregation
from orchestrator.analysis.formats import figure_formats
from orchestrator.analysis.run_frame import join_epochs
from orchestrator.common.atomic import replace_durably
from orchestrator.errors import BadInput

STAGING_PREFIX = ".aggregate-"
REPORT_FILES = ("report.md", "report.html")  # moved last: their presence means complete


def write_tables(agg: Aggregation, out: Path) -> list[Path]:
    """Write every table into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    rec = agg.loaded.records
    rec.to_parquet(out / "records.parquet", index=False)
    runs = agg.loaded.runs.assign(
        checkpoint_epochs=agg.loaded.runs["checkpoint_epochs"].map(join_epochs),
        repair_classes=agg.loaded.runs["repair_classes"].map(join_epochs),
        methods=agg.loaded.runs["methods"].map(";".join),
    )
    written = [out / "records.parquet"]
    # The regression ledger (regressions.py), for trees with per-example predictions.
    if len(agg.regressions) or bool(rec.get("has_predictions", pd.Series(dtype=bool)).any()):
        agg.regressions.to_parquet(out / "regressions.parquet", index=False)
        written.append(out / "regressions.parquet")
    for name, df in (
        ("headline.csv", agg.headline),
        ("effects.csv", agg.effects),
        ("methods.csv", agg.methods),
        ("records.csv", rec),
        ("quality.csv", agg.quality),
        ("switch_points.csv", agg.switch_points),
        ("patterns.csv", agg.patterns),
        ("runs.csv", runs),
        ("problems.csv", agg.problems),
    ):
        df.to_csv(out / name, index=False)
        written.append(out / name)
    if len(agg.loaded.costs):  # runs that recorded their costs (run.json's costs)
        for name, df in (
            ("costs.csv", costs.summary(agg.loaded)),
            ("costs_runs.csv", costs.per_run(agg.loaded)),
        ):
            df.to_csv(out / name, index=False)
            written.append(out / name)
    if len(agg.readiness_runs):  # only sweeps with training.readiness
        for name, df in (
            ("readiness.csv", agg.readiness),
            ("readiness_runs.csv", agg.readiness_runs),
            ("readiness_stops.csv", agg.readiness_stops),
        ):
            df.to_csv(out / name, index=False)
            written.append(out / name)
    return written


def publish(
    agg: Aggregation,
    out: Path,
    *,
    max_figures: int = report.DEFAULT_MAX_FIGURES,
    formats: tuple[str, ...] = ("png",),
) -> list[Path]:
    """Every output of ``aggregate`` in ``out``: the tables (CSV, LaTeX), the figures (in
    ``formats``; the CLI's default is ``formats.DEFAULT_FORMATS``) and the report."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: is a file; pass a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as e:
        raise BadInput(f"--out {out}: cannot create the folder ({e.strerror or e})") from e
    try:
        with figure_formats(formats):
            written = [
                *write_tables(agg, staging),
                *latex.write_tables(agg, staging),
                *report.write_report(agg, staging, max_figures=max_figures),
            ]
        return _move_into_place(staging, out, written)
    except OSError as e:
        raise BadInput(
            f"--out {out}: cannot write the report ({e.strerror or e}); no report was left"
            " half-written - free some space or pass another --out"
        ) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(out: Path) -> None:
    # An aggregate killed while writing leaves its staging folder; nothing else uses them.
    for p in out.glob(f"{STAGING_PREFIX}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _move_into_place(staging: Path, out: Path, written: list[Path]) -> list[Path]:
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)
    figures = out / "figures"
    if figures.is_dir():
        for f in figures.iterdir():
            if f.is_file() and report.FIGURE_NAME.match(f.name):
                f.unlink()
    figures.mkdir(exist_ok=True)
    last = [p for p in written if p.name in REPORT_FILES and p.parent == staging]
    moved = []
    for p in [*[p for p in written if p not in last], *last]:
        dest = out / p.relative_to(staging)
        replace_durably(p, dest)
        moved.append(dest)
    return moved
