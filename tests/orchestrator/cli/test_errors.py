"""Bad input exits 2 with one line naming the problem, no traceback, nothing created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOOD = """\
name: bad-input
datasets: [digits]
models: [small_cnn]
seeds: [1]
training: {max_epochs: 2, num_threads: 1}
"""


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    return cache


def one_line_exit_2(r, *needles: str) -> str:
    assert r.code == 2, (r.code, r.err)
    assert "Traceback" not in r.err and "Traceback" not in r.out
    lines = r.err.splitlines()  # not stripped: a stray blank line is a second line too
    assert len(lines) == 1, r.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def nothing_created(tmp_path: Path) -> None:
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "cache").exists()


CASES = {
    "unknown field": (GOOD + "trainin: {lr: 0.1}\n", ["trainin", "Extra inputs are not permitted"]),
    "wrong type": (
        GOOD.replace("max_epochs: 2", "max_epochs: many"),
        ["training.max_epochs", "integer"],
    ),
    "negative epochs": (
        GOOD.replace("max_epochs: 2", "max_epochs: -3"),
        ["training.max_epochs", "greater than 0"],
    ),
    "empty seed list": (GOOD.replace("seeds: [1]", "seeds: []"), ["seeds", "at least 1"]),
    "class out of range": (
        GOOD + "repair: {classes: [3, 10]}\n",
        ["repair class 10 is out of range", "digits", "0..9"],
    ),
    "invalid name": (GOOD.replace("name: bad-input", "name: Bad_Input"), ["name", "Kubernetes"]),
    "unreadable yaml": (GOOD + "repair: {classes: [3\n", ["not valid YAML", "line"]),
    "not a mapping": ("- digits\n- small_cnn\n", ["must be a mapping"]),
    "unknown dataset": (GOOD.replace("[digits]", "[mnist]"), ["unknown dataset 'mnist'"]),
    # Online repair and readiness.
    "repair_every below 1": (
        GOOD.replace("max_epochs: 2", "max_epochs: 2, repair_every: 0"),
        ["training.repair_every", "greater than or equal to 1"],
    ),
    "state_every below 1": (
        GOOD.replace("max_epochs: 2", "max_epochs: 2, state_every: 0"),
        ["training.state_every", "greater than or equal to 1"],
    ),
    "unknown readiness policy": (
        GOOD.replace("max_epochs: 2", "max_epochs: 2, readiness: {policy: oracle}"),
        ["training.readiness", "unknown readiness policy 'oracle'"],
    ),
    "readiness on a class not repaired": (
        GOOD.replace(
            "max_epochs: 2", "max_epochs: 2, repair_every: 1, readiness: {repair_class: 5}"
        )
        + "repair: {classes: [3]}\n",
        ["training.readiness.repair_class", "class 5 is not repaired", "'digits'", "[3]"],
    ),
    "readiness without online repair": (
        GOOD.replace("max_epochs: 2", "max_epochs: 2, readiness: {action: stop}")
        + "repair: {classes: [3]}\n",
        ["training", "'repaired-val-qual'", "training.repair_every"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_exits_2_with_one_line(cli, tmp_path: Path, case: str) -> None:
    text, needles = CASES[case]
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    r = cli("run", path, "--results", tmp_path / "results")
    line = one_line_exit_2(r, str(path), *needles)
    assert line.startswith("error: ")
    assert r.out == ""
    nothing_created(tmp_path)


def test_missing_file(cli, tmp_path: Path) -> None:
    r = cli("run", tmp_path / "nope.yaml", "--results", tmp_path / "results")
    one_line_exit_2(r, "nope.yaml", "no such file")
    nothing_created(tmp_path)


def test_a_folder_is_not_a_spec(cli, tmp_path: Path) -> None:
    one_line_exit_2(cli("run", tmp_path, "--results", tmp_path / "results"), "cannot read")
    nothing_created(tmp_path)


def test_an_unopenable_spec_path_is_bad_input(cli, tmp_path: Path) -> None:
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)  # opening it fails with ELOOP, an OSError of no common subclass
    one_line_exit_2(cli("plan", loop), "loop.yaml", "cannot read")
    one_line_exit_2(cli("run", loop, "--results", tmp_path / "results"), "cannot read")
    nothing_created(tmp_path)


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--workers", "0"], ["--workers", "greater than or equal to 1"]),
        (["--workers", "two"], ["--workers", "integer"]),
        (["--frobnicate"], ["--frobnicate"]),
        (["--results", ""], ["results URI is empty"]),
        (["--results", "ftp://host/x"], ["unsupported URI scheme", "ftp"]),
        (["--results", "file://host/x"], ["file:// URIs take no host"]),
        (["--endpoint-url", "http://127.0.0.1:9", "--results", "s3://"], ["s3://"]),
        (["--endpoint-url", "http://127.0.0.1:9"], ["--endpoint-url", "s3://", "results"]),
    ],
)
def test_bad_flags_exit_2(cli, tmp_path: Path, flags: list[str], needles: list[str]) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD)
    if "--results" not in flags:
        flags = [*flags, "--results", str(tmp_path / "results")]
    one_line_exit_2(cli("run", path, *flags), *needles)
    nothing_created(tmp_path)


def test_results_path_that_is_a_file_exits_2(cli, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD)
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    one_line_exit_2(cli("run", path, "--results", blocker), str(blocker), "is a file")
    assert blocker.read_text() == "not a folder"
    assert not (tmp_path / "cache").exists()


def test_trainer_without_an_index_exits_2(cli, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD)
    one_line_exit_2(cli("trainer", "--sweep", path), "--run-index", "JOB_COMPLETION_INDEX")


def test_trainer_index_out_of_range_names_the_valid_range(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD + f"results: {tmp_path / 'results'}\n")
    one_line_exit_2(cli("trainer", "--sweep", path, "--run-index", "1"), "run index 1", "0..0")
    one_line_exit_2(cli("trainer", "--sweep", path, "--run-index", "-1"), "0..0")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    one_line_exit_2(cli("trainer", "--sweep", path), "run index 3")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "x")
    one_line_exit_2(cli("trainer", "--sweep", path), "JOB_COMPLETION_INDEX='x'")
    nothing_created(tmp_path)


def test_trainer_with_a_bad_spec_exits_2(cli, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD.replace("seeds: [1]", "seeds: [-1]"))
    one_line_exit_2(cli("trainer", "--sweep", path, "--run-index", "0"), "seeds.0")


def test_prepare_with_a_missing_input_folder_is_one_line(cli, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    r = cli("prepare", "gtsrb", "--input", tmp_path / "nope", "--out", out)
    one_line_exit_2(r, str(tmp_path / "nope"), "no such folder")
    assert r.out == "" and not out.exists()
    nothing_created(tmp_path)


# -- inputs that once gave a traceback, or exit 0 ----------------------------------------------

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
CREDENTIALS_URL = f"http://AKIAIOSFODNN7EXAMPLE:{SECRET}@minio.example:9000"


def test_results_under_an_unknown_user_is_one_line(cli, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD)
    r = cli("run", path, "--results", "~nosuchuser-early-repair/x")
    one_line_exit_2(r, "~nosuchuser-early-repair/x", "write the folder out in full")
    nothing_created(tmp_path)


def test_a_cache_folder_that_is_a_file_is_one_line(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD)
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EARLY_REPAIR_STATE_DIR", str(blocker))
    r = cli("run", path, "--results", tmp_path / "results")
    one_line_exit_2(r, "cannot keep local state", str(blocker), "EARLY_REPAIR_STATE_DIR")
    nothing_created(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_cache_folder_is_one_line(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    monkeypatch.setenv("EARLY_REPAIR_STATE_DIR", str(locked / "state"))
    r = cli("run", path, "--results", tmp_path / "results")
    one_line_exit_2(r, "cannot keep local state", "not writable", "EARLY_REPAIR_STATE_DIR")
    nothing_created(tmp_path)
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "{spec}", "--results", "s3://bucket/x", "--endpoint-url", CREDENTIALS_URL],
        ["aggregate", "s3://bucket/x", "--endpoint-url", CREDENTIALS_URL, "--out", "{tmp}/o"],
        ["status", "bad-input", "--endpoint-url", CREDENTIALS_URL],
        ["logs", "bad-input", "--endpoint-url", CREDENTIALS_URL],
        [
            "prepare",
            "gtsrb",
            "--input",
            "{tmp}",
            "--out",
            "s3://b/x",
            "--endpoint-url",
            CREDENTIALS_URL,
        ],
        ["run", "{creds_spec}", "--results", "{tmp}/results"],
        ["plan", "{creds_spec}", "--out", "{tmp}/objects.yaml"],
        ["run", "{spec}", "--results", f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/x"],
    ],
)
def test_credentials_in_a_url_are_refused_and_never_shown(
    cli, tmp_path: Path, argv: list[str]
) -> None:
    (tmp_path / "sweep.yaml").write_text(GOOD)
    (tmp_path / "creds.yaml").write_text(GOOD + f"storage: {{endpoint_url: '{CREDENTIALS_URL}'}}\n")
    names = {
        "spec": tmp_path / "sweep.yaml",
        "creds_spec": tmp_path / "creds.yaml",
        "tmp": tmp_path,
    }
    r = cli(*[a.format(**names) for a in argv])
    line = one_line_exit_2(r, "credentials do not belong in a URL", "AWS_ACCESS_KEY_ID")
    assert SECRET not in r.err + r.out and "AKIAIOSFODNN7EXAMPLE" not in r.err + r.out
    assert "***@" in line
    nothing_created(tmp_path)
    assert not (tmp_path / "objects.yaml").exists() and not (tmp_path / "o").exists()


def test_plan_summarises_a_large_sweep(cli, tmp_path: Path) -> None:
    import json

    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD.replace("seeds: [1]", f"seeds: {list(range(1000))}"))
    r = cli("plan", path)
    assert r.code == 0, r.err
    assert len(json.loads(r.out)["runs"]) == 1000  # the JSON keeps every run
    table = r.err.splitlines()
    assert len(table) < 40 and "... 980 more ..." in r.err
    assert "digits-small-cnn-s0 " in r.err and "digits-small-cnn-s999 " in r.err
