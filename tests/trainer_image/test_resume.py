"""Epoch-level resume: a training killed at any epoch and resumed from its stored state
gives bit-identical weights, history, checkpoints, online repairs, readiness decisions and
metrics to an uninterrupted one, and retrains no finished epoch."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from early_repair_testing.results_compare import comparable
from torch import nn

from orchestrator.errors import RunFailed
from orchestrator.results import layout as keys
from orchestrator.results.records import TrainSummary
from orchestrator.spec import ArachneSpec, DatasetSpec, ModelSpec, ReadinessSpec, TrainingSpec
from orchestrator.store.file import FileStore
from trainer_image import readiness as readiness_mod
from trainer_image.data import Splits, load_splits
from trainer_image.entrypoint import run_trainer
from trainer_image.models import Repairable, build_model
from trainer_image.online import OnlineEpoch, configured_methods, repair_epoch
from trainer_image.resume import TrainState, capture_rng, load_state, restore_rng, save_state
from trainer_image.train import TrainResult, cpu_state, make_deterministic, train

torch.set_num_threads(1)
CPU = torch.device("cpu")
SEED = 5
CLASSES = [3, 8]
REPAIR = ArachneSpec(classes=CLASSES, particles=10, iterations=5)
# Online repair every epoch and a policy that stops training: class 3 fires at epoch 5
# (ready epoch 3, no periodic checkpoint, so its weights are held), class 8 at epoch 7.
ONLINE = TrainingSpec(
    max_epochs=9,
    batch_size=32,
    num_threads=1,
    repair_every=1,
    readiness=ReadinessSpec(patience=2, alpha=0.8, action="stop"),
)


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_splits(DatasetSpec(name="digits"), 0.2)


def fresh_model() -> Repairable:
    """The run's model as a fresh process builds it; dropout makes training draw from
    torch's global generator, so a resume that did not restore it would diverge."""
    make_deterministic(SEED, CPU, 1)
    small = build_model(ModelSpec(name="small_cnn"), 1, 10, 8)
    return Repairable(nn.Sequential(small.body, nn.Dropout(0.2)), small.head)


class Killed(Exception):
    """Stands for a SIGKILL inside ``train``: nothing after it runs."""


@dataclass
class Attempt:
    """One (possibly killed) call of ``train`` and everything it handed over."""

    result: TrainResult | None = None
    epochs: list[int] = field(default_factory=list)
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    online: dict[int, OnlineEpoch] = field(default_factory=dict)
    states: list[Path] = field(default_factory=list)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)


def attempt(
    splits: Splits,
    cfg: TrainingSpec,
    tmp: Path,
    *,
    resume: Path | None = None,
    kill: tuple[str, int] | None = None,
) -> Attempt:
    """``train`` as the trainer calls it, states written to and read from files."""
    out = Attempt()
    model = fresh_model()
    methods = configured_methods(REPAIR)

    def on_epoch(row: dict[str, float]) -> None:
        out.epochs.append(int(row["epoch"]))
        if kill == ("epoch", row["epoch"]):
            raise Killed

    def on_state(state: TrainState) -> None:
        path = tmp / f"state-{state.epoch}-{len(list(tmp.iterdir()))}.pt"
        save_state(state, path)
        out.states.append(path)
        if kill == ("state", state.epoch):
            raise Killed

    def on_repair(epoch: int, m: nn.Module, val_feats: torch.Tensor) -> Any:
        assert isinstance(m, Repairable)
        online = repair_epoch(
            m, splits, epoch, methods, CLASSES, run_seed=SEED, device=CPU, val_features=val_feats
        )
        out.online[epoch] = online
        return online.evidence()

    policy = (
        None
        if cfg.readiness is None
        else readiness_mod.build(cfg.readiness, [m.name for m in methods], CLASSES)
    )
    with contextlib.suppress(Killed):
        out.result = train(
            model,
            splits,
            cfg,
            SEED,
            CPU,
            on_epoch=on_epoch,
            on_checkpoint=out.checkpoints.__setitem__,
            on_repair=on_repair if cfg.repair_every else None,
            readiness=policy,
            resume=None if resume is None else load_state(resume),
            on_state=on_state,
        )
    out.weights = cpu_state(model)
    return out


def no_seconds(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def online_record(o: OnlineEpoch) -> Any:
    return (
        o.base_test,
        o.split.pred.tolist(),
        {t: (r.test, r.val, r.result.patch_json(), r.result.history) for t, r in o.repairs.items()},
    )


def assert_same_run(chain: list[Attempt], ref: Attempt) -> None:
    last, want = chain[-1].result, ref.result
    assert last is not None and want is not None
    assert same_weights(chain[-1].weights, ref.weights)
    assert no_seconds(last.history) == no_seconds(want.history)
    for name in ("convergence_epoch", "checkpoint_epochs", "epochs_trained", "stopped_early"):
        assert getattr(last, name) == getattr(want, name), name
    assert last.best_val_loss == want.best_val_loss
    assert last.readiness == want.readiness
    # Every checkpoint and every online repair, as last handed over, equals the reference's.
    handed: dict[int, dict[str, torch.Tensor]] = {}
    online: dict[int, OnlineEpoch] = {}
    for a in chain:
        handed.update(a.checkpoints)
        online.update(a.online)
    assert sorted(handed) == want.checkpoint_epochs == sorted(ref.checkpoints)
    for e, state in ref.checkpoints.items():
        assert same_weights(handed[e], state), e
    assert sorted(online) == sorted(ref.online)
    for e, o in ref.online.items():
        assert online_record(online[e]) == online_record(o), e


def states_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def reference(splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> Attempt:
    """One uninterrupted training with online repair and a stopping policy."""
    ref = attempt(splits, ONLINE, tmp_path_factory.mktemp("reference-states"))
    assert ref.result is not None and ref.result.readiness is not None
    return ref


def test_killed_at_several_epochs_resumes_bit_identically(
    splits: Splits, reference: Attempt, tmp_path: Path
) -> None:
    ref = reference
    assert ref.result is not None and ref.result.readiness is not None
    assert ref.epochs == list(range(1, 8))  # the policy stops training after epoch 7
    assert ref.result.checkpoint_epochs == [1, 3, 5, 7]  # 3: the ready epoch, held
    fired = [(t["repair_class"], t["fired_epoch"]) for t in ref.result.readiness["tracks"]]
    assert fired == [(3, 5), (8, 7)]

    states = states_dir(tmp_path, "states")
    chain = [attempt(splits, ONLINE, states, kill=("state", 2))]
    # Killed within epoch 4, after its history row, before its state: resumes after 3.
    chain.append(attempt(splits, ONLINE, states, resume=chain[-1].states[-1], kill=("epoch", 4)))
    chain.append(attempt(splits, ONLINE, states, resume=chain[-1].states[-1], kill=("state", 6)))
    chain.append(attempt(splits, ONLINE, states, resume=chain[-1].states[-1]))
    assert [a.epochs for a in chain] == [[1, 2], [3, 4], [4, 5, 6], [7]]
    last = chain[-1].result
    assert last is not None and last.resumed_after == 6
    assert_same_run(chain, ref)
    # Epochs that were not trained again keep the timing of the attempt that trained them.
    first = load_state(chain[0].states[-1]).history
    assert [r["seconds"] for r in last.history[:2]] == [r["seconds"] for r in first]


def test_a_state_every_k_epochs_retrains_only_since_the_last_one(
    splits: Splits, tmp_path: Path
) -> None:
    cfg = TrainingSpec(max_epochs=6, batch_size=64, num_threads=1, state_every=3)
    ref = attempt(splits, cfg, states_dir(tmp_path, "ref"))
    assert [load_state(p).epoch for p in ref.states] == [3, 6]
    states = states_dir(tmp_path, "states")
    killed = attempt(splits, cfg, states, kill=("epoch", 5))
    assert [load_state(p).epoch for p in killed.states] == [3]
    resumed = attempt(splits, cfg, states, resume=killed.states[-1])
    assert resumed.epochs == [4, 5, 6]
    assert_same_run([killed, resumed], ref)


def test_a_finished_state_trains_nothing_and_hands_over_the_held_checkpoints(
    splits: Splits, reference: Attempt, tmp_path: Path
) -> None:
    """A kill after the last state but before summary.json: only the end of ``train`` reruns."""
    final = load_state(reference.states[-1])
    assert final.finished and final.epoch == 7 and sorted(final.held) == [3]
    again = attempt(splits, ONLINE, states_dir(tmp_path, "s"), resume=reference.states[-1])
    assert again.epochs == [] and again.online == {}
    assert sorted(again.checkpoints) == [3, 7]  # 1 and 5 were handed over as they happened
    for e in (3, 7):
        assert same_weights(again.checkpoints[e], reference.checkpoints[e])
    assert again.result is not None and reference.result is not None
    assert again.result.readiness == reference.result.readiness
    assert no_seconds(again.result.history) == no_seconds(reference.result.history)


def test_every_generator_is_restored() -> None:
    shuffle = torch.Generator().manual_seed(1)

    def draws() -> list[Any]:
        return [
            torch.rand(3).tolist(),
            torch.randperm(10, generator=shuffle).tolist(),
            np.random.rand(3).tolist(),
            random.random(),
        ]

    state = capture_rng(shuffle, CPU)
    first = draws()
    assert draws() != first  # the generators really move on
    restore_rng(state, shuffle, CPU)
    assert draws() == first


def test_a_damaged_state_is_refused_with_a_hint(tmp_path: Path) -> None:
    bad = tmp_path / "state.pt"
    bad.write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a training state"):
        load_state(bad)
    torch.save({"format": 99}, bad)
    with pytest.raises(ValueError, match="format 99"):
        load_state(bad)


# --- through the trainer process: SIGKILL at several epochs, then run it again ----------

SWEEP, RUN = "resume-test", "digits-small-cnn-s1"
SPEC: dict[str, Any] = {
    "name": SWEEP,
    "datasets": ["digits"],
    "models": ["small_cnn"],
    "seeds": [1],
    "training": {
        "max_epochs": 6,
        "device": "cpu",
        "num_threads": 1,
        # Repaired after every epoch: the online records of the epochs trained again are
        # rewritten, and must come out the same.
        "repair_every": 1,
        "readiness": {"patience": 2, "action": "record"},
    },
    "repair": {"classes": [3], "particles": 10, "iterations": 5},
}
EPOCH_LINE = re.compile(r"epoch (\d+)/6: loss")


def trainer(spec: Path, repo: Path, kill: str | None) -> tuple[int, list[int], str]:
    """One trainer process (killed at ``kill``): exit code, epochs it trained, its log."""
    support = repo / "tests" / "support"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(repo), str(support)]),
    }
    env.pop("KILL_AT", None)
    if kill:
        env["KILL_AT"] = kill
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "early_repair_testing.kill_at",
            "trainer",
            "--sweep",
            str(spec),
            "--run-index",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=repo,
        env=env,
        timeout=300,
    )
    return proc.returncode, [int(m) for m in EPOCH_LINE.findall(proc.stderr)], proc.stderr


@pytest.mark.slow
def test_trainer_killed_at_several_epochs_resumes_identically(tmp_path: Path, repo: Path) -> None:
    root = tmp_path / "results"
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({**SPEC, "results": str(root)}))
    state_key = keys.train_state(SWEEP, RUN)
    history = root / keys.history_csv(SWEEP, RUN)

    attempts = []
    for kill in ("state:2", "epoch:4", "state:5", None):
        code, epochs, log = trainer(spec, repo, kill)
        attempts.append(epochs)
        if kill is None:
            assert code == 0, log
            break
        assert code == -signal.SIGKILL, log
        # Killed during training: the latest state is in the store, training is not done.
        assert (root / state_key).exists() and not (root / keys.summary_json(SWEEP, RUN)).exists()
        assert len(history.read_text().splitlines()) - 1 == int(kill.partition(":")[2])
    # Each attempt goes on after the last stored state; only epoch 4, killed before its
    # state was stored, is trained twice.
    assert attempts == [[1, 2], [3, 4], [4, 5], [6]]
    assert "resuming after epoch 5" in log
    assert not (root / state_key).exists()  # training done: the state is gone

    clean = tmp_path / "clean"
    clean_spec = tmp_path / "clean.json"
    clean_spec.write_text(json.dumps({**SPEC, "results": str(clean)}))
    run_trainer(clean_spec, 0)
    assert comparable(FileStore(root), f"{SWEEP}/") == comparable(FileStore(clean), f"{SWEEP}/")
    summary = TrainSummary.model_validate_json((root / keys.summary_json(SWEEP, RUN)).read_text())
    assert summary.readiness is not None and summary.readiness.tracks[0].evaluations == 6
    assert summary.online_epochs == [1, 2, 3, 4, 5, 6]
    for e in summary.online_epochs:  # every epoch's online repair is in both
        assert (root / keys.repair_metrics(SWEEP, RUN, e, 3)).exists()


def test_an_unreadable_stored_state_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "results"
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({**SPEC, "results": str(root)}))
    (root / keys.train_state(SWEEP, RUN)).parent.mkdir(parents=True)
    (root / keys.train_state(SWEEP, RUN)).write_bytes(b"truncated")
    with pytest.raises(RunFailed, match=r"train/state\.pt is unreadable .*delete it"):
        run_trainer(spec, 0)


def test_the_state_key_is_part_of_the_layout() -> None:
    key = keys.train_state(SWEEP, RUN)
    assert key == f"{SWEEP}/{RUN}/train/state.pt"
    assert keys.parse(key) == keys.Key("train_state", SWEEP, RUN)
    assert keys.parse(f"{RUN}/train/state.pt", root=False) == keys.Key("train_state", None, RUN)
