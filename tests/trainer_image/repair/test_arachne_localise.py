"""Arachne fault localisation: gradient ranking, forward impact, Pareto front.

Hand-built layers whose ranking and front are worked out by hand in the comments, plus
brute-force cross-checks (the released code's O(n^2) double loop) on random layers with
many ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer_image.repair.selection import localise, loss_gradient, pareto_front

torch.set_num_threads(1)


def brute_force_front(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The released code's double loop: i is off the front if some j dominates it."""
    keep = np.ones(len(a), dtype=bool)
    for i in range(len(a)):
        for j in range(len(a)):
            if a[j] >= a[i] and b[j] >= b[i] and (a[j] > a[i] or b[j] > b[i]):
                keep[i] = False
                break
    return keep


def test_pareto_front_hand_built() -> None:
    a = np.array([1.0, 2.0, 3.0, 3.0, 0.5, 2.0, 3.0])
    b = np.array([5.0, 4.0, 1.0, 1.0, 6.0, 3.0, 0.5])
    # (3,1) twice: equal on both objectives -> both kept; (3,0.5) is beaten by (3,1);
    # (2,3) by (2,4); (1,5), (2,4), (0.5,6) trade off and stay.
    assert pareto_front(a, b).tolist() == [True, True, True, True, True, False, False]


def test_pareto_front_edge_cases() -> None:
    assert pareto_front(np.array([]), np.array([])).tolist() == []
    assert pareto_front(np.array([1.0]), np.array([1.0])).tolist() == [True]
    assert pareto_front(np.zeros(4), np.zeros(4)).all()  # all identical: all kept
    # One point dominating all the others.
    assert pareto_front(np.array([1, 2, 3.0]), np.array([1, 2, 3.0])).tolist() == [
        False,
        False,
        True,
    ]


@pytest.mark.parametrize("seed", range(8))
def test_pareto_front_matches_double_loop_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    # Small integer grids give many exact ties on one and on both objectives.
    a = rng.integers(0, 12, n).astype(float)
    b = rng.integers(0, 12, n).astype(float)
    np.testing.assert_array_equal(pareto_front(a, b), brute_force_front(a, b))


def test_loss_gradient_matches_autograd() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    f = torch.randn(11, 5, generator=g, dtype=torch.float64)
    loss = torch.nn.functional.cross_entropy(f @ w.T + b, torch.full((11,), 2))
    (auto,) = torch.autograd.grad(loss, w)
    torch.testing.assert_close(loss_gradient(w.detach(), b, f, 2), auto)


def hand_layer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two classes, three units, one negative of class 0 with features f = [1, 2, 4].

    W = [[8, 0, 1], [0, 4, 1]] gives both classes logit 12, so softmax = [.5, .5] and
    dL/dW = (softmax - onehot)^T f: |grad| = 0.5 f = [.5, 1, 2] in both rows.
    Forward impact |f_j w_ij|: row 0 = [8, 0, 4], row 1 = [0, 8, 4].
    Points (|grad|, impact) by (row, col), flat index in brackets:
      (0,0)[0] = (.5, 8)   (0,1)[1] = (1, 0)   (0,2)[2] = (2, 4)
      (1,0)[3] = (.5, 0)   (1,1)[4] = (1, 8)   (1,2)[5] = (2, 4)
    Ranking by |grad| (stable): 2, 5, 1, 4, 0, 3.
    """
    w = torch.tensor([[8.0, 0.0, 1.0], [0.0, 4.0, 1.0]])
    b = torch.zeros(2)
    f = torch.tensor([[1.0, 2.0, 4.0]])
    return w, b, f


@pytest.mark.parametrize(
    ("grad_factor", "expected"),
    [
        # top 2 = (0,2), (1,2): identical points, both on the front.
        (2, [(0, 2), (1, 2)]),
        # top 3 adds (0,1) = (1, 0) (flat 1 before flat 4 on the |grad| tie): dominated.
        (3, [(0, 2), (1, 2)]),
        # top 4 adds (1,1) = (1, 8): trades grad for impact, joins the front.
        (4, [(0, 2), (1, 1), (1, 2)]),
        # all 6: (0,0) = (.5, 8) is dominated by (1,1); (1,0) by everything.
        (6, [(0, 2), (1, 1), (1, 2)]),
        # N_g larger than the layer: capped at all weights.
        (50, [(0, 2), (1, 1), (1, 2)]),
    ],
)
def test_localise_hand_built(grad_factor: int, expected: list[tuple[int, int]]) -> None:
    w, b, f = hand_layer()
    loc = localise(w, b, f, target_class=0, grad_factor=grad_factor)
    assert list(zip(loc.rows.tolist(), loc.cols.tolist(), strict=True)) == expected
    assert loc.n_candidates == min(grad_factor, 6)
    keys = list(zip(loc.rows.tolist(), loc.cols.tolist(), strict=True))
    by_weight = dict(zip(keys, loc.grad, strict=True))
    assert by_weight[(0, 2)] == pytest.approx(2.0)
    impacts = dict(zip(keys, loc.impact, strict=True))
    assert impacts[(0, 2)] == pytest.approx(4.0)
    if (1, 1) in impacts:
        assert impacts[(1, 1)] == pytest.approx(8.0)


def test_forward_impact_uses_the_mean_activation_over_negatives() -> None:
    # Two negatives whose mean activation is [1, 2, 4]: the same impacts as hand_layer.
    w, b, _ = hand_layer()
    f = torch.tensor([[0.0, 1.0, 4.0], [2.0, 3.0, 4.0]])
    loc = localise(w, b, f, target_class=0, grad_factor=3)  # N_g = 6: every weight
    mean = f.mean(dim=0)
    for r, c, imp in zip(loc.rows, loc.cols, loc.impact, strict=True):
        assert imp == pytest.approx(abs(float(mean[c] * w[r, c])))


@pytest.mark.parametrize("seed", range(4))
def test_localise_matches_brute_force_on_random_layer(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    c, d, n = 6, 20, 5
    # Rounded weights and features -> many exact |grad| and impact ties.
    w = torch.round(torch.randn(c, d, generator=g) * 4) / 4
    f = torch.relu(torch.round(torch.randn(n, d, generator=g) * 2) / 2)
    b = torch.zeros(c)
    grad_factor = 7  # N_g = 35 of 120 weights
    loc = localise(w, b, f, target_class=1, grad_factor=grad_factor)

    w64, f64 = w.double(), f.double()
    grad = loss_gradient(w64, b.double(), f64, 1).abs().numpy()
    flat = [(float(grad[i, j]), i * d + j) for i in range(c) for j in range(d)]
    # Python's stable sort, descending, like the released code.
    ranked = sorted(flat, key=lambda t: t[0], reverse=True)[: grad_factor * n]
    idx = np.array([k for _, k in ranked])
    rows, cols = idx // d, idx % d
    impact = np.abs(f64.mean(0).numpy()[cols] * w64.numpy()[rows, cols])
    keep = brute_force_front(grad[rows, cols], impact)
    expected = sorted(zip(rows[keep].tolist(), cols[keep].tolist(), strict=True))
    assert list(zip(loc.rows.tolist(), loc.cols.tolist(), strict=True)) == expected
    assert len(expected) >= 1
