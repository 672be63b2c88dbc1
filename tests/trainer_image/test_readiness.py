"""Readiness policies: they fire exactly where a controlled sequence of validation Quals
says, decide from validation and repair-set data only (a run whose test labels are permuted
makes the same decisions), and a new policy is one class."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from orchestrator import catalog
from orchestrator.errors import BadInput
from orchestrator.spec import ArachneSpec, DatasetSpec, ModelSpec, ReadinessSpec, TrainingSpec
from trainer_image import readiness as R
from trainer_image.data import Split, Splits, load_splits
from trainer_image.models import Repairable, build_model
from trainer_image.online import OnlineEpoch, configured_methods, repair_epoch
from trainer_image.readiness import Evidence, RepairedScores
from trainer_image.train import EarlyStopping, cpu_state, make_deterministic, train

torch.set_num_threads(1)
CPU = torch.device("cpu")
NAN = math.nan
TRACK = ("arachne", 3)


def scores(acc_class: float | None, acc_total: float, cls: int = 3) -> RepairedScores:
    per_class: list[float | None] = [0.5] * 10
    per_class[cls] = acc_class
    return RepairedScores(acc_total, per_class, rr=None, br=None)


def feed(policy: R.ReadinessPolicy, quals: Sequence[float | None], start: int = 1) -> None:
    """Epochs ``start``, ``start + 1``, ...: Qual q for every track (None: no repair then)."""
    for epoch, q in enumerate(quals, start=start):
        repaired = None if q is None else {t: scores(q, q, t[1]) for t in policy.tracks}
        policy.observe(Evidence(epoch, val_loss=1.0, val_acc=0.5, repaired=repaired))


def track(policy: R.ReadinessPolicy, t: R.Track = TRACK) -> tuple[int | None, int | None, int]:
    s = policy.tracks[t]
    return s.fired_epoch, s.best_epoch, s.evaluations


def qual_policy(classes: Sequence[int] = (3,), **spec: object) -> R.ReadinessPolicy:
    return R.build(ReadinessSpec(**spec), ["arachne"], list(classes))  # type: ignore[arg-type]


QUALS = [0.50, 0.60, 0.70, 0.69, 0.71, 0.70, 0.72, 0.90]


@pytest.mark.parametrize(
    ("patience", "min_delta", "expected"),
    [
        # 0.71 gains less than min_delta on 0.70: the wait goes on and fires at epoch 6; the
        # ready epoch is still the best Qual (epoch 5); epochs 7 and 8 are never evaluated.
        (3, 0.015, (6, 5, 6)),
        (3, 0.0, (None, 8, 8)),  # every gain counts: never three evaluations without one
        (1, 0.0, (4, 3, 4)),  # the first drop fires
        (2, 0.0, (None, 8, 8)),
    ],
)
def test_repaired_val_qual_fires_where_the_sequence_says(
    patience: int, min_delta: float, expected: tuple[int | None, int, int]
) -> None:
    policy = qual_policy(patience=patience, min_delta=min_delta)
    feed(policy, QUALS)
    assert track(policy) == expected
    if expected[0] is not None:
        assert policy.tracks[TRACK].best == QUALS[expected[1] - 1]


def test_only_epochs_with_an_online_repair_are_evaluations() -> None:
    # repair_every 2: Quals at even epochs only; patience counts evaluations, not epochs.
    policy = qual_policy(patience=3)
    feed(policy, [None, 0.6, None, 0.7, None, 0.65, None, 0.66, None, 0.69, None, 0.99])
    assert track(policy) == (10, 4, 5)


def test_alpha_weighs_the_class_against_the_total() -> None:
    # (Acc_c, Acc_total) per epoch: the class peaks at epoch 2, the total keeps rising.
    seq = [(0.5, 0.9), (0.7, 0.8), (0.6, 0.95), (0.55, 0.96)]
    decided = {}
    for alpha in (0.8, 0.2):
        policy = qual_policy(patience=2, alpha=alpha)
        for epoch, (c, total) in enumerate(seq, start=1):
            policy.observe(Evidence(epoch, 1.0, 0.5, {TRACK: scores(c, total)}))
        decided[alpha] = track(policy)
    assert decided == {0.8: (4, 2, 4), 0.2: (None, 3, 4)}


def test_an_undefined_qual_never_improves() -> None:
    policy = qual_policy(patience=2)
    for epoch, c in enumerate([None, 0.5, None, None, 0.9], start=1):
        policy.observe(Evidence(epoch, 1.0, 0.5, {TRACK: scores(c, 0.5)}))
    assert track(policy) == (4, 2, 4)


def test_stop_waits_for_every_watched_class_and_record_never_stops() -> None:
    for action in ("stop", "record"):
        policy = qual_policy(classes=(3, 8), patience=2, action=action)
        assert sorted(policy.tracks) == [("arachne", 3), ("arachne", 8)]
        # class 3 peaks at epoch 2, class 8 at epoch 4
        per_epoch = [(0.5, 0.5), (0.9, 0.6), (0.8, 0.7), (0.7, 0.8), (0.6, 0.7), (0.5, 0.6)]
        stops = []
        for epoch, (q3, q8) in enumerate(per_epoch, start=1):
            repaired = {("arachne", 3): scores(q3, q3, 3), ("arachne", 8): scores(q8, q8, 8)}
            policy.observe(Evidence(epoch, 1.0, 0.5, repaired))
            stops.append(policy.stops)
        assert track(policy, ("arachne", 3)) == (4, 2, 4)
        assert track(policy, ("arachne", 8)) == (6, 4, 6)
        assert policy.all_fired and policy.ready_epochs() == {2, 4}
        assert stops == ([False] * 5 + [True] if action == "stop" else [False] * 6)


def test_a_restored_state_makes_the_same_decisions() -> None:
    whole = qual_policy(classes=(3, 8), patience=2, min_delta=0.005)
    seq = [0.5, 0.6, 0.61, 0.605, 0.62, 0.6, NAN, 0.7, 0.69, 0.68]
    feed(whole, seq)
    for k in range(len(seq)):
        first = qual_policy(classes=(3, 8), patience=2, min_delta=0.005)
        feed(first, seq[:k])
        state = json.loads(json.dumps(first.state_dict()))  # plain data only
        second = qual_policy(classes=(3, 8), patience=2, min_delta=0.005)
        second.load_state_dict(state)
        feed(second, seq[k:], start=k + 1)
        assert second.outcome(stopped_training=False) == whole.outcome(stopped_training=False)
    with pytest.raises(ValueError, match="watches"):
        qual_policy(classes=(3,)).load_state_dict(whole.state_dict())


def early_stopping(losses: Sequence[float], patience: int, min_delta: float) -> tuple:
    stopper = EarlyStopping(patience, min_delta)
    for epoch, loss in enumerate(losses, start=1):
        stopper.update(epoch, loss)
        if stopper.stop:
            return epoch, stopper.best_epoch
    return None, stopper.best_epoch


def test_val_loss_policy_decides_as_early_stopping_does() -> None:
    rng = np.random.default_rng(0)
    cases = [
        ([1.0, 0.8, 0.6, 0.5, 0.45, 0.42, 0.40, 0.41, 0.43, 0.40, 0.44, 0.5], 5, 0.0),
        ([1.0, 0.5, 0.499, 0.498, 0.497, 0.496, 0.495, 0.3], 5, 0.01),
        ([1.0, NAN, 0.9, math.inf, NAN, NAN, NAN, NAN, 0.1], 5, 0.0),
    ]
    for _ in range(200):
        losses = np.cumsum(rng.normal(-0.02, 0.05, 20)) + 2.0
        losses[rng.random(20) < 0.05] = NAN
        cases.append((losses.tolist(), int(rng.integers(1, 6)), float(rng.choice([0, 0.01]))))
    for losses, patience, min_delta in cases:
        policy = R.build(
            ReadinessSpec(policy="val-loss", patience=patience, min_delta=min_delta), [], []
        )
        assert list(policy.tracks) == [R.UNREPAIRED]
        for epoch, loss in enumerate(losses, start=1):
            policy.observe(Evidence(epoch, loss, 0.5))
        fired, best, _ = track(policy, R.UNREPAIRED)
        assert (fired, best) == early_stopping(losses, patience, min_delta), losses


def test_every_catalog_policy_is_a_policy_class() -> None:
    for name, path in catalog.READINESS_POLICIES.items():
        cls = catalog.resolve(path)
        assert isinstance(cls, type) and issubclass(cls, R.ReadinessPolicy), name
        assert type(R.build(ReadinessSpec(policy=name), ["arachne"], [3])) is cls


def test_a_new_policy_is_one_class_named_by_import_path() -> None:
    from early_repair_testing.custom_policy import ValAccuracy

    policy = R.build(
        ReadinessSpec(policy="early_repair_testing.custom_policy:ValAccuracy", patience=2), [], []
    )
    assert isinstance(policy, ValAccuracy)
    for epoch, acc in enumerate([0.5, 0.7, 0.6, 0.65, 0.9], start=1):
        policy.observe(Evidence(epoch, 1.0, acc))
    assert track(policy, R.UNREPAIRED) == (4, 2, 4)
    with pytest.raises(BadInput, match=r"not a subclass of trainer_image\.readiness"):
        R.build(ReadinessSpec(policy="early_repair_testing.custom_policy:NOT_A_POLICY"), [], [])
    with pytest.raises(BadInput, match="cannot import"):
        R.build(ReadinessSpec(policy="early_repair_testing.custom_policy:Missing"), [], [])


def test_a_policy_of_online_repairs_needs_them(splits: Splits) -> None:
    spec = ReadinessSpec(policy="early_repair_testing.custom_policy:RepairedRR")
    policy = R.build(spec, ["arachne"], [3, 8])
    assert list(policy.tracks) == [("arachne", 3), ("arachne", 8)]
    cfg = TrainingSpec(max_epochs=1, num_threads=1, readiness=spec)  # no repair_every
    with pytest.raises(BadInput, match=r"set training\.repair_every"):
        train(model(), splits, cfg, 2, CPU, readiness=policy)


# --- the real training loop ----------------------------------------------------------------


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_splits(DatasetSpec(name="digits"), 0.2)


def model(seed: int = 2) -> Repairable:
    make_deterministic(seed, CPU, 1)
    return build_model(ModelSpec(name="small_cnn"), 1, 10, 8)


@pytest.mark.parametrize("action", ["stop", "record"])
def test_train_stops_where_the_policy_fires_and_keeps_the_ready_checkpoint(
    splits: Splits, action: str
) -> None:
    """Controlled Quals through the real loop: fires at epoch 6 (ready epoch 4, no periodic
    checkpoint); ``stop`` ends training there and keeps epoch 4's own weights."""
    quals = {2: 0.5, 4: 0.8, 6: 0.7, 8: 0.9}  # repair_every 2; patience 1
    spec = ReadinessSpec(patience=1, action=action)  # type: ignore[arg-type]
    cfg = TrainingSpec(max_epochs=8, batch_size=64, num_threads=1, repair_every=2, readiness=spec)
    weights: dict[int, dict[str, torch.Tensor]] = {}
    handed: dict[int, dict[str, torch.Tensor]] = {}
    m = model()
    result = train(
        m,
        splits,
        cfg,
        2,
        CPU,
        on_epoch=lambda row: weights.__setitem__(int(row["epoch"]), cpu_state(m)),
        on_checkpoint=handed.__setitem__,
        on_repair=lambda epoch, _m, _f: {TRACK: scores(quals[epoch], quals[epoch])},
        readiness=R.build(spec, ["arachne"], [3]),
    )
    assert result.readiness is not None
    (t,) = result.readiness["tracks"]
    assert (t["fired_epoch"], t["ready_epoch"], t["evaluations"]) == (6, 4, 3)
    conv = result.convergence_epoch
    if action == "stop":
        assert result.epochs_trained == 6 and result.stopped_early
        assert result.readiness["stopped_training"]
        assert 4 in result.checkpoint_epochs
        assert all(torch.equal(handed[4][k], weights[4][k]) for k in handed[4])
        assert not torch.equal(weights[4]["head.weight"], weights[5]["head.weight"])
    else:
        assert result.epochs_trained == 8 and not result.readiness["stopped_training"]
        assert result.checkpoint_epochs == sorted({1, 5, conv})
    assert sorted(handed) == result.checkpoint_epochs


def permuted_test_labels(splits: Splits) -> Splits:
    y = np.random.default_rng(0).permutation(splits.test.y)
    assert (y != splits.test.y).mean() > 0.5
    return Splits(
        splits.train,
        splits.val,
        splits.repair,
        Split(splits.test.x, y),
        splits.num_classes,
        splits.meta,
    )


def online_run(splits: Splits) -> tuple[dict, list[dict], dict[str, torch.Tensor], list]:
    repair = ArachneSpec(classes=[3, 8], particles=10, iterations=5)
    methods = configured_methods(repair)
    spec = ReadinessSpec(patience=2, alpha=0.8, action="stop")
    cfg = TrainingSpec(max_epochs=10, batch_size=32, num_threads=1, repair_every=1, readiness=spec)
    online: list[OnlineEpoch] = []

    def on_repair(epoch: int, m: torch.nn.Module, val_feats: torch.Tensor) -> dict:
        assert isinstance(m, Repairable)
        o = repair_epoch(
            m, splits, epoch, methods, [3, 8], run_seed=3, device=CPU, val_features=val_feats
        )
        online.append(o)
        return o.evidence()

    m = model(3)
    result = train(
        m, splits, cfg, 3, CPU, on_repair=on_repair, readiness=R.build(spec, ["arachne"], [3, 8])
    )
    assert result.readiness is not None
    history = [{k: v for k, v in r.items() if k != "seconds"} for r in result.history]
    return result.readiness, history, cpu_state(m), online


def test_the_policy_never_reads_the_test_split(splits: Splits) -> None:
    decided, history, weights, online = online_run(splits)
    decided2, history2, weights2, online2 = online_run(permuted_test_labels(splits))
    assert decided["stopped_training"]  # the decisions shaped the run: it stopped early
    assert len(history) < 10
    assert decided2 == decided and history2 == history
    assert all(torch.equal(weights[k], weights2[k]) for k in weights)
    # The test split was really used (for the records), and differently in the two runs.
    assert len(online) == len(online2) == len(history)
    assert all(a.base_test != b.base_test for a, b in zip(online, online2, strict=True))
    a, b = online[-1].repairs[("arachne", 3)], online2[-1].repairs[("arachne", 3)]
    assert a.test != b.test and a.val == b.val


def test_every_epochs_watched_value_is_kept_and_replays_the_decision() -> None:
    policy = qual_policy(patience=2)
    seq = [0.5, 0.6, NAN, 0.55, 0.58, 0.7, 0.65]
    feed(policy, seq)
    out = policy.outcome(stopped_training=False)["tracks"][0]
    # Every epoch's value, after the firing (epoch 4) too; NaN kept as None.
    assert out["scores"] == [
        [e, None if math.isnan(q) else pytest.approx(q)] for e, q in enumerate(seq, start=1)
    ]
    assert out["fired_epoch"] == 4 and out["evaluations"] == 4
    # A reader replays the decision from the stored values alone.
    replay = R.TrackState()
    fired = next(
        e
        for e, q in out["scores"]
        if replay.update(e, NAN if q is None else q, patience=2, min_delta=0.0)
    )
    assert (fired, replay.best_epoch) == (out["fired_epoch"], out["ready_epoch"])
    # A state saved before the values were kept still loads (and starts them afresh).
    state = policy.state_dict()
    for _, s in state["tracks"]:
        del s["scores"]
    again = qual_policy(patience=2)
    again.load_state_dict(state)
    assert again.tracks[TRACK].fired_epoch == 4 and again.tracks[TRACK].scores == []
