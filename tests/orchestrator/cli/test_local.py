"""``status``, ``logs`` and ``cancel`` with ``--local``: the same commands as for a cluster,
answered from this machine's record of a sweep started with ``early-repair run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

SPEC = {
    "name": "local-cli",
    "datasets": ["digits"],
    "models": ["small_cnn"],
    "seeds": [7],
    "training": {"max_epochs": 3, "device": "cpu", "num_threads": 1},
    "repair": {"classes": [8], "particles": 10, "iterations": 5},
}


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARLY_REPAIR_STATE_DIR", str(tmp_path / "state"))


@pytest.mark.slow
def test_status_logs_cancel_of_a_finished_local_sweep(cli, tmp_path: Path) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    assert cli("run", spec, "--results", tmp_path / "results").code == 0

    r = cli("status", "local-cli", "--local", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert [(row["run"], row["state"]) for row in doc["runs"]] == [
        ("digits-small-cnn-s7", "SUCCEEDED")
    ]

    r = cli("status", "local-cli", "--local", "--watch", "--json")
    assert r.code == 0 and json.loads(r.out.splitlines()[-1])["runs"][0]["state"] == "SUCCEEDED"

    r = cli("logs", "local-cli", "--local", "--run", "digits-small-cnn-s7")
    assert r.code == 0
    assert "run digits-small-cnn-s7 complete" in r.out
    by_index = cli("logs", "local-cli", "--local", "--run", "0")
    assert (by_index.code, by_index.out) == (0, r.out)  # "Run name or index", as --help says
    r = cli("logs", "local-cli", "--local", "--run", "1")
    assert r.code == 2 and r.err.startswith("error: --run: sweep 'local-cli' has no run '1'")

    r = cli("cancel", "local-cli", "--local")
    assert r.code == 2
    assert r.err.strip() == "error: nothing is running for sweep 'local-cli' on this machine"


def test_status_of_an_unknown_local_sweep_is_bad_input(cli) -> None:
    r = cli("status", "never-ran", "--local")
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and "never-ran" in r.err


def test_a_name_that_walks_out_of_the_state_folder_is_bad_input(cli, tmp_path: Path) -> None:
    r = cli("cancel", "../x", "--local")
    assert r.code == 2
    assert r.err.strip() == (
        "error: '../x' is not a sweep name: sweep names are the spec's `name`, lower-case"
        " letters, digits and '-', at most 40 characters"
    )
    assert not (tmp_path / "state").exists()  # nothing created, nothing read
