"""``-o json|yaml|table`` on every command that prints data, ``--out -`` for ``plan``, and the
rest of the kubectl-style surface: ``--version``, completion, short flags, a hidden
``trainer``, grouped and readable help."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from early_repair_testing.gtsrb_tree import write_gtsrb
from early_repair_testing.kube_api import Cluster, Controller
from early_repair_testing.paths import QUICKSTART, REPO

from orchestrator.backends.kubernetes.manifests import object_name, render_sweep
from orchestrator.spec import load_spec

NS = "early-repair"
TINY = {
    "name": "tiny-out",
    "datasets": ["digits"],
    "models": ["small_cnn"],
    "seeds": [3],
    "training": {"max_epochs": 1, "device": "cpu", "num_threads": 1},
    "repair": {"classes": [8], "particles": 6, "iterations": 2},
}


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def exe() -> str:
    found = shutil.which("early-repair", path=str(Path(sys.executable).parent))
    assert found, "the early-repair console script is not installed in this environment"
    return found


def env(**extra: str) -> dict[str, str]:
    # PYTHONPATH: this checkout's code, also when the console script belongs to another one.
    # Never a completion request of the surroundings: with it set, every command would
    # answer as a completion (the tests that want one pass it in ``extra``).
    here = {k: v for k, v in os.environ.items() if not k.endswith("_COMPLETE")}
    return {**here, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", **extra}


def both(cli, *args: Any) -> tuple[Any, Any]:
    """The command's answer as parsed from ``-o json`` and from ``-o yaml``."""
    r_json, r_yaml = cli(*args, "-o", "json"), cli(*args, "-o", "yaml")
    assert r_json.code in (0, 1), r_json.err
    assert r_yaml.code == r_json.code, r_yaml.err
    return json.loads(r_json.out), yaml.safe_load(r_yaml.out)


# --- plan ---------------------------------------------------------------------------


def test_plan_yaml_pipes_into_safe_load_all() -> None:
    """`early-repair plan SPEC -o yaml` is a YAML stream that safe_load_all reads whole."""
    parse = "import sys, yaml, json; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))"
    plan = subprocess.Popen(
        [exe(), "plan", str(QUICKSTART), "-o", "yaml"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    parsed = subprocess.run(
        [sys.executable, "-c", parse], stdin=plan.stdout, capture_output=True, text=True
    )
    assert plan.wait(timeout=120) == 0
    assert parsed.returncode == 0, parsed.stderr
    (doc,) = json.loads(parsed.stdout)
    spec = load_spec(QUICKSTART)
    assert doc["sweep"] == "quickstart" and doc["spec_hash"] == spec.spec_hash()
    assert [r["name"] for r in doc["runs"]] == [r.name for r in spec.runs()]


def test_plan_json_and_yaml_say_the_same(cli) -> None:
    as_json, as_yaml = both(cli, "plan", QUICKSTART)
    assert as_json == as_yaml
    assert [r["seed"] for r in as_json["runs"]] == [1024, 2048, 4096]


def test_plan_out_dash_writes_only_the_objects_to_stdout(cli, tmp_path: Path) -> None:
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(QUICKSTART.read_text() + "results: s3://bucket/sweeps\n")
    r = cli("plan", spec_file, "--out", "-")
    assert r.code == 0, r.err
    assert list(yaml.safe_load_all(r.out)) == render_sweep(load_spec(spec_file))
    assert "digits-small-cnn-s1024" in r.err  # the run table, for the person, on stderr
    assert not (Path.cwd() / "-").exists()


def test_plan_out_dash_with_another_format_is_bad_input(cli, tmp_path: Path) -> None:
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(QUICKSTART.read_text() + "results: s3://bucket/sweeps\n")
    r = cli("plan", spec_file, "--out", "-", "-o", "json")
    assert r.code == 2 and r.out == ""
    assert r.err.splitlines() == [
        "error: --out - prints the objects on stdout: drop -o, or --out to a file"
    ]


def test_unknown_format_is_a_usage_error(cli) -> None:
    r = cli("plan", QUICKSTART, "-o", "xml")
    assert r.code == 2 and r.out == ""
    assert "xml" in r.err and len(r.err.strip().splitlines()) == 1


def test_table_on_a_terminal_json_elsewhere(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    r = cli("plan", QUICKSTART)  # captured: not a terminal
    assert json.loads(r.out)["sweep"] == "quickstart"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    r = cli("plan", QUICKSTART)
    assert r.code == 0 and "digits-small-cnn-s2048" in r.out
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.out)
    r = cli("plan", QUICKSTART, "-o", "table")
    assert "digits-small-cnn-s2048" in r.out and "digits-small-cnn-s2048" not in r.err


# --- submit, status, cancel on a (stand-in) cluster ---------------------------------


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with Cluster() as c:
        monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig(tmp_path / "kubeconfig")))
        yield c


def test_cluster_commands_print_json_and_yaml(cli, cluster: Cluster, tmp_path: Path, s3_bucket):
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(QUICKSTART.read_text() + f"results: {s3_bucket.uri('sweeps')}\n")
    name = object_name(load_spec(spec_file))

    dry_json, dry_yaml = both(cli, "submit", spec_file, "--dry-run", "-n", NS)
    assert dry_json == dry_yaml and dry_json["dry_run"] is True
    r = cli("submit", spec_file, "-o", "yaml")
    assert r.code == 0, r.err
    assert yaml.safe_load(r.out)["created"] == [f"configmap/{name}", f"job/{name}"]
    r = cli("submit", spec_file, "-o", "table")
    assert r.code == 0 and f"job/{name}" in r.out and "unchanged" in r.out

    Controller(cluster, NS).start_pod(name, 0, node="node-a")
    args = ("status", "quickstart", "--endpoint-url", s3_bucket.endpoint_url, "-n", NS)
    as_json, as_yaml = both(cli, *args)
    assert as_json == as_yaml
    assert [x["state"] for x in as_json["runs"]] == ["PENDING", "PENDING", "PENDING"]
    assert as_json["runs"][0]["node"] == "node-a"
    # --json is kept as -o json; the two together must agree.
    assert json.loads(cli(*args, "--json").out) == as_json
    r = cli(*args, "--json", "-o", "yaml")
    assert r.code == 2 and r.err.startswith("error: --json means -o json")

    cancelled_json = json.loads(cli("cancel", "quickstart", "-o", "json").out)
    assert cancelled_json["deleted"] == [f"job/{name}", f"configmap/{name}"]
    assert cli("submit", spec_file).code == 0
    cancelled_yaml = yaml.safe_load(cli("cancel", "quickstart", "-n", NS, "-o", "yaml").out)
    assert cancelled_yaml == cancelled_json


def test_status_watch_streams_one_document_per_change(
    cli, cluster: Cluster, tmp_path: Path, s3_bucket
) -> None:
    spec_file = tmp_path / "one.yaml"
    data = yaml.safe_load(QUICKSTART.read_text())
    spec_file.write_text(yaml.safe_dump({**data, "seeds": [1], "results": s3_bucket.uri("s")}))
    assert cli("submit", spec_file).code == 0
    name = object_name(load_spec(spec_file))
    ctl = Controller(cluster, NS)
    ctl.end_pod(ctl.start_pod(name, 0), 0)
    ctl.job_status(name, {"completedIndexes": "0"})
    args = ("status", "quickstart", "-w", "--endpoint-url", s3_bucket.endpoint_url)
    lines = [json.loads(x) for x in cli(*args, "-o", "json").out.splitlines()]
    docs = list(yaml.safe_load_all(cli(*args, "-o", "yaml").out))
    assert docs == lines and [d["runs"][0]["state"] for d in docs] == ["SUCCEEDED"]


# --- run, status --local, aggregate, prepare, schema --------------------------------


@pytest.mark.slow
def test_local_commands_print_json_and_yaml(cli, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    results = tmp_path / "results"
    r = cli("run", spec, "--results", results, "-o", "json")
    assert r.code == 0, r.err
    ran = json.loads(r.out)
    assert ran["results"] == str(results) and ran["failed"] == 0
    assert [(x["run"], x["state"]) for x in ran["runs"]] == [("digits-small-cnn-s3", "SUCCEEDED")]
    # Without -o, stdout is the location alone (scripts use $(early-repair run ...)).
    r = cli("run", spec, "--results", results)
    assert r.out == f"{results}\n"
    again = yaml.safe_load(cli("run", spec, "--results", results, "-o", "yaml").out)
    assert again.keys() == ran.keys() and again["results"] == ran["results"]
    assert [x["state"] for x in again["runs"]] == ["SUCCEEDED"]

    as_json, as_yaml = both(cli, "status", "tiny-out", "--local")
    assert as_json == as_yaml and as_json["runs"][0]["state"] == "SUCCEEDED"

    report = tmp_path / "report"
    agg_args = ("aggregate", results / "tiny-out", "--out", report, "--max-figures", "0")
    agg_json, agg_yaml = both(cli, *agg_args)
    assert agg_json == agg_yaml
    assert agg_json["sweep"] == "tiny-out" and agg_json["report"] == str(report)
    assert [row["dataset"] for row in agg_json["table1"]] == ["digits"] * 3
    r = cli(*agg_args, "-o", "table")
    assert "Table 1" in r.out and "Table 1" not in r.err


def test_prepare_prints_json_and_yaml(cli, tmp_path: Path) -> None:
    tree = write_gtsrb(tmp_path / "raw", train_per_class=6, test_per_class=2)
    out = tmp_path / "prepared"
    args = ("prepare", "gtsrb", "--input", tree.base, "--out", out, "--overwrite")
    as_json, as_yaml = both(cli, *args)  # the second run (yaml) overwrites the first
    assert as_json["uri"] == as_yaml["uri"] == str(out)
    assert as_json["manifest"].keys() == as_yaml["manifest"].keys()
    assert as_yaml["manifest"] == json.loads((out / "manifest.json").read_text())
    assert cli(*args).out == f"{out}\n"


def test_schema_as_json_and_yaml(cli) -> None:
    as_json, as_yaml = both(cli, "schema")
    assert as_json == as_yaml
    assert as_json["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert as_json["$id"].startswith("urn:early-repair:sweep-spec:")
    assert json.loads(cli("schema").out) == as_json  # json without -o, terminal or not
    r = cli("schema", "-o", "table")
    assert r.code == 2 and r.err.splitlines() == [
        "error: --output: schema prints json or yaml, not table"
    ]


def undescribed(schema: dict[str, Any]) -> list[str]:
    """``Model.field`` for every property of the spec's schema without a description."""
    models = {"SweepSpec": schema, **schema.get("$defs", {})}
    return sorted(
        f"{model}.{name}"
        for model, body in models.items()
        for name, prop in body.get("properties", {}).items()
        if not prop.get("description")
    )


def test_undescribed_finds_a_field_without_description() -> None:
    schema = {"properties": {"a": {"description": "x"}, "b": {"type": "int"}}, "$defs": {}}
    assert undescribed(schema) == ["SweepSpec.b"]


def test_every_spec_field_is_described_in_the_schema(cli) -> None:
    assert undescribed(json.loads(cli("schema").out)) == []


# --- the rest of the surface ----------------------------------------------------------


def test_version_is_the_package_version(cli) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    r = cli("--version")
    assert (r.code, r.out) == (0, f"early-repair {version}\n")


def test_shell_completion_without_touching_shell_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    r = subprocess.run(
        [exe(), "--show-completion", "bash"],
        capture_output=True,
        text=True,
        # The shell named, not detected: detection walks the process tree, which differs
        # with how the suite was started (typer's own switch for this).
        env=env(HOME=str(home), _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"),
    )
    assert r.returncode == 0 and "_EARLY_REPAIR_COMPLETE=complete_bash" in r.stdout

    def complete(words: str) -> list[str]:
        cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
        done = subprocess.run(
            [exe()],
            capture_output=True,
            text=True,
            env=env(
                HOME=str(home),
                _EARLY_REPAIR_COMPLETE="complete_bash",
                COMP_WORDS=words,
                COMP_CWORD=cword,
            ),
        )
        return done.stdout.split()

    assert complete("early-repair st") == ["status"]
    assert complete("early-repair status -o ") == ["json", "yaml", "table"]
    assert complete("early-repair tr") == []  # hidden
    assert list(home.iterdir()) == []


def test_trainer_is_hidden_but_callable_and_commands_are_grouped(cli) -> None:
    r = cli("--help")
    assert r.code == 0
    assert not re.search(r"^\W*trainer\b", r.out, re.MULTILINE)
    panels = re.findall(r"─ ([A-Z][^─]*?) ─", r.out)
    assert panels[:1] == ["Options"]
    assert set(panels[1:]) == {"Local", "Cluster (also --local)", "Analysis", "Data and specs"}
    r = cli("trainer", "--help")
    assert r.code == 0 and "--run-index" in r.out
    r = cli("trainer", "--sweep", "/nonexistent/sweep.yaml", "--run-index", "0")
    assert r.code == 2


COMMANDS = ["plan", "submit", "status", "logs", "cancel", "run", "aggregate", "prepare", "schema"]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_is_readable_at_80_columns(command: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *([command] if command else []), "--help"],
        capture_output=True,
        text=True,
        env=env(COLUMNS="80", TERM="dumb", NO_COLOR="1"),
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    for noise in ("{spec}", "<bool>", "<list[float]>", "<path>", "<str>", "<int"):
        assert noise not in r.stdout, noise
    # The help column starts early enough to hold several words per line.
    (row,) = [line for line in lines if "Show this message and exit" in line]
    assert row.index("Show this message") <= 50


@pytest.mark.parametrize(
    ("argv", "short"),
    [
        (["status", "x", "-n", "team-a"], "-n"),
        (["logs", "x", "-f", "-n", "team-a"], "-f"),
        (["plan", "spec.yaml", "-o", "yaml"], "-o"),
    ],
)
def test_short_flags_are_accepted(argv: list[str], short: str) -> None:
    import typer

    from orchestrator.cli import app

    # Parsing only: the command itself never runs.

    command = typer.main.get_command(app)
    ctx = command.make_context("early-repair", list(argv), resilient_parsing=True)
    sub = command.get_command(ctx, argv[0])
    sub_ctx = sub.make_context(argv[0], list(argv[1:]), parent=ctx, resilient_parsing=True)
    name = {"-n": "namespace", "-f": "follow", "-o": "output"}[short]
    assert sub_ctx.params[name] not in (None, False)
