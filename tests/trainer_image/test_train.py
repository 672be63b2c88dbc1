"""The training procedure: lr schedules, early stopping, convergence epoch and checkpoint set
on controlled validation-loss sequences, and determinism per seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from orchestrator.errors import RunFailed
from orchestrator.spec import DatasetSpec, ModelSpec, TrainingSpec
from trainer_image import train as train_mod
from trainer_image.data import Split, Splits, load_splits
from trainer_image.models import build_model
from trainer_image.train import (
    EarlyStopping,
    checkpoint_epochs,
    cpu_state,
    lr_at,
    make_deterministic,
    train,
)

torch.set_num_threads(1)
INF = math.inf


def simulate(losses: list[float], cfg: TrainingSpec) -> tuple[int, int, list[int], bool]:
    """Drive the early-stopping logic exactly as ``train`` does, on given val losses."""
    stopper = EarlyStopping(cfg.patience, cfg.min_delta, cfg.early_stopping)
    epoch = 0
    for epoch, loss in enumerate(losses[: cfg.max_epochs], start=1):
        stopper.update(epoch, loss)
        if stopper.stop:
            break
    assert stopper.best_epoch is not None
    kept = checkpoint_epochs(
        epoch,
        stopper.best_epoch,
        every=cfg.checkpoint_every,
        first=cfg.checkpoint_first,
        convergence=cfg.checkpoint_convergence,
    )
    return epoch, stopper.best_epoch, kept, stopper.stop


def test_paper_defaults_stop_five_epochs_after_the_minimum() -> None:
    # Improves until epoch 7, then never again: stop after epoch 12 (patience 5).
    losses = [1.0, 0.8, 0.6, 0.5, 0.45, 0.42, 0.40] + [0.41, 0.43, 0.40, 0.44, 0.5] + [0.1] * 18
    trained, conv, kept, stopped = simulate(losses, TrainingSpec())
    assert (trained, conv, stopped) == (12, 7, True)
    # Epoch 1, every 5th epoch up to the last trained, and the convergence epoch.
    assert kept == [1, 5, 7, 10]


def test_no_plateau_trains_all_epochs_and_converges_last() -> None:
    losses = [1.0 / e for e in range(1, 31)]
    assert simulate(losses, TrainingSpec()) == (30, 30, [1, 5, 10, 15, 20, 25, 30], False)


def test_released_code_never_stops_but_convergence_is_still_the_lowest_loss() -> None:
    losses = [1.0, 0.5, 0.3] + [0.6] * 27
    cfg = TrainingSpec(early_stopping=False)
    assert simulate(losses, cfg) == (30, 3, [1, 3, 5, 10, 15, 20, 25, 30], False)


def test_min_delta_counts_small_gains_as_none_but_the_lowest_epoch_converges() -> None:
    # After epoch 2 every gain is < min_delta: patience runs out at epoch 7, yet the
    # lowest validation loss (the paper's convergence epoch) is epoch 7 itself.
    losses = [1.0, 0.5, 0.499, 0.498, 0.497, 0.496, 0.495, 0.3, 0.2]
    cfg = TrainingSpec(min_delta=0.01)
    assert simulate(losses, cfg) == (7, 7, [1, 5, 7], True)
    # Without min_delta each gain counts and training continues.
    assert simulate(losses, TrainingSpec())[:2] == (9, 9)


def test_ties_keep_the_first_epoch_and_do_not_reset_patience() -> None:
    losses = [1.0, 0.7, 0.5, 0.6, 0.6, 0.5, 0.55, 0.56, 0.57]
    assert simulate(losses, TrainingSpec()) == (8, 3, [1, 3, 5], True)


def test_non_finite_losses_never_improve() -> None:
    losses = [1.0, math.nan, 0.9, INF, math.nan, math.nan, math.nan, math.nan, 0.1]
    trained, conv, _kept, stopped = simulate(losses, TrainingSpec())
    assert (trained, conv, stopped) == (8, 3, True)


def test_checkpoint_set_flags_and_no_duplicates() -> None:
    assert checkpoint_epochs(30, 10, every=5) == [1, 5, 10, 15, 20, 25, 30]
    assert checkpoint_epochs(12, 7, every=5, first=False) == [5, 7, 10]
    assert checkpoint_epochs(12, 7, every=5, convergence=False) == [1, 5, 10]
    assert checkpoint_epochs(3, 2, every=5) == [1, 2]
    assert checkpoint_epochs(1, 1, every=5) == [1]


def test_step_schedule_drops_tenfold_every_ten_epochs() -> None:
    cfg = TrainingSpec()
    assert [lr_at(cfg, e) for e in (1, 10)] == [0.01, 0.01]
    assert lr_at(cfg, 11) == pytest.approx(1e-3) and lr_at(cfg, 20) == pytest.approx(1e-3)
    assert lr_at(cfg, 21) == pytest.approx(1e-4) and lr_at(cfg, 30) == pytest.approx(1e-4)
    with pytest.raises(ValueError):
        lr_at(cfg, 0)


def test_compound_schedule_reproduces_the_released_keras_callback() -> None:
    # The released code: LearningRateScheduler(lambda epoch, lr: lr * 0.1 ** (epoch // 10)),
    # called with Keras' 0-based epoch and the optimizer's *current* rate.
    cfg = TrainingSpec(lr=1e-4, lr_schedule="compound")
    lr, keras = 1e-4, []
    for k in range(30):
        lr = lr * 0.1 ** (k // 10)
        keras.append(lr)
    ours = [lr_at(cfg, e) for e in range(1, 31)]
    assert ours == pytest.approx(keras, rel=1e-9)
    assert ours[10] == pytest.approx(1e-5) and ours[11] == pytest.approx(1e-6)
    assert ours[20] / ours[19] == pytest.approx(1e-2)


# --- the real training loop --------------------------------------------------------------


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_splits(DatasetSpec(name="digits"), 0.2)


def _model(seed: int) -> torch.nn.Module:
    make_deterministic(seed, torch.device("cpu"), 1)
    return build_model(ModelSpec(name="small_cnn"), 1, 10, 8)


def test_train_wires_a_controlled_val_loss_sequence_to_checkpoints(
    splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real loop stops, converges and checkpoints where the val-loss sequence says,
    and the convergence checkpoint holds the weights of the convergence epoch."""
    losses = [1.0, 0.9, 0.8, 0.7, 0.75, 0.65, 0.66, 0.67, 0.68, 0.69, 0.70, 0.1]
    states: list[dict[str, torch.Tensor]] = []

    def fake_evaluate(model: torch.nn.Module, split: Split, device: torch.device):
        states.append(cpu_state(model))
        return losses[len(states) - 1], 0.5

    monkeypatch.setattr(train_mod, "_evaluate", fake_evaluate)
    handed: dict[int, dict[str, torch.Tensor]] = {}
    rows: list[dict[str, float]] = []
    cfg = TrainingSpec(max_epochs=20, num_threads=1)
    result = train(
        _model(7),
        splits,
        cfg,
        7,
        torch.device("cpu"),
        on_epoch=rows.append,
        on_checkpoint=lambda e, s: handed.__setitem__(e, s),
    )
    assert result.epochs_trained == 11 and result.stopped_early
    assert result.convergence_epoch == 6 and result.best_val_loss == 0.65
    assert result.checkpoint_epochs == [1, 5, 6, 10] == sorted(handed)
    assert [r["epoch"] for r in rows] == list(range(1, 12))
    assert [r["val_loss"] for r in rows] == losses[:11]
    for epoch, state in handed.items():
        for name, tensor in state.items():
            assert torch.equal(tensor, states[epoch - 1][name]), (epoch, name)
    # Consecutive epochs really differ, so the comparison above can fail.
    assert not torch.equal(states[5]["head.weight"], states[4]["head.weight"])


def test_non_default_checkpoint_flags_hand_over_each_epochs_own_weights(
    splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every=3 and no epoch 1, the handed-over set is the reported set and every
    checkpoint holds its own epoch's weights (only the convergence one comes from memory)."""
    losses = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.55, 0.56, 0.57, 0.58, 0.59]
    states: list[dict[str, torch.Tensor]] = []

    def fake_evaluate(model: torch.nn.Module, split: Split, device: torch.device):
        states.append(cpu_state(model))
        return losses[len(states) - 1], 0.5

    monkeypatch.setattr(train_mod, "_evaluate", fake_evaluate)
    handed: dict[int, dict[str, torch.Tensor]] = {}
    cfg = TrainingSpec(
        max_epochs=20, checkpoint_every=4, checkpoint_first=False, batch_size=256, num_threads=1
    )
    result = train(_model(3), splits, cfg, 3, torch.device("cpu"), on_checkpoint=handed.__setitem__)
    assert (result.epochs_trained, result.convergence_epoch) == (11, 6)
    assert result.checkpoint_epochs == [4, 6, 8] == sorted(handed)
    for epoch, state in handed.items():
        assert all(torch.equal(t, states[epoch - 1][k]) for k, t in state.items()), epoch


def test_training_learns_and_is_deterministic_per_seed(splits: Splits) -> None:
    cfg = TrainingSpec(max_epochs=4, batch_size=16, num_threads=1)
    cpu = torch.device("cpu")
    runs = []
    for seed in (11, 11, 12):
        model = _model(seed)
        result = train(model, splits, cfg, seed, cpu)
        runs.append((result, cpu_state(model)))
    (a, wa), (b, wb), (_c, wc) = runs
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["head.weight"], wc["head.weight"])
    assert a.history[-1]["val_acc"] > 0.8  # real learning on real digits
    assert a.history[-1]["val_loss"] < a.history[0]["val_loss"]
    assert [r["lr"] for r in a.history] == [0.01] * 4


def test_uint8_images_are_scaled_to_unit_range(splits: Splits) -> None:
    as_bytes = Splits(
        **{
            name: Split(
                (getattr(splits, name).x * 255).round().astype(np.uint8), getattr(splits, name).y
            )
            for name in ("train", "val", "repair", "test")
        },
        num_classes=10,
    )
    batch = train_mod._batch(train_mod.to_tensor(as_bytes.val.x), slice(0, 8), torch.device("cpu"))
    assert batch.dtype == torch.float32 and float(batch.max()) <= 1.0
    assert torch.allclose(batch, torch.from_numpy(splits.val.x[:8]), atol=1 / 255)


def test_diverged_training_fails_with_a_hint(
    splits: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_mod, "_evaluate", lambda *a: (math.nan, 0.0))
    with pytest.raises(RunFailed, match=r"training\.lr"):
        train(_model(1), splits, TrainingSpec(max_epochs=3), 1, torch.device("cpu"))
