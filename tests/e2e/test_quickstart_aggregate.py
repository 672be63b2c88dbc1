"""End to end on real results: the quickstart's procedure (one seed, two classes, to stay
well under a minute on 2 cores) trained and repaired by the real trainer, then aggregated;
every output exists, the switch points agree with an independent computation from
records.parquet, and Chromium shows the report's figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from early_repair_testing.aggregate_browser import (
    CHROMIUM,
    check_report_on_screen,
    coloured_pixels,
    loaded_images,
    screenshots,
)
from early_repair_testing.paths import REPO

SEED = 1024
CLASSES = [3, 8]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results of the reduced quickstart, run once for the module with `early-repair run`."""
    from orchestrator.cli import main

    work = tmp_path_factory.mktemp("quickstart")
    spec = yaml.safe_load((REPO / "settings" / "quickstart.yaml").read_text())
    spec["seeds"] = [SEED]
    spec["repair"]["classes"] = CLASSES
    (work / "quickstart.yaml").write_text(yaml.safe_dump(spec))
    args = ["run", str(work / "quickstart.yaml"), "--results", str(work / "results")]
    with pytest.raises(SystemExit) as done:
        main([*args, "--workers", "1"])
    assert done.value.code == 0, "the reduced quickstart run failed"
    return work


@pytest.mark.slow
def test_quickstart_results_give_every_output(cli, quickstart: Path) -> None:
    out = quickstart / "report"
    r = cli("aggregate", quickstart / "results", "--out", out)
    assert r.code == 0, r.err
    assert r.out.strip() == str(out)
    for name in (
        "headline.csv",
        "effects.csv",
        "methods.csv",
        "records.parquet",
        "records.csv",
        "quality.csv",
        "switch_points.csv",
        "patterns.csv",
        "report.md",
        "report.html",
        "figures/table1.png",
        "figures/overview.png",
        *(
            f"figures/{k}_digits_small-cnn_class{c}.png"
            for k in ("seeds", "effect")
            for c in CLASSES
        ),
    ):
        assert (out / name).is_file(), name
    figs = sorted(p.name for p in (out / "figures").glob("fig*.png"))
    assert len(figs) == 2 * len(CLASSES)
    assert pd.read_csv(out / "problems.csv").empty

    records = pd.read_parquet(out / "records.parquet")
    base = records[records.kind == "base"]
    repaired = records[records.kind == "repaired"]
    assert len(repaired) == len(base) * len(CLASSES)  # every checkpoint x every class
    conv = int(records["convergence_epoch"].iloc[0])
    assert conv in set(base["epoch"])

    # Independent oracle: Qual from the raw records, the tie rule written out plainly.
    sp = pd.read_csv(out / "switch_points.csv")
    assert len(sp) == len(CLASSES) * 3 and set(sp["status"]) == {"ok"}
    for row in sp.itertuples(index=False):
        c, a = row.repair_class, row.alpha
        cand = repaired[(repaired.repair_class == c) & (repaired.epoch <= conv)]
        qual = {
            int(r["epoch"]): round(a * r[f"acc_class_{c}"] + (1 - a) * r["accuracy"], 12)
            for _, r in cand.iterrows()
        }
        top = max(qual.values())
        tied = sorted(e for e, q in qual.items() if q == top)
        best = conv if conv in tied else tied[0]
        assert row.best_epoch == best
        assert row.pattern == ("post-convergence" if best == conv else "pre-convergence")
        assert row.gain == pytest.approx(top - qual[conv], abs=1e-12)
    table = pd.read_csv(out / "patterns.csv")
    top_rows = table[table.scope == "dataset"]
    assert top_rows["compared"].tolist() == [len(CLASSES)] * 3
    assert (top_rows["pre-convergence"] + top_rows["post-convergence"] == len(CLASSES)).all()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: apt-get install -y chromium")
def test_quickstart_report_opens_in_chromium(cli, quickstart: Path, tmp_path: Path) -> None:
    out = quickstart / "report-browser"
    assert cli("aggregate", quickstart / "results", "--out", out).code == 0
    page = out / "report.html"
    n = page.read_text().count("<img ")
    # Table 1 and the overview, Fig. 3/4 per (run, class) drawn, and per class an effect, a
    # seeds and an aligned figure
    assert n == 2 + 2 * len(CLASSES) + 3 * len(CLASSES)
    assert loaded_images(page, tmp_path) == (n, n)
    check_report_on_screen(page, tmp_path, len(CLASSES), harm=False)
    full, empty = screenshots(page, tmp_path, height=6000)
    # (the bare page still shows small broken-image icons, hence a ratio, not zero)
    assert coloured_pixels(full) > 20_000 and coloured_pixels(empty) < coloured_pixels(full) / 10
