"""Patch acceptance (repair.accept): the three rules on a hand-made last layer, then on real
digits - one method listed twice (always and fixes-some) gets two folders, every rejected
patch leaves the base model's metrics and an empty patch, and `always` writes what it wrote
before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from orchestrator.errors import BadInput
from orchestrator.results import layout as keys
from orchestrator.results import predictions as predicted
from orchestrator.results.records import MetricsRecord
from orchestrator.spec import parse_spec
from orchestrator.store.file import FileStore
from trainer_image import acceptance
from trainer_image.entrypoint import run_trainer
from trainer_image.repair.base import PatchedWeight, RepairResult, RepairTask, TargetSplit

torch.set_num_threads(1)


def identity_task(cls: int = 1) -> RepairTask:
    """Two classes, two features; the head is the identity, so the prediction is the larger
    feature. Examples: (2, 1) -> 0 right, (1, 2) -> 1 right, (1.0, 0.9) -> 0 but its label is
    1 (the class-1 negative), (0.2, 0.1) -> 0 right."""
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    x = torch.tensor([[2.0, 1.0], [1.0, 2.0], [1.0, 0.9], [0.2, 0.1]])
    y = np.array([0, 1, 1, 0])
    split = TargetSplit(y=y, pred=head(x).argmax(1).numpy())
    return RepairTask(head, x, torch.from_numpy(y), split, cls, seed=0)


def result(patch: list[PatchedWeight]) -> RepairResult:
    return RepairResult(1, "repaired", patch, 1.0, 1, 3, 0, 3, 0.0, 0.0, 1, 0.1)


def rule(accept: str) -> Any:
    return type("Cfg", (), {"accept": accept})()


# Weight (1, 1) from 1 to 1.2: example 2 becomes (1.0, 1.08) -> 1, fixed; example 0 (2, 1.2)
# stays 0; example 3 (0.2, 0.12) stays 0. One repair-set prediction changed.
FIXES = [PatchedWeight(1, 1, 1.0, 1.2)]
# Weight (1, 1) from 1 to 1.05: (1.0, 0.945) stays 0 - nothing changes on the repair set.
NOTHING = [PatchedWeight(1, 1, 1.0, 1.05)]


def test_always_keeps_every_patch_and_counts_changed_predictions() -> None:
    task = identity_task()
    for patch, changed in ((FIXES, 1), (NOTHING, 0)):
        v = acceptance.judge(rule("always"), task, result(patch))
        assert v.accepted and v.result.patch == patch and v.repair_changed == changed


def test_fixes_some_keeps_only_a_patch_that_fixes_a_negative() -> None:
    task = identity_task()
    kept = acceptance.judge(rule("fixes-some"), task, result(FIXES))
    assert kept.accepted and kept.result.patch == FIXES
    dropped = acceptance.judge(rule("fixes-some"), task, result(NOTHING))
    assert not dropped.accepted and dropped.result.patch == [] and dropped.repair_changed == 0
    assert dropped.fields() == {"accepted": False, "repair_changed": 0}


def test_no_worse_val_compares_validation_qual() -> None:
    task = identity_task()
    # Validation: (0.5, 0.45) label 1 (FIXES turns it right: Qual up), and (1.0, 0.95)
    # label 0 (a too strong patch turns it wrong).
    val_x = torch.tensor([[0.5, 0.45], [1.0, 0.95]])
    better = acceptance.judge(rule("no-worse-val"), task, result(FIXES), (val_x, np.array([1, 0])))
    assert better.accepted
    # With label 0 for the first one, FIXES turns a right validation example wrong.
    worse = acceptance.judge(rule("no-worse-val"), task, result(FIXES), (val_x, np.array([0, 0])))
    assert not worse.accepted and worse.result.patch == []
    # qual by hand: class 1 has 1 of 1 right (Acc_c 1), total 1 of 2 -> 0.5 + 0.25
    assert acceptance.qual(np.array([1, 1]), np.array([1, 0]), 1) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="validation"):
        acceptance.judge(rule("no-worse-val"), task, result(FIXES))


SWEEP, RUN = "accept-test", "digits-small-cnn-s1"


def spec(path: Path, results: Path, repair: dict[str, Any], **training: Any) -> Path:
    data = {
        "name": SWEEP,
        "datasets": ["digits"],
        "models": ["small_cnn"],
        "seeds": [1],
        "training": {"max_epochs": 2, "device": "cpu", "num_threads": 1, **training},
        "repair": {"classes": [3, 6], "particles": 20, "iterations": 10, **repair},
        "results": str(results),
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def two_rules(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same run with arachne alone, and with arachne under always and fixes-some."""
    base = tmp_path_factory.mktemp("accept")
    run_trainer(spec(base / "a.json", base / "one", {}), 0)
    both = {"methods": ["arachne", {"method": "arachne", "accept": "fixes-some"}]}
    run_trainer(spec(base / "b.json", base / "two", both), 0)
    return base / "one", base / "two"


def test_one_method_under_two_rules_gets_two_folders_and_always_is_unchanged(
    two_rules: tuple[Path, Path],
) -> None:
    one, two = FileStore(two_rules[0]), FileStore(two_rules[1])
    rules = [k for k in two.list() if "/repair/" in k and k.endswith("metrics.json")]
    assert {k.split("/repair/")[1].split("/")[0] for k in rules} == {
        "arachne",
        "arachne+fixes-some",
    }
    for key in one.list():
        if "/repair/" in key:  # the always records, patches and searches as before
            data = one.read_bytes(key)
            if key.endswith("metrics.json"):
                a = json.loads(data)
                b = json.loads(two.read_bytes(key))
                a.pop("seconds"), b.pop("seconds")
                assert a == b and a["accepted"] is True and a["method"] == "arachne"
            elif not key.endswith("search.csv"):
                assert data == two.read_bytes(key)


def test_rejected_patches_leave_the_base_model(two_rules: tuple[Path, Path]) -> None:
    store = FileStore(two_rules[1])
    seen = {True: 0, False: 0}
    for e in (1, 2):
        base = MetricsRecord.model_validate_json(store.read_bytes(keys.base_metrics(SWEEP, RUN, e)))
        base_pred = predicted.parse(
            store.read_bytes(keys.predictions(keys.base_metrics(SWEEP, RUN, e)))
        )
        for c in (3, 6):
            key = keys.repair_metrics(SWEEP, RUN, e, c, "arachne+fixes-some")
            rec = MetricsRecord.model_validate_json(store.read_bytes(key))
            assert rec.method == "arachne+fixes-some" and rec.repair_changed is not None
            seen[bool(rec.accepted)] += 1
            assert rec.accepted == (rec.rr is not None and rec.rr > 0)
            if not rec.accepted:
                assert (rec.accuracy, rec.per_class_accuracy, rec.f1_macro, rec.auc_macro) == (
                    base.accuracy,
                    base.per_class_accuracy,
                    base.f1_macro,
                    base.auc_macro,
                )
                pred = predicted.parse(store.read_bytes(keys.predictions(key)))
                assert np.array_equal(pred, base_pred)
                patch = json.loads(
                    store.read_bytes(keys.repair_patch(SWEEP, RUN, e, c, "arachne+fixes-some"))
                )
                assert patch["weights"] == []
    assert seen[False] >= 1  # class 6 has nothing to repair: its patches fix nothing


def test_the_aggregator_reads_two_rules_as_two_methods(two_rules: tuple[Path, Path]) -> None:
    from orchestrator.analysis.aggregate import aggregate
    from orchestrator.analysis.harm_report import acceptance_table

    agg = aggregate(FileStore(two_rules[1]))
    assert agg.problems.empty
    assert sorted(agg.effects["method"].unique()) == ["arachne", "arachne+fixes-some"]
    table = acceptance_table(agg)
    assert sorted(table["accept"]) == ["always", "fixes-some"]


def test_an_unknown_rule_names_the_field() -> None:
    data = {"name": "x", "datasets": ["digits"], "models": ["small_cnn"], "seeds": [1]}
    with pytest.raises(BadInput, match=r"repair\.accept") as e:
        parse_spec({**data, "repair": {"classes": [3], "accept": "sometimes"}})
    assert "\n" not in str(e.value)
    entry = {"methods": ["arachne", {"method": "arachne", "accept": "never"}]}
    with pytest.raises(BadInput, match=r"methods\.1\.accept"):
        parse_spec({**data, "repair": {"classes": [3], **entry}})


def test_no_worse_val_judges_alike_while_training_and_at_checkpoints(tmp_path: Path) -> None:
    rules = {"methods": ["arachne", {"method": "arachne", "accept": "no-worse-val"}]}
    run_trainer(spec(tmp_path / "c.json", tmp_path / "ckpt", rules), 0)
    run_trainer(spec(tmp_path / "o.json", tmp_path / "online", rules, repair_every=1), 0)
    ckpt, online = FileStore(tmp_path / "ckpt"), FileStore(tmp_path / "online")
    where = "arachne+no-worse-val"
    verdicts = []
    for e in (1, 2):
        base = json.loads(ckpt.read_bytes(keys.base_metrics(SWEEP, RUN, e)))
        for c in (3, 6):
            key = keys.repair_metrics(SWEEP, RUN, e, c, where)
            a, b = json.loads(ckpt.read_bytes(key)), json.loads(online.read_bytes(key))
            for r in (a, b):
                r.pop("seconds"), r.pop("convergence_epoch")
            assert a == b  # the online step and the checkpoint step decide alike
            verdicts.append(a["accepted"])
            if not a["accepted"]:
                assert a["per_class_accuracy"] == base["per_class_accuracy"]
                assert a["accuracy"] == base["accuracy"]
    assert len(verdicts) == 4


def test_a_readiness_policy_watches_each_rule_as_its_own_track(tmp_path: Path) -> None:
    rules = {"methods": ["arachne", {"method": "arachne", "accept": "fixes-some"}], "classes": [3]}
    ready = {"action": "record", "patience": 1, "method": "arachne"}
    run_trainer(
        spec(tmp_path / "r.json", tmp_path / "r", rules, repair_every=1, readiness=ready), 0
    )
    summary = json.loads(FileStore(tmp_path / "r").read_bytes(keys.summary_json(SWEEP, RUN)))
    tracks = summary["readiness"]["tracks"]
    assert [(t["method"], t["repair_class"]) for t in tracks] == [
        ("arachne", 3),
        ("arachne+fixes-some", 3),
    ]
    assert all([e for e, _ in t["scores"]] == [1, 2] for t in tracks)
