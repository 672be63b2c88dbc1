"""NeuRecover: its weight localisation on a tiny network against a plain re-computation
(autograd, loops and Python sets), its vectorised fitness against the full network, the
choice of the earlier weights, the fallbacks it reports, reproducibility, the spec block.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from early_repair_testing.arachne_reference import reference_scores
from early_repair_testing.digits_checkpoints import CPU, untrained_cnn, weakest
from pydantic import ValidationError

from orchestrator.spec import NeurecoverRepairSpec
from trainer_image.models import Repairable
from trainer_image.repair.base import RepairTask
from trainer_image.repair.history import Reference, TrainingHistory, reference_epoch
from trainer_image.repair.neurecover import (
    NeuRecoverFitness,
    localise_from_history,
    repair,
)

torch.set_num_threads(1)


def tiny(seed: int) -> Repairable:
    torch.manual_seed(seed)
    body = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU())
    return Repairable(body, torch.nn.Linear(6, 3)).double().eval()


def plain_top(scores: dict[tuple[int, int], float], k: int) -> set[tuple[int, int]]:
    """The k largest by a plain sort; ties by row-major position."""
    return {w for w, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]}


def plain_localisation(now, ref, x, y, deg, imp, k) -> set[tuple[int, int]]:
    """Steps 2-3 of the method, computed the slow obvious way on the whole network."""
    head = now.head
    w_now = head.weight.detach()
    weights = [(i, j) for i in range(head.out_features) for j in range(head.in_features)]

    def grad_of(idx: np.ndarray) -> torch.Tensor:
        model = tiny(0)
        model.load_state_dict(now.state_dict())
        loss = F.cross_entropy(model(x[idx]), y[idx])  # mean over the set, own labels
        loss.backward()
        return model.head.weight.grad.abs()

    def impact(idx: np.ndarray) -> dict[tuple[int, int], float]:
        with torch.no_grad():
            o = now.penultimate(x[idx])
        out = {}
        for i, j in weights:
            terms = [abs(float(o[n, j]) * float(w_now[i, j])) for n in range(len(idx))]
            out[(i, j)] = sum(terms) / len(terms)
        return out

    g_deg = grad_of(deg)
    deg_set = plain_top({w: float(g_deg[w]) for w in weights}, k) & plain_top(impact(deg), k)
    diff = {w: abs(float(w_now[w]) - float(ref.head.weight.detach()[w])) for w in weights}
    deg_set &= plain_top(diff, k)
    if len(imp):
        g_imp = grad_of(imp)
        deg_set -= plain_top({w: float(g_imp[w]) for w in weights}, k) & plain_top(impact(imp), k)
    return deg_set


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.8])
def test_localisation_equals_a_plain_computation_on_a_tiny_network(fraction: float) -> None:
    """Two states of a tiny network: regressed/improved inputs from both models' predictions,
    gradients by autograd, forward impact by loops, top-k by sorting, sets by Python sets."""
    found = 0
    for seed in range(1, 9):
        now, ref = tiny(seed), tiny(seed + 100)
        rng = np.random.default_rng(seed)
        x = torch.as_tensor(rng.normal(size=(40, 4)))
        with torch.no_grad():
            pred_now, pred_ref = now(x).argmax(1).numpy(), ref(x).argmax(1).numpy()
        y = torch.as_tensor(np.where(rng.random(40) < 0.5, pred_now, pred_ref))
        y_np = y.numpy()
        deg = np.flatnonzero((pred_ref == y_np) & (pred_now != y_np))
        imp = np.flatnonzero((pred_ref != y_np) & (pred_now == y_np))
        assert deg.size and imp.size
        k = round(fraction * 18)
        expected = plain_localisation(now, ref, x, y, deg, imp, k)
        with torch.no_grad():
            feats = now.penultimate(x).numpy()
        got = localise_from_history(
            now.head.weight.detach().numpy(),
            now.head.bias.detach().numpy(),
            ref.head.weight.detach().numpy(),
            (feats[deg], y_np[deg]),
            (feats[imp], y_np[imp]),
            fraction,
        )
        assert got.k == k
        assert set(zip(got.rows.tolist(), got.cols.tolist(), strict=True)) == expected, seed
        found += bool(expected)
    assert found >= 2  # the sets do overlap: the comparison is not vacuous


def test_vectorised_fitness_equals_the_full_network() -> None:
    """NeuRecover's fitness of random candidate values, scored from cached features in one
    batch, equals the formula on the full network's outputs for each candidate alone."""
    model, x, y, _feats, split = untrained_cnn()
    model.double()
    with torch.no_grad():
        feats = model.penultimate(x.double())
    cls = weakest(split)
    neg, pos = split.negatives(cls), split.positives()[:60]
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 10, 25)
    cols = rng.integers(0, feats.shape[1], 25)
    rows, cols = np.unique(np.stack([rows, cols]), axis=1)
    alpha = 0.7
    ev = NeuRecoverFitness(
        model.head.weight,
        model.head.bias,
        feats[neg],
        feats[pos],
        y[pos],
        cls,
        rows,
        cols,
        CPU,
        2**20,  # small chunks: several batches
        alpha=alpha,
    )
    positions = ev.initial + 0.3 * torch.randn(
        40, len(rows), generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    got = ev(positions)
    refs = reference_scores(
        model, x[neg].double(), cls, x[pos].double(), y[pos], rows, cols, positions
    )
    for p, r in enumerate(refs):
        want = (r.n_patched / len(neg) + 1) / (r.loss_neg + 1) + alpha * (
            r.n_intact / len(pos) + 1
        ) / (r.loss_pos + 1)
        assert float(got.fitness[p]) == pytest.approx(want, rel=1e-10)
        assert int(got.n_patched[p]) == r.n_patched and int(got.n_intact[p]) == r.n_intact


@pytest.mark.parametrize(
    ("which", "epoch", "kept", "initial", "expected"),
    [
        ("previous", 10, [1, 5, 10, 12], True, 5),
        ("previous", 1, [1, 5, 10], True, 0),  # the first checkpoint: the initial weights
        ("previous", 1, [1, 5, 10], False, None),  # ... unless they were not kept
        ("first", 10, [1, 5, 10], True, 1),
        ("first", 1, [1, 5, 10], True, 0),
        ("initial", 10, [1, 5, 10], True, 0),
        ("initial", 10, [1, 5, 10], False, None),
    ],
)
def test_which_earlier_weights_are_compared(which, epoch, kept, initial, expected) -> None:
    """previous / first kept checkpoint before the epoch, else the initial weights."""
    assert reference_epoch(which, epoch, kept, initial) == expected


def history_of(model: Repairable, x: torch.Tensor, epoch: int) -> TrainingHistory:
    """A history whose only earlier model (the initial weights) is ``model``."""
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    ref = Reference(0, model.head.weight.detach().clone(), model.head.bias.detach().clone(), pred)
    loads: list[int] = []

    def load(e: int) -> Reference:
        loads.append(e)
        return ref

    history = TrainingHistory(epoch=epoch, kept=[epoch], initial=True, load=load)
    history.loads = loads  # type: ignore[attr-defined]
    return history


def test_a_repair_reports_its_reference_and_is_reproducible() -> None:
    """With a history the record names the compared epoch; a seed gives the same patch;
    only localised weights change; an earlier model is loaded once per history."""
    now, x, y, feats, split = untrained_cnn(7)
    ref, *_ = untrained_cnn(8)
    cls = weakest(split)
    cfg = NeurecoverRepairSpec(particles=20, iterations=5, top_fraction=0.5)
    history = history_of(ref, x, epoch=1)
    a = repair(RepairTask(now.head, feats, y, split, cls, 3, history=history), cfg)
    b = repair(RepairTask(now.head, feats, y, split, cls, 3, history=history), cfg)
    assert a.status == "repaired" and a.patch == b.patch and a.patch
    assert a.details["reference_epoch"] == 0
    assert history.loads == [0]  # type: ignore[attr-defined]
    w = now.head.weight.detach()
    with torch.no_grad():
        ref_pred = ref(x).argmax(1).numpy()
    neg = split.negatives(cls)
    regressed = neg[ref_pred[neg] == split.y[neg]]
    assert ("method_note" in a.details) == (regressed.size == 0)
    for p in a.patch:
        assert p.old == pytest.approx(float(w[p.row, p.col]))


def test_without_history_it_says_what_it_did() -> None:
    """No earlier weights: the record says so (reference None, a note), never silently."""
    now, _x, y, feats, split = untrained_cnn(7)
    cls = weakest(split)
    cfg = NeurecoverRepairSpec(particles=10, iterations=3)
    res = repair(RepairTask(now.head, feats, y, split, cls, 0), cfg)
    assert res.details["reference_epoch"] is None
    assert "no earlier weights" in res.details["method_note"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("compare_with", "last"), ("top_fraction", 0), ("top_fraction", 1.5), ("alpha", -1)],
)
def test_bad_fields_are_refused(field: str, value: object) -> None:
    """Each of neurecover's own fields is validated."""
    with pytest.raises(ValidationError, match=field):
        NeurecoverRepairSpec(**{field: value})
