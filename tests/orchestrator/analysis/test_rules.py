"""Both counting rules on trees whose Table 1 is worked out by hand: the paper's text
(reference = convergence, it wins ties) and the paper's notebook (reference = the last
checkpoint, ties to the earliest, any missing checkpoint makes a unit incomplete)."""

from __future__ import annotations

from pathlib import Path

import pytest
from early_repair_testing.aggregate_tree import RunTree, paper_table1_runs, write_tree

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis import problems as pb
from orchestrator.errors import BadInput
from orchestrator.store.file import FileStore

EPOCHS = [1, 5, 10, 15]  # convergence 10, last checkpoint 15
# Repaired Qual per epoch (acc_c = acc_total, so Qual is that value at every alpha), and
# the pattern each rule set gives - worked out by hand.
CASES: dict[str, tuple[dict[int, float], str, str, str]] = {
    #              qual by epoch                       text    include  notebook
    "conv-best": ({1: 0.1, 5: 0.5, 10: 0.9, 15: 0.6}, "post", "post", "pre"),
    "last-best": ({1: 0.1, 5: 0.5, 10: 0.6, 15: 0.9}, "post", "after", "post"),
    "early-and-last": ({1: 0.1, 5: 0.9, 10: 0.6, 15: 0.9}, "pre", "pre", "pre"),
    "conv-ties-last": ({1: 0.1, 5: 0.5, 10: 0.9, 15: 0.9}, "post", "post", "pre"),
    "early-ties-conv": ({1: 0.1, 5: 0.9, 10: 0.9, 15: 0.5}, "post", "post", "pre"),
    "missing-last": ({1: 0.1, 5: 0.9, 10: 0.6}, "pre", "pre", "incomplete"),
    "missing-first": ({5: 0.5, 10: 0.9, 15: 0.6}, "post", "post", "incomplete"),
}
NAMES = {"pre": ag.PRE, "post": ag.POST, "after": ag.AFTER, "incomplete": ""}


def case_run(name: str, seed: int) -> RunTree:
    quals, *_ = CASES[name]
    return RunTree(
        run=name,
        convergence=10,
        epochs=EPOCHS,
        classes=[3],
        repaired={(e, 3): (q, q) for e, q in quals.items()},
        seed=seed,
    )


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    store = FileStore(tmp_path / "results")
    write_tree(store, "rules", [case_run(n, i) for i, n in enumerate(CASES)])
    return store


@pytest.mark.parametrize(
    ("rules", "after", "column"),
    [("text", "exclude", 1), ("text", "include", 2), ("notebook", "exclude", 3)],
)
def test_each_case_gets_the_hand_worked_pattern(store, rules, after, column) -> None:
    agg = ag.aggregate(store, alphas=(0.5,), rules=rules, after_convergence=after)
    got = agg.switch_points.set_index("run")["pattern"].to_dict()
    assert got == {name: NAMES[case[column]] for name, case in CASES.items()}


def test_table1_counts_under_both_rules(store) -> None:
    def top(**kw: str) -> dict[str, int]:
        pt = ag.aggregate(store, alphas=(0.5,), **kw).patterns
        row = pt[pt["scope"] == "dataset"].iloc[0]
        names = ag.pattern_names(kw["rules"], kw.get("after_convergence", "exclude"))
        return {k: int(row[k]) for k in [*names, "compared", "incomplete"]}

    assert top(rules="text") == {ag.PRE: 2, ag.POST: 5, "compared": 7, "incomplete": 0}
    assert top(rules="text", after_convergence="include") == {
        ag.PRE: 2,
        ag.POST: 4,
        ag.AFTER: 1,
        "compared": 7,
        "incomplete": 0,
    }
    # Under the notebook's rules the columns are named after its reference, the last
    # checkpoint (the units' pattern values stay those of switch_points.csv).
    notebook = {"before-last": 4, "at-last": 1, "compared": 5, "incomplete": 2}
    assert top(rules="notebook") == notebook


def test_notebook_reference_is_the_last_checkpoint(store) -> None:
    sp = ag.aggregate(store, alphas=(0.5,), rules="notebook").switch_points.set_index("run")
    r = sp.loc["conv-best"]
    assert (r["reference_epoch"], r["best_epoch"], r["offset"]) == (15, 10, -5)
    assert r["gain"] == pytest.approx(0.9 - 0.6) and r["reference_qual"] == pytest.approx(0.6)
    assert r["convergence_qual"] == pytest.approx(0.9)  # still reported, not the reference
    assert sp.loc["conv-ties-last", "tied_epochs"] == "10;15"
    assert sp.loc["early-ties-conv", "best_epoch"] == 5  # the earliest of 5 and 10
    missing = sp.loc["missing-first"]
    assert missing["status"] == pb.INCOMPLETE and missing["missing_epochs"] == "1"
    assert "notebook's rules" in missing["note"]
    text = ag.aggregate(store, alphas=(0.5,)).switch_points.set_index("run")
    assert text.loc["missing-first", "status"] == pb.PARTIAL  # text: compared without it
    assert text.loc["missing-last", "status"] == "ok"  # epoch 15 is not compared in text
    assert text.loc["early-ties-conv", "best_epoch"] == 10  # the convergence checkpoint


def test_papers_table_1_under_both_rules(tmp_path: Path) -> None:
    """The paper tree's last checkpoint is its convergence checkpoint and no checkpoint is
    missing or tied, so the notebook's rules give the paper's Table 1 as the text does."""
    store = FileStore(tmp_path / "results")
    write_tree(store, "paper", paper_table1_runs())
    for rules in ("text", "notebook"):
        pt = ag.aggregate(store, rules=rules).patterns
        top = pt[pt["scope"] == "dataset"].set_index(["dataset", "alpha"])
        pre, post = ag.pattern_names(rules, "exclude")
        assert top.loc["rsna", pre].tolist() == [3, 2, 4], rules
        assert top.loc["rsna", post].tolist() == [2, 3, 1], rules
        assert top.loc["gtsrb", pre].tolist() == [9, 9, 9], rules
        assert top.loc["gtsrb", post].tolist() == [6, 6, 6], rules
        assert set(top["method"]) == {"arachne"}


def test_papers_table_1_differs_once_a_late_checkpoint_follows_convergence(
    tmp_path: Path,
) -> None:
    """Add a checkpoint after convergence that is worse than every other (epoch 15, Qual
    0.05): the text's counts stay the paper's; the notebook's reference becomes epoch 15,
    which never wins, so every unit turns pre-convergence."""
    runs = paper_table1_runs()
    for t in runs:
        t.epochs = [*t.epochs, 15]
        for cls in t.classes:
            t.repaired[(15, cls)] = (0.05, 0.05)
    store = FileStore(tmp_path / "results")
    write_tree(store, "paper", runs)
    text = ag.aggregate(store).patterns
    top = text[text["scope"] == "dataset"].set_index(["dataset", "alpha"])
    assert top.loc["rsna", ag.PRE].tolist() == [3, 2, 4]
    assert top.loc["gtsrb", ag.POST].tolist() == [6, 6, 6]
    nb = ag.aggregate(store, rules="notebook").patterns
    top = nb[nb["scope"] == "dataset"].set_index(["dataset", "alpha"])
    assert top.loc["rsna", "before-last"].tolist() == [5, 5, 5]
    assert top.loc["gtsrb", "before-last"].tolist() == [15, 15, 15]
    assert (top["at-last"] == 0).all()


def test_rules_are_checked() -> None:
    with pytest.raises(BadInput, match="--rules 'paper'"):
        ag.check_rules("paper", "exclude")
    with pytest.raises(BadInput, match="applies to --rules text only"):
        ag.check_rules("notebook", "include")
