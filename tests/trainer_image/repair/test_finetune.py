"""Fine-tuning baseline: the cached-feature descent vs a descent that re-runs the whole
network every step, determinism, the localisation mask, the loss's terms. Real small CNNs
on the digits data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from early_repair_testing.digits_checkpoints import CPU, untrained_cnn, weakest
from early_repair_testing.finetune_reference import reference_finetune

from orchestrator.spec import FinetuneRepairSpec
from trainer_image.repair.base import RepairTask, TargetSplit, apply_patch
from trainer_image.repair.finetune import changed_weights, descend, repair
from trainer_image.repair.selection import localise

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cnn():
    return untrained_cnn()


def localised(model, feats, split, cls) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Arachne's localised weights as (rows, cols) and as a 0/1 mask like the layer."""
    loc = localise(model.head.weight, model.head.bias, feats[split.negatives(cls)], cls, 20)
    rows, cols = torch.as_tensor(loc.rows), torch.as_tensor(loc.cols)
    mask = torch.zeros_like(model.head.weight, dtype=torch.float64)
    mask[rows, cols] = 1.0
    return rows, cols, mask


# all: the negatives + 90 positives outnumber the 64 features (W itself descends);
# all-few: 40 inputs, fewer than the features (the D = A X form); localised: K values.
@pytest.mark.parametrize(
    ("weights", "n_pos", "n_neg"), [("all", 90, None), ("all-few", 25, 15), ("localised", 90, None)]
)
def test_descent_equals_full_network_descent(cnn, weights: str, n_pos: int, n_neg) -> None:
    model, x, y, _, split = cnn
    double = model.double()
    try:
        with torch.no_grad():
            feats = double.penultimate(x.double())
        cls = weakest(split)
        neg, pos = split.negatives(cls)[:n_neg], split.positives()[:n_pos]
        assert (len(neg) + len(pos) < feats.shape[1]) == (weights == "all-few")
        rows, cols, mask = localised(double, feats, split, cls)
        only = (rows, cols) if weights == "localised" else None
        cfg = FinetuneRepairSpec(steps=25, lr=1.5, neg_weight=2.0, pos_weight=0.5, l2=0.05)
        w, hist = descend(
            double.head.weight,
            double.head.bias,
            feats[neg],
            feats[pos],
            y[pos],
            cls,
            only,
            cfg,
            CPU,
        )
        # The step written out: lr / L, L = 0.5 (2 mean_neg |x|^2 + 0.5 mean_pos |x|^2) + 2 l2.
        sq = (feats**2).sum(1)
        step = float(1.5 / (0.5 * (2.0 * sq[neg].mean() + 0.5 * sq[pos].mean()) + 2 * 0.05))
        want_w, want = reference_finetune(
            double,
            x[neg],
            cls,
            x[pos],
            y[pos],
            25,
            step,
            2.0,
            0.5,
            0.05,
            mask if weights == "localised" else None,
        )
    finally:
        model.float()
    assert [h["iteration"] for h in hist] == list(range(26))
    for got, ref in zip(hist, want, strict=True):
        assert got["n_patched"] == ref["n_patched"] and got["n_intact"] == ref["n_intact"]
        assert abs(got["loss"] - ref["loss"]) <= 1e-9
    torch.testing.assert_close(w, want_w, rtol=0, atol=1e-9)
    # The descent really moved predictions, or the comparison proves little.
    assert hist[-1]["n_patched"] > hist[0]["n_patched"]
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_repair_is_deterministic_and_matches_its_descent(cnn) -> None:
    model, _, y, feats, split = cnn
    cls = weakest(split)
    cfg = FinetuneRepairSpec(steps=30)
    a = repair(RepairTask(model.head, feats, y, split, cls, 4), cfg)
    b = repair(RepairTask(model.head, feats, y, split, cls, 4), cfg)
    assert a.patch == b.patch and a.history == b.history and a.rr == b.rr and a.br == b.br
    assert a.status == "repaired" and a.iterations == 30 and len(a.history) == 31
    assert (
        a.fitness is None
        and a.n_pos == min(200, split.positives().size)
        and a.n_neg == split.negatives(cls).size
    )
    # The patched layer predicts the negatives as the descent's last step says.
    patched = apply_patch(model.head, a.patch)
    with torch.no_grad():
        pred = patched(feats).argmax(1).numpy()
    neg = split.negatives(cls)
    assert a.n_patched == int((pred[neg] == cls).sum()) == a.history[-1]["n_patched"]
    assert a.rr == pytest.approx(100 * a.n_patched / neg.size)
    pos = split.positives()
    assert a.br == pytest.approx(100 * np.mean(pred[pos] != split.y[pos]))


def test_localised_weights_only_move_inside_the_mask(cnn) -> None:
    model, _, y, feats, split = cnn
    cls = weakest(split)
    *_, mask = localised(model, feats, split, cls)
    inside = {tuple(rc) for rc in mask.nonzero().tolist()}
    loc = repair(
        RepairTask(model.head, feats, y, split, cls, 1), FinetuneRepairSpec(weights="localised")
    )
    every = repair(
        RepairTask(model.head, feats, y, split, cls, 1), FinetuneRepairSpec(weights="all")
    )
    moved = {(p.row, p.col) for p in loc.patch}
    assert moved and moved <= inside
    rebuilt = apply_patch(model.head, loc.patch).weight
    outside = mask == 0
    assert torch.equal(rebuilt[outside], model.head.weight[outside])
    assert len(every.patch) > 3 * len(inside)  # "all" really moves the whole layer


def test_loss_terms_weights_and_l2_penalty(cnn) -> None:
    model, _, y, feats, split = cnn
    cls = weakest(split)

    def run(**kw):
        cfg = FinetuneRepairSpec(steps=40, **kw)
        return repair(RepairTask(model.head, feats, y, split, cls, 2), cfg).history

    plain = run(l2=0.0)
    losses = [h["loss"] for h in plain]
    assert losses == sorted(losses, reverse=True)  # gradient descent on a convex loss
    assert plain[0]["penalty"] == 0.0 and plain[-1]["penalty"] > 0
    # A strong pull toward the original weights keeps them closer.
    assert run(l2=1.0)[-1]["penalty"] < 0.5 * plain[-1]["penalty"]
    # With the negatives weighted 0 they do not drive the descent: fewer get fixed.
    assert run(neg_weight=0.0)[-1]["n_patched"] < plain[-1]["n_patched"]
    # loss = neg_weight ce_neg + pos_weight ce_pos + l2 penalty, row by row.
    for h in run(neg_weight=3.0, pos_weight=0.25, l2=0.5):
        want = 3.0 * h["ce_neg"] + 0.25 * h["ce_pos"] + 0.5 * h["penalty"]
        assert h["loss"] == pytest.approx(want, rel=1e-12)


def test_changed_weights_lists_only_weights_that_differ_in_the_layer_dtype() -> None:
    old = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    new = torch.tensor([[1.0, 2.0 + 1e-12], [3.5, 4.0]], dtype=torch.float64)
    patch = changed_weights(old, new)
    # 2 + 1e-12 rounds back to 2.0 in float32: not a change.
    assert [(p.row, p.col, p.old, p.new) for p in patch] == [(1, 0, 3.0, 3.5)]


def test_nothing_to_repair(cnn) -> None:
    model, _, y, feats, split = cnn
    clean = TargetSplit(y=split.y, pred=split.y)
    res = repair(RepairTask(model.head, feats, y, clean, 0, 0), FinetuneRepairSpec())
    assert res.status == "nothing_to_repair" and res.patch == [] and res.iterations == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("weights", ["all", "localised"])
def test_cuda_descent_matches_cpu(cnn, weights: str) -> None:
    model, _, y, feats, split = cnn
    cls = weakest(split)
    cfg = FinetuneRepairSpec(steps=30, weights=weights)
    cpu = repair(RepairTask(model.head, feats, y, split, cls, 1, "cpu"), cfg)
    head = torch.nn.Linear(feats.shape[1], 10).cuda()
    head.load_state_dict(model.head.state_dict())
    gpu = repair(RepairTask(head, feats.cuda(), y, split, cls, 1, "cuda"), cfg)
    # Compare the repaired layers: a change within rounding may be patched on one only.
    got = apply_patch(head, gpu.patch).weight.cpu()
    want = apply_patch(model.head, cpu.patch).weight
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert gpu.rr == cpu.rr and gpu.br == cpu.br
