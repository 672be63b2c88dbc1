"""The trainer pipeline on real digits: layout, records, determinism, resuming after a kill
without redoing finished steps, Store-protocol only, and a repair method of the user's own,
run end to end by import path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from early_repair_testing import results_compare

from orchestrator.errors import BadInput
from orchestrator.results import events as ev
from orchestrator.results import layout as keys
from orchestrator.results import predictions as predicted
from orchestrator.results.records import MetricsRecord, RunInfo, TrainSummary
from orchestrator.spec import parse_spec
from orchestrator.store import KeyMissing, Store, open_store
from orchestrator.store.file import FileStore
from trainer_image.data import load_splits
from trainer_image.entrypoint import run_trainer
from trainer_image.metrics import classification_metrics
from trainer_image.models import build_model
from trainer_image.repair.base import PatchedWeight, apply_patch

torch.set_num_threads(1)

SWEEP, RUN = "trainer-test", "digits-small-cnn-s1"
# Six epochs of the paper's procedure: checkpoints 1, 5, 6. With seed 1 class 6 has no
# misclassified repair inputs at any checkpoint (nothing to repair); class 3 has many.
TINY: dict[str, Any] = {
    "name": SWEEP,
    "datasets": ["digits"],
    "models": ["small_cnn"],
    "seeds": [1],
    "training": {"max_epochs": 6, "device": "cpu", "num_threads": 1},
    "repair": {"classes": [3, 6], "particles": 20, "iterations": 10},
}


class MemoryStore:
    """A second, non-file implementation of the Store protocol: nothing on disk."""

    uri = "memory://test"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def check(self) -> None:
        pass  # always usable

    def exists(self, key: str) -> bool:
        return key in self.objects

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError as e:
            raise KeyMissing(key) from e

    def write_bytes(self, key: str, data: bytes) -> None:
        self.objects[key] = bytes(data)

    def upload_file(self, key: str, path: Path) -> None:
        self.objects[key] = Path(path).read_bytes()

    def download_file(self, key: str, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(self.read_bytes(key))

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes | Exception]:
        out: dict[str, bytes | Exception] = {}
        for k in keys:
            try:
                out[k] = self.read_bytes(k)
            except KeyMissing as e:
                out[k] = e
        return out

    def delete_prefix(self, prefix: str) -> None:
        for k in self.list(prefix):
            del self.objects[k]


def write_spec(path: Path, results: Path | str, **changes: Any) -> Path:
    data = {**TINY, **changes, "results": str(results)}
    path.write_text(json.dumps(data))
    return path


def comparable(store: Store, prefix: str = f"{SWEEP}/") -> dict[str, Any]:
    return results_compare.comparable(store, prefix)


def mtimes(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of TINY into a folder store."""
    base = tmp_path_factory.mktemp("reference")
    spec = write_spec(base / "sweep.json", base / "results")
    run_trainer(spec, 0)
    return base / "results"


def expected_keys(
    checkpoints: list[int], classes: list[int], methods: tuple[str, ...] = ("arachne",)
) -> set[str]:
    want = {
        keys.sweep_json(SWEEP),
        keys.run_json(SWEEP, RUN),
        keys.history_csv(SWEEP, RUN),
        keys.summary_json(SWEEP, RUN),
        keys.log(SWEEP, RUN),
        keys.records(SWEEP, RUN),
        keys.success(SWEEP, RUN),
        keys.test_labels(SWEEP, RUN),
    }
    for e in checkpoints:
        base = keys.base_metrics(SWEEP, RUN, e)
        want |= {keys.checkpoint(SWEEP, RUN, e), base, keys.predictions(base)}
        for c in classes:
            for m in methods:
                want |= {
                    keys.repair_metrics(SWEEP, RUN, e, c, m),
                    keys.predictions(keys.repair_metrics(SWEEP, RUN, e, c, m)),
                    keys.repair_patch(SWEEP, RUN, e, c, m),
                    keys.repair_search(SWEEP, RUN, e, c, m),
                }
    return want


def test_layout_and_records_match_the_design(reference: Path) -> None:
    store = FileStore(reference)
    summary = TrainSummary.model_validate_json(store.read_bytes(keys.summary_json(SWEEP, RUN)))
    assert summary.checkpoint_epochs == [1, 5, 6] and summary.convergence_epoch == 6
    assert set(store.list()) == expected_keys([1, 5, 6], [3, 6])

    history = pd.read_csv(reference / keys.history_csv(SWEEP, RUN))
    assert list(history.columns) == ["epoch", "loss", "acc", "val_loss", "val_acc", "lr", "seconds"]
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert summary.best_val_loss == history["val_loss"].min()

    info = RunInfo.model_validate_json(store.read_bytes(keys.run_json(SWEEP, RUN)))
    assert info.finished and info.device == "cpu" and info.run["name"] == RUN
    assert {"train", "evaluate", "repair", "total"} <= set(info.timings)
    assert "torch" in info.versions

    splits = load_splits(parse_spec({**TINY}).datasets[0], 0.2)
    for epoch in summary.checkpoint_epochs:
        base = MetricsRecord.model_validate_json(
            store.read_bytes(keys.base_metrics(SWEEP, RUN, epoch))
        )
        assert (base.kind, base.epoch, base.convergence_epoch) == ("base", epoch, 6)
        assert base.rr is None and base.method is None

        # Nothing to repair: same test metrics as the base model, no search.
        none = MetricsRecord.model_validate_json(
            store.read_bytes(keys.repair_metrics(SWEEP, RUN, epoch, 6))
        )
        assert (none.kind, none.repair_class, none.method) == ("repaired", 6, "arachne")
        assert none.rr is None and none.fitness is None and none.iterations == 0
        assert none.n_neg == 0 and none.accuracy == base.accuracy
        patch6 = json.loads(store.read_bytes(keys.repair_patch(SWEEP, RUN, epoch, 6)))
        assert patch6 == {"target_class": 6, "status": "nothing_to_repair", "weights": []}

        # A real repair: its recorded test metrics are those of checkpoint + patch.
        rec = MetricsRecord.model_validate_json(
            store.read_bytes(keys.repair_metrics(SWEEP, RUN, epoch, 3))
        )
        assert rec.n_neg > 0 and rec.iterations > 0 and rec.fitness is not None
        assert 0.0 <= rec.rr <= 100.0 and 0.0 <= rec.br <= 100.0
        patch = json.loads(store.read_bytes(keys.repair_patch(SWEEP, RUN, epoch, 3)))
        assert patch["status"] == "repaired" and patch["weights"]
        search = pd.read_csv(reference / keys.repair_search(SWEEP, RUN, epoch, 3))
        assert len(search) == rec.iterations + 1  # the initial swarm is iteration 0

        model = build_model(parse_spec(TINY).models[0], 1, 10, 8)
        state = torch.load(reference / keys.checkpoint(SWEEP, RUN, epoch), weights_only=True)
        model.load_state_dict(state)
        model.eval()
        head = apply_patch(model.head, [PatchedWeight(**w) for w in patch["weights"]])
        with torch.no_grad():
            x = torch.from_numpy(splits.test.x)
            base_logits = model(x)
            fixed_logits = head(model.penultimate(x))
        assert classification_metrics(base_logits, splits.test.y, 10) == {
            k: getattr(base, k)
            for k in ("accuracy", "per_class_accuracy", "f1_macro", "recall_macro", "auc_macro")
        }
        recomputed = classification_metrics(fixed_logits, splits.test.y, 10)
        assert recomputed["accuracy"] == rec.accuracy
        assert recomputed["per_class_accuracy"] == rec.per_class_accuracy

        # predictions.npy beside each record: that model's test labels, in test order.
        labels = predicted.parse(store.read_bytes(keys.test_labels(SWEEP, RUN)))
        assert labels.dtype == np.uint8 and labels.tolist() == splits.test.y.tolist()
        for key, logits in (
            (keys.base_metrics(SWEEP, RUN, epoch), base_logits),
            (keys.repair_metrics(SWEEP, RUN, epoch, 3), fixed_logits),
        ):
            pred = predicted.parse(store.read_bytes(keys.predictions(key)))
            assert pred.tolist() == logits.argmax(1).tolist()


def test_same_spec_twice_gives_identical_results(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path / "sweep.json", tmp_path / "again")
    run_trainer(spec, 0)
    assert comparable(FileStore(tmp_path / "again")) == comparable(FileStore(reference))

    lines = capsys.readouterr().out.splitlines()
    assert all(ev.from_line(line) is not None for line in lines)  # every line is an event
    events = [json.loads(line) for line in lines]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4, 5, 6]
    steps = [(e["step"], e["epoch"], e.get("class")) for e in events if e["event"] == "step"]
    assert steps == [
        (s, e, c) for e in (1, 5, 6) for s, c in (("base", None), ("repair", 3), ("repair", 6))
    ]
    assert all(e["run"] == RUN for e in events)


def test_only_the_store_protocol_is_used(reference: Path, tmp_path: Path) -> None:
    store = MemoryStore()
    spec = write_spec(tmp_path / "sweep.json", tmp_path / "never-created")
    run_trainer(spec, 0, store=store, workdir=tmp_path / "scratch")
    assert not (tmp_path / "never-created").exists()
    assert comparable(store) == comparable(FileStore(reference))
    log = store.read_bytes(keys.log(SWEEP, RUN)).decode()
    assert "step train" in log and "run digits-small-cnn-s1 complete" in log


def test_results_in_s3_equal_results_in_a_folder(
    reference: Path, tmp_path: Path, s3_bucket
) -> None:
    uri = s3_bucket.uri("runs")
    storage = {"endpoint_url": s3_bucket.endpoint_url}
    run_trainer(write_spec(tmp_path / "sweep.json", uri, storage=storage), 0)
    store = open_store(uri, endpoint_url=s3_bucket.endpoint_url)
    assert comparable(store) == comparable(FileStore(reference))


def test_rerunning_a_complete_run_touches_nothing(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "results"
    shutil.copytree(reference, root)
    before = mtimes(root)
    run_trainer(write_spec(tmp_path / "sweep.json", root), 0)
    after = mtimes(root)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {keys.log(SWEEP, RUN)}
    assert "already complete" in (root / keys.log(SWEEP, RUN)).read_text()
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert events == [{"event": "done", "run": RUN, "index": 0, "skipped": True, "seconds": 0.0}]


def test_a_new_repair_class_computes_only_what_is_missing(reference: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    shutil.copytree(reference, root)
    before = mtimes(root)
    spec = write_spec(
        tmp_path / "sweep.json", root, repair={**TINY["repair"], "classes": [3, 6, 8]}
    )
    run_trainer(spec, 0)
    after = mtimes(root)
    assert set(after) == expected_keys([1, 5, 6], [3, 6, 8])
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {
        keys.run_json(SWEEP, RUN),
        keys.log(SWEEP, RUN),
        keys.records(SWEEP, RUN),
        keys.success(SWEEP, RUN),
    }


def test_results_of_another_experiment_are_refused(reference: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    shutil.copytree(reference, root)
    before = mtimes(root)
    spec = write_spec(tmp_path / "sweep.json", root, training={**TINY["training"], "lr": 0.05})
    with pytest.raises(
        BadInput, match=r"run\.json: this run was started with a different training"
    ):
        run_trainer(spec, 0)
    after = mtimes(root)
    assert {k for k in before if before[k] != after[k]} <= {keys.log(SWEEP, RUN)}


# --- a repair method of one's own: one module (early_repair_testing.nudge_repair), by path ---

NUDGE = {
    "method": "early_repair_testing.nudge_repair:repair",
    "classes": [3],
    "options": {"step": 2.0},
}
NUDGE_KEY = "early-repair-testing-nudge-repair-repair"  # its folder: a slug of the import path
TWO_EPOCHS = {**TINY["training"], "max_epochs": 2}


def test_a_repair_method_by_import_path_runs_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "results"
    run_trainer(write_spec(tmp_path / "sweep.json", root, training=TWO_EPOCHS, repair=NUDGE), 0)
    store = FileStore(root)
    summary = TrainSummary.model_validate_json(store.read_bytes(keys.summary_json(SWEEP, RUN)))
    assert set(store.list()) == expected_keys(summary.checkpoint_epochs, [3], (NUDGE_KEY,))
    run = parse_spec({**TINY, "training": TWO_EPOCHS, "repair": NUDGE}).runs()[0]
    splits = load_splits(run.dataset, 0.2)
    model = build_model(run.model, 1, 10, 8)
    for epoch in summary.checkpoint_epochs:
        rec = MetricsRecord.model_validate_json(
            store.read_bytes(keys.repair_metrics(SWEEP, RUN, epoch, 3, NUDGE_KEY))
        )
        assert (rec.method, rec.repair_class, rec.n_patched, rec.iterations) == (
            "early_repair_testing.nudge_repair:repair",
            3,
            1,
            1,
        )
        patch = store.read_bytes(keys.repair_patch(SWEEP, RUN, epoch, 3, NUDGE_KEY))
        (w,) = json.loads(patch)["weights"]
        # The method got this checkpoint's head, its options, and the repair set's features.
        model.load_state_dict(
            torch.load(root / keys.checkpoint(SWEEP, RUN, epoch), weights_only=True)
        )
        model.eval()
        assert w["row"] == 3 and w["old"] == model.head.weight[3, w["col"]].item()
        assert w["new"] == pytest.approx(w["old"] + 2.0)
        head = apply_patch(model.head, [PatchedWeight(**w)])
        with torch.no_grad():
            x_rep, x_test = torch.from_numpy(splits.repair.x), torch.from_numpy(splits.test.x)
            before = model(x_rep).argmax(1).numpy()
            after = head(model.penultimate(x_rep)).argmax(1).numpy()
            test_logits = head(model.penultimate(x_test))
        neg = (splits.repair.y == 3) & (before != 3)
        assert rec.n_neg == neg.sum() > 0
        assert rec.rr == pytest.approx(100 * np.mean(after[neg] == 3))
        recomputed = classification_metrics(test_logits, splits.test.y, 10)
        assert (recomputed["accuracy"], recomputed["f1_macro"]) == (rec.accuracy, rec.f1_macro)


def test_a_repair_method_that_does_not_import_fails_before_training(tmp_path: Path) -> None:
    root = tmp_path / "results"
    bad = {**NUDGE, "method": "early_repair_testing.nudge_repair:no_such_function"}
    spec = write_spec(tmp_path / "sweep.json", root, training=TWO_EPOCHS, repair=bad)
    with pytest.raises(
        BadInput, match=r"cannot import 'early_repair_testing.nudge_repair:no_such_function'"
    ):
        run_trainer(spec, 0)
    assert not FileStore(root).exists(keys.summary_json(SWEEP, RUN))


def test_bad_run_index_names_the_range(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "sweep.json", tmp_path / "r", seeds=[1, 2])
    with pytest.raises(
        BadInput, match=r"run index 2 is out of range: sweep 'trainer-test' has runs 0\.\.1"
    ):
        run_trainer(spec, 2)
    assert not (tmp_path / "r").exists()


# --- kill the trainer mid-run, run it again: finished steps are not redone -------------

# Five classes with full-length searches make the repair phase last a few seconds, so
# the kill lands after the first base metrics and before the run completes.
SLOW_REPAIR = {"classes": [0, 1, 2, 3, 4], "particles": 100, "iterations": 50, "patience": 50}


@pytest.mark.slow
def test_killed_trainer_resumes_without_redoing_finished_steps(tmp_path: Path, repo: Path) -> None:
    root = tmp_path / "results"
    spec = write_spec(tmp_path / "sweep.json", root, repair=SLOW_REPAIR)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "trainer",
            "--sweep",
            str(spec),
            "--run-index",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=repo,
        env=env,
    )
    first_base = root / keys.base_metrics(SWEEP, RUN, 1)
    deadline = time.monotonic() + 120
    while not first_base.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the trainer never wrote its first base metrics"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # a crash: no cleanup, no final log upload
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (root / keys.success(SWEEP, RUN)).exists(), "killed too late to prove anything"
    done_before = mtimes(root)
    assert keys.summary_json(SWEEP, RUN) in done_before
    repairs_before = [k for k in done_before if k.endswith("metrics.json") and "/repair/" in k]
    assert len(repairs_before) < 15

    run_trainer(spec, 0)

    after = mtimes(root)
    assert keys.success(SWEEP, RUN) in after
    finished = [
        keys.summary_json(SWEEP, RUN),
        keys.history_csv(SWEEP, RUN),
        keys.base_metrics(SWEEP, RUN, 1),
        *(keys.checkpoint(SWEEP, RUN, e) for e in (1, 5, 6)),
        *repairs_before,
    ]
    for key in finished:
        assert after[key] == done_before[key], f"{key} was redone"
    log = (root / keys.log(SWEEP, RUN)).read_text()
    assert "epoch 6/6" in log  # the first attempt's lines survived the kill
    assert "step train: done before (summary.json exists); skipped" in log
    assert log.count("step train: small_cnn") == 1  # trained once, in the first attempt

    # And the resumed results equal an uninterrupted run's.
    clean = write_spec(tmp_path / "clean.json", tmp_path / "clean", repair=SLOW_REPAIR)
    run_trainer(clean, 0)
    assert comparable(FileStore(root)) == comparable(FileStore(tmp_path / "clean"))
    assert np.isfinite(
        [json.loads((root / k).read_text())["accuracy"] for k in repairs_before]
    ).all()


# --- dense online repair: training.repair_every ---------------------------------------

ONLINE = {**TINY["training"], "repair_every": 1, "readiness": {"action": "record", "patience": 2}}


@pytest.fixture(scope="module")
def online(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY repaired after every epoch while it trains, with a recording readiness policy."""
    base = tmp_path_factory.mktemp("online")
    run_trainer(write_spec(base / "sweep.json", base / "results", training=ONLINE), 0)
    return base / "results"


def test_online_repair_writes_every_epochs_records_without_changing_training(
    reference: Path, online: Path
) -> None:
    ref, got = FileStore(reference), FileStore(online)
    summary = TrainSummary.model_validate_json(got.read_bytes(keys.summary_json(SWEEP, RUN)))
    before = TrainSummary.model_validate_json(ref.read_bytes(keys.summary_json(SWEEP, RUN)))
    # Online repair never changes the training trajectory.
    history = pd.read_csv(online / keys.history_csv(SWEEP, RUN)).drop(columns="seconds")
    pd.testing.assert_frame_equal(
        history, pd.read_csv(reference / keys.history_csv(SWEEP, RUN)).drop(columns="seconds")
    )
    assert (summary.checkpoint_epochs, summary.convergence_epoch) == (
        before.checkpoint_epochs,
        before.convergence_epoch,
    )
    assert summary.online_epochs == list(range(1, summary.epochs_trained + 1))
    # Every epoch has its records; only the paper's checkpoint set has weights.
    want = expected_keys(summary.checkpoint_epochs, [3, 6])
    for e in summary.online_epochs:
        want |= expected_keys([e], [3, 6]) - {keys.checkpoint(SWEEP, RUN, e)}
    assert set(got.list()) == want
    # A dense epoch's records are the ones the checkpoint step writes for it, except that
    # the convergence epoch was not known yet (and the repair's own wall time).
    for e in summary.checkpoint_epochs:
        for key in [keys.base_metrics(SWEEP, RUN, e)] + [
            keys.repair_metrics(SWEEP, RUN, e, c, "arachne") for c in (3, 6)
        ]:
            a, b = json.loads(ref.read_bytes(key)), json.loads(got.read_bytes(key))
            assert b["convergence_epoch"] is None
            for rec in (a, b):
                rec.pop("convergence_epoch"), rec.pop("seconds")
            assert a == b, key
        for c in (3, 6):
            for key in (keys.repair_patch(SWEEP, RUN, e, c), keys.repair_search(SWEEP, RUN, e, c)):
                assert ref.read_bytes(key) == got.read_bytes(key), key
    assert summary.readiness is not None
    assert {(t.method, t.repair_class) for t in summary.readiness.tracks} == {
        ("arachne", 3),
        ("arachne", 6),
    }


def test_online_records_aggregate_with_the_summarys_convergence_epoch(online: Path) -> None:
    from orchestrator.analysis.aggregate import aggregate

    agg = aggregate(FileStore(online))
    summary = TrainSummary.model_validate_json(
        FileStore(online).read_bytes(keys.summary_json(SWEEP, RUN))
    )
    assert set(agg.loaded.records["convergence_epoch"]) == {summary.convergence_epoch}
    assert set(agg.loaded.records["epoch"]) == set(summary.online_epochs)
    # The policy is judged against every epoch's repaired test Qual.
    ready = agg.readiness_runs.set_index("repair_class")
    assert sorted(ready.index) == [3, 6]
    for t in summary.readiness.tracks:
        row = ready.loc[t.repair_class]
        assert row["policy_epoch"] == t.ready_epoch and row["regret"] >= 0
        q = agg.quality
        q = q[(q["kind"] == "repaired") & (q["repair_class"] == t.repair_class)]
        best = q[q["alpha"] == 0.5]["qual"].max()
        assert row["oracle_qual"] == pytest.approx(best)


# --- several repair methods in one run ------------------------------------------------

THREE = {"methods": ["arachne", "arachne-de", "finetune"], "classes": [3], "particles": 20}


def test_three_methods_share_training_and_each_gets_its_own_records(tmp_path: Path) -> None:
    from orchestrator.analysis.aggregate import aggregate

    one, three = tmp_path / "one", tmp_path / "three"
    single = {k: v for k, v in THREE.items() if k != "methods"}
    run_trainer(write_spec(tmp_path / "a.json", one, training=TWO_EPOCHS, repair=single), 0)
    run_trainer(write_spec(tmp_path / "b.json", three, training=TWO_EPOCHS, repair=THREE), 0)
    a, b = FileStore(one), FileStore(three)
    summary = TrainSummary.model_validate_json(b.read_bytes(keys.summary_json(SWEEP, RUN)))
    methods = ("arachne", "arachne-de", "finetune")
    assert set(b.list()) == expected_keys(summary.checkpoint_epochs, [3], methods)
    # Training and arachne's repairs are those of the single-method run.
    for e in summary.checkpoint_epochs:
        assert a.read_bytes(keys.checkpoint(SWEEP, RUN, e)) == b.read_bytes(
            keys.checkpoint(SWEEP, RUN, e)
        )
        for key in (keys.repair_patch(SWEEP, RUN, e, 3), keys.repair_search(SWEEP, RUN, e, 3)):
            assert a.read_bytes(key) == b.read_bytes(key)
        recs = {
            m: MetricsRecord.model_validate_json(
                b.read_bytes(keys.repair_metrics(SWEEP, RUN, e, 3, m))
            )
            for m in methods
        }
        assert {r.method for r in recs.values()} == set(methods)
    agg = aggregate(b)
    assert sorted(agg.methods["method"].unique()) == sorted(methods)
    assert sorted(agg.switch_points["method"].unique()) == sorted(methods)


HISTORY = {
    "methods": [
        {"method": "neurecover", "particles": 10, "iterations": 5},
        {"method": "provable", "n_positives": 50},
    ],
    "method": "neurecover",
    "classes": [3],
}


def test_history_methods_run_end_to_end_with_the_initial_weights_kept(tmp_path: Path) -> None:
    """neurecover gets the initial weights at the first checkpoint and the previous kept one
    after; provable's records say whether they are certified and what the solver said; the
    records pack and aggregate."""
    from orchestrator.analysis.aggregate import aggregate

    root = tmp_path / "results"
    run_trainer(write_spec(tmp_path / "s.json", root, training=TWO_EPOCHS, repair=HISTORY), 0)
    store = FileStore(root)
    summary = TrainSummary.model_validate_json(store.read_bytes(keys.summary_json(SWEEP, RUN)))
    # The initial weights, kept before the first step: a state of the same model.
    initial = torch.load(store.root / keys.checkpoint(SWEEP, RUN, 0), weights_only=True)
    first = torch.load(store.root / keys.checkpoint(SWEEP, RUN, 1), weights_only=True)
    assert initial.keys() == first.keys()
    assert not torch.equal(initial["head.weight"], first["head.weight"])
    epochs = summary.checkpoint_epochs
    assert 0 not in epochs and len(epochs) >= 2
    for i, e in enumerate(epochs):
        nr = json.loads(store.read_bytes(keys.repair_metrics(SWEEP, RUN, e, 3, "neurecover")))
        assert nr["n_neg"] or i > 0  # class 3 has negatives at epoch 1
        if nr["n_neg"]:
            assert nr["reference_epoch"] == (0 if i == 0 else epochs[i - 1])
        pr = json.loads(store.read_bytes(keys.repair_metrics(SWEEP, RUN, e, 3, "provable")))
        if pr["n_neg"]:
            assert isinstance(pr["certified"], bool) and pr["solver_status"]
            assert not pr["certified"] or pr["rr"] == 100.0
        assert "certified" not in nr and "reference_epoch" not in pr
    agg = aggregate(store)
    assert sorted(agg.methods["method"].unique()) == ["neurecover", "provable"]


# --- what a run cost (run.json's costs) ------------------------------------------------


def test_run_json_says_what_each_stage_cost(reference: Path) -> None:
    """One row per stage (and method), counted as the steps ran: training once, each kept
    checkpoint evaluated once, each (checkpoint, class) repaired once; no GPU seconds on a
    CPU; never more wall time than the step's own timing, which encloses it."""
    info = RunInfo.model_validate_json(FileStore(reference).read_bytes(keys.run_json(SWEEP, RUN)))
    rows = {(c.stage, c.method): c for c in info.costs}
    assert set(rows) == {("data", None), ("train", None), ("evaluate", None), ("repair", "arachne")}
    assert [rows[k].count for k in sorted(rows)] == [1, 3, 6, 1]  # data evaluate repair train
    for (stage, _), c in rows.items():
        assert c.gpu_s == 0 and c.cpu_s >= 0
        assert c.wall_s <= info.timings[stage] + 1e-3


def test_online_costs_and_the_epochs_a_recording_policy_would_have_saved(online: Path) -> None:
    """Online repair is charged apart from training (features once per epoch, each repair
    per class); costs.csv sums them per method and counts the epochs trained after the
    policy fired for every class."""
    from orchestrator.analysis import costs
    from orchestrator.analysis.aggregate import aggregate

    store = FileStore(online)
    info = RunInfo.model_validate_json(store.read_bytes(keys.run_json(SWEEP, RUN)))
    summary = TrainSummary.model_validate_json(store.read_bytes(keys.summary_json(SWEEP, RUN)))
    rows = {(c.stage, c.method): c for c in info.costs}
    epochs = summary.epochs_trained
    assert rows["online_features", None].count == rows["online", None].count == epochs
    assert rows["online_repair", "arachne"].count == 2 * epochs
    assert ("repair", "arachne") not in rows  # every kept checkpoint was repaired online

    (row,) = costs.summary(aggregate(store).loaded).to_dict("records")
    assert (row["method"], row["runs"], row["device"]) == ("arachne", 1, "cpu")
    assert row["train_s"] == pytest.approx(rows["train", None].cpu_s)
    assert (
        row["repair_s"]
        == row["online_repair_s"]
        == pytest.approx(rows["online_repair", "arachne"].cpu_s)
    )
    assert row["total_s"] == pytest.approx(sum(c.cpu_s for c in info.costs))
    fired = [t.fired_epoch for t in summary.readiness.tracks]
    saved = 0 if None in fired else epochs - max(fired)
    assert (row["epochs_trained"], row["epochs_saved"]) == (epochs, saved)
    assert row["train_s_saved"] == pytest.approx(row["train_s"] / epochs * saved)
