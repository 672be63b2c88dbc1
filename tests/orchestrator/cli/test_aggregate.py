"""`early-repair aggregate` as a user runs it: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from early_repair_testing.aggregate_tree import RunTree, paper_table1_runs, pattern_run, write_tree

from orchestrator.results import layout as results
from orchestrator.store.file import FileStore

OUTPUTS = [
    "headline.csv",
    "effects.csv",
    "methods.csv",
    "records.parquet",
    "records.csv",
    "quality.csv",
    "switch_points.csv",
    "patterns.csv",
    "runs.csv",
    "problems.csv",
    "report.md",
    "report.html",
    "figures/table1.png",
    "figures/overview.png",
    "figures/seeds_digits_small_cnn_class3.png",
    "figures/effect_digits_small_cnn_class3.png",
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small clean sweep: three runs, one class, every pattern once (include mode)."""
    store = FileStore(tmp_path / "results")
    write_tree(
        store,
        "sw",
        [
            pattern_run("r-pre", "pre", seed=1),
            pattern_run("r-post", "post", seed=2),
            pattern_run("r-after", "after", seed=3),
        ],
    )
    return tmp_path / "results"


@pytest.mark.slow
def test_aggregate_writes_every_output_and_prints_the_folder(cli, tree: Path, tmp_path: Path):
    out = tmp_path / "out"
    r = cli("aggregate", tree, "--out", out)
    assert r.code == 0, r.err
    assert r.out == f"{out.absolute()}\n"
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    for run in ("r-pre", "r-post", "r-after"):
        assert (out / "figures" / f"fig3_{run}_class3.png").is_file()
        assert (out / "figures" / f"fig4_{run}_class3.png").is_file()
    assert "Table 1" in r.err and "pre-convergence" in r.err
    assert "Headline - sweep sw (rules: text)" in r.err
    assert "digits, 9 cases (3 seeds x 1 class x 3 α)" in " ".join(r.err.split())
    table = pd.read_csv(out / "patterns.csv")
    top = table[table.scope == "dataset"]
    assert top["pre-convergence"].tolist() == [1, 1, 1]
    assert top["post-convergence"].tolist() == [2, 2, 2]  # the after-run counts as post
    assert "after-convergence" not in table.columns


@pytest.mark.slow
def test_after_convergence_include_and_alphas(cli, tree: Path, tmp_path: Path):
    out = tmp_path / "out"
    r = cli(
        "aggregate",
        tree,
        "--out",
        out,
        "--after-convergence",
        "include",
        "--alpha",
        "0.7",
        "--alpha",
        "0.3",
    )
    assert r.code == 0, r.err
    q = pd.read_csv(out / "quality.csv")
    assert sorted(q["alpha"].unique()) == [0.3, 0.7]
    sp = pd.read_csv(out / "switch_points.csv")
    got = sp[sp.alpha == 0.3].set_index("run")["pattern"].to_dict()
    assert got == {
        "r-pre": "pre-convergence",
        "r-post": "post-convergence",
        "r-after": "after-convergence",
    }
    assert "after-convergence" in (out / "report.md").read_text()


@pytest.mark.slow
def test_default_out_is_report_sweep_in_the_working_dir(cli, tree: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("aggregate", f"file://{tree}")
    assert r.code == 0, r.err
    assert r.out.strip() == str(tmp_path / "report" / "sw")
    assert (tmp_path / "report" / "sw" / "report.html").is_file()


def damage(tree: Path) -> str:
    key = results.repair_metrics("sw", "r-pre", 5, 3, None)
    (tree / key).write_text('{"schema_version": 1, "sweep": "sw", "ru')
    return key


@pytest.mark.slow
def test_damaged_results_are_reported_not_fatal(cli, tree: Path, tmp_path: Path):
    key = damage(tree)
    out = tmp_path / "out"
    r = cli("aggregate", tree, "--out", out)
    assert r.code == 0, r.err
    problems = pd.read_csv(out / "problems.csv")
    assert problems.loc[problems.kind == "damaged", "key"].tolist() == [key]
    # the damaged record, and its (run, class) now compared without epoch 5
    assert problems["kind"].tolist() == ["damaged", "partial"]
    assert "2 incomplete or damaged results" in r.err
    assert key in (out / "report.md").read_text()


def test_strict_makes_damage_bad_input_and_creates_nothing(cli, tree: Path, tmp_path: Path):
    key = damage(tree)
    out = tmp_path / "out"
    r = cli("aggregate", tree, "--out", out, "--strict")
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "2 incomplete or damaged results (damaged: 1, partial: 1)" in lines[0]
    assert key in lines[0] and "drop --strict" in lines[0]
    assert "Traceback" not in r.err and r.out == ""
    assert not out.exists()


@pytest.mark.slow
def test_strict_on_unfinished_run_and_on_clean_tree(cli, tree: Path, tmp_path: Path):
    assert cli("aggregate", tree, "--out", tmp_path / "a", "--strict").code == 0
    write_tree(
        FileStore(tree),
        "sw",
        [
            RunTree(
                run="r-late",
                convergence=5,
                epochs=[1],
                classes=[3],
                repaired={},
                summary=False,
                success=False,
                seed=9,
            )
        ],
    )
    r = cli("aggregate", tree, "--out", tmp_path / "b", "--strict")
    assert r.code == 2 and "unfinished-run: 1" in r.err and "incomplete: 1" in r.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{empty}"], "no results found"),
        (["{missing}"], "no results found"),
        (["ftp://host/x"], "unsupported URI scheme 'ftp'"),
        (["   "], "results URI is empty"),
        (["{tree}", "--alpha", "1.5"], "--alpha 1.5"),
        (["{tree}", "--alpha", "x"], "--alpha"),
        (["{tree}", "--after-convergence", "later"], "--after-convergence 'later'"),
        (["{tree}", "--rules", "paper"], "--rules 'paper': use text"),
        (["{tree}", "--rules", "notebook", "--after-convergence", "include"], "text only"),
        (["{tree}", "--bootstrap-seed", "-1"], "--bootstrap-seed"),
        (["{tree}", "--endpoint-url", "http://127.0.0.1:9"], "applies to s3:// URIs only"),
        (["{tree}", "--sweep", "nope"], "no sweep 'nope' here; found: sw"),
        (["{tree}", "--out", "{file}"], "is a file; pass a folder"),
        (["{tree}", "--max-figures", "-1"], "--max-figures"),
    ],
)
def test_bad_input_is_exit_2_with_one_line(cli, tree: Path, tmp_path: Path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    fill = {
        "empty": tmp_path / "empty",
        "missing": tmp_path / "missing",
        "tree": tree,
        "file": tmp_path / "afile",
    }
    r = cli("aggregate", *[a.format(**fill) for a in args])
    assert r.code == 2, (r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert message in lines[0]
    assert "Traceback" not in r.err and r.out == ""
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.slow
def test_figure_cap_and_stale_figures(cli, tmp_path: Path):
    store = FileStore(tmp_path / "results")
    write_tree(store, "paper", paper_table1_runs())  # 20 (run, class) pairs, 2 datasets
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "mine.png").write_bytes(b"a user's file")
    (out / "figures" / "fig3_gone_class1.png").write_bytes(b"from an earlier aggregate")
    r = cli("aggregate", tmp_path / "results", "--out", out, "--max-figures", "4")
    assert r.code == 0, r.err
    figs = sorted(p.name for p in (out / "figures").glob("fig*.png"))
    # one pair from each (dataset, model, class) group before any group gets a second seed
    assert figs == sorted(
        f"fig{n}_{run}_class{c}.png"
        for n in (3, 4)
        for run, c in [
            ("gtsrb-vgg16-s1024", 20),
            ("gtsrb-vgg16-s1024", 27),
            ("gtsrb-vgg16-s1024", 30),
            ("rsna-densenet121-s1024", 1),
        ]
    )
    assert (out / "figures" / "mine.png").read_bytes() == b"a user's file"
    assert "Drawn for 4 of 20 (run, class) pairs" in (out / "report.md").read_text()
    r = cli("aggregate", tmp_path / "results", "--out", out, "--max-figures", "0")
    assert r.code == 0
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == [
        "aligned_gtsrb_vgg16_class20.png",
        "aligned_gtsrb_vgg16_class27.png",
        "aligned_gtsrb_vgg16_class30.png",
        "aligned_rsna_densenet121_class1.png",
        "effect_gtsrb_vgg16_class20.png",
        "effect_gtsrb_vgg16_class27.png",
        "effect_gtsrb_vgg16_class30.png",
        "effect_rsna_densenet121_class1.png",
        "mine.png",
        "overview.png",
        "seeds_gtsrb_vgg16_class20.png",
        "seeds_gtsrb_vgg16_class27.png",
        "seeds_gtsrb_vgg16_class30.png",
        "seeds_rsna_densenet121_class1.png",
        "table1.png",
    ]
    assert not list(out.glob(".aggregate-*"))  # the staging folder is gone


def test_cli_import_stays_light_and_modules_never_import_torch(repo: Path):
    code = (
        "import sys, orchestrator.cli;"
        "heavy = [m for m in ('pandas', 'matplotlib', 'scipy', 'pyarrow',"
        " 'orchestrator.analysis.tables', 'torch') if m in sys.modules];"
        "import orchestrator.analysis.tables, orchestrator.analysis.report,"
        " orchestrator.analysis.output;"
        "print(json.dumps([heavy, 'torch' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json;" + code],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == [[], False]


@pytest.mark.slow
def test_rules_flag_and_seeded_headline(cli, tree: Path, tmp_path: Path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli("aggregate", tree, "--out", a, "--rules", "notebook").code == 0
    sp = pd.read_csv(a / "switch_points.csv")
    # the notebook's reference is the last checkpoint (15): r-after's best is post there
    got = sp[sp.alpha == 0.5].set_index("run")[["reference_epoch", "pattern"]]
    assert got.to_dict("index") == {
        "r-pre": {"reference_epoch": 15, "pattern": "pre-convergence"},
        "r-post": {"reference_epoch": 15, "pattern": "pre-convergence"},
        "r-after": {"reference_epoch": 15, "pattern": "post-convergence"},
    }
    report = (a / "report.md").read_text()
    assert "counting rules `notebook`" in report and "`--rules notebook`" in report
    assert cli("aggregate", tree, "--out", b, "--bootstrap-seed", "5").code == 0
    assert cli("aggregate", tree, "--out", c, "--bootstrap-seed", "5").code == 0
    assert (b / "headline.csv").read_bytes() == (c / "headline.csv").read_bytes()
    assert "9999 resamples, seed 5" in (b / "report.md").read_text()


# -- the output folder: one line when it cannot be written, never a half-written report -----

AGGREGATE = (
    "import resource, signal, sys;"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"  # a write past the limit fails (EFBIG)
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])));"
    "from orchestrator.cli import main; main(sys.argv[2:])"
)


def aggregate_with_file_limit(repo: Path, limit: int, *args: object) -> subprocess.CompletedProcess:
    """`early-repair aggregate` in a process that cannot write files past ``limit`` bytes -
    the operating system's own write failure, as on a full disk."""
    return subprocess.run(
        [sys.executable, "-c", AGGREGATE, str(limit), "aggregate", *map(str, args)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE (POSIX)")
def test_full_disk_is_one_line_and_leaves_the_previous_report_whole(
    cli, repo: Path, tree: Path, tmp_path: Path
):
    out = tmp_path / "out"
    assert cli("aggregate", tree, "--out", out).code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = aggregate_with_file_limit(repo, 150_000, tree, "--out", out, "--rules", "notebook")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and r.stdout == ""
    assert lines[0].startswith(f"error: --out {out}: cannot write the report (File too large)")
    assert "no report was left half-written" in lines[0]
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the old report, whole; no staging folder left behind
    assert "counting rules `text`" in (out / "report.md").read_text()


@pytest.mark.slow
def test_full_disk_on_a_new_folder_leaves_no_report(repo: Path, tree: Path, tmp_path: Path):
    out = tmp_path / "new"
    r = aggregate_with_file_limit(repo, 150_000, tree, "--out", out)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (out / "report.html").exists() and not (out / "report.md").exists()
    assert not list(out.glob(".aggregate-*"))


@pytest.mark.parametrize("where", ["sys", "chmod"])
def test_unwritable_out_is_one_line_exit_2(cli, tree: Path, tmp_path: Path, where: str):
    import os

    if where == "sys":
        out = Path("/sys/early-repair-report")  # no one may create folders in sysfs
        if not Path("/sys").is_dir():
            pytest.skip("no /sys")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir(mode=0o555)
        out = tmp_path / "ro" / "report"
    r = cli("aggregate", tree, "--out", out)
    assert r.code == 2, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --out {out}: cannot create")
    assert "Traceback" not in r.err and r.out == ""
