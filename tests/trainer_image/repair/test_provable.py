"""Provable last-layer repair: the linear program's optimum against hand-derived and
brute-force optima, every certified patch re-verified through the whole network, the
infeasible case and its least-violation fallback, the time limit, and the spec block.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from early_repair_testing.digits_checkpoints import untrained_cnn
from pydantic import ValidationError

from orchestrator.spec import ProvableRepairSpec
from trainer_image.repair.base import RepairTask, TargetSplit, apply_patch
from trainer_image.repair.provable import repair
from trainer_image.repair.provable_lp import MarginProblem, certify, solve

torch.set_num_threads(1)


def one_negative(rows: np.ndarray) -> MarginProblem:
    """Two classes, x = (1, 0) of class 0 scored (0, 1): needs d00 - d10 >= 1.5 for m = 0.5."""
    return MarginProblem(
        x=np.array([[1.0, 0.0]]),
        targets=np.array([0]),
        weight=np.array([[0.0, 0.0], [1.0, 0.0]]),
        bias=np.zeros(2),
        rows=rows,
        margin=0.5,
    )


@pytest.mark.parametrize(
    ("rows", "norm", "optimum"),
    [
        # Both rows free: L1 may split 1.5 any way; L-inf splits it evenly, 0.75 each.
        (np.array([0, 1]), "l1", 1.5),
        (np.array([0, 1]), "linf", 0.75),
        # Only row 0 free: it alone must move by 1.5.
        (np.array([0]), "l1", 1.5),
        (np.array([0]), "linf", 1.5),
    ],
)
def test_the_optimum_of_a_hand_solved_program(rows: np.ndarray, norm: str, optimum: float) -> None:
    """The least change of x = (1, 0) from class 1 to class 0 by margin 0.5 is derived by hand."""
    problem = one_negative(rows)
    sol = solve(problem, norm, 10.0)  # type: ignore[arg-type]
    assert sol.status == "optimal" and sol.fallback is None
    assert sol.objective == pytest.approx(optimum, abs=1e-7)
    weight = problem.weight.copy()
    weight[rows] += sol.delta
    assert certify(problem, problem.x @ weight.T)
    # x_1 = 0: moving its weights helps nothing, and the least change leaves them (for
    # L-infinity: the tie-break toward the least L1 change among the optima).
    assert np.all(sol.delta[:, 1] == pytest.approx(0.0, abs=1e-9))


@pytest.mark.parametrize("norm", ["l1", "linf"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_optimum_equals_a_brute_force_grid_search(norm: str, seed: int) -> None:
    """Three classes, two features, five inputs, only the target row free (two unknowns):
    the LP's optimum equals the smallest norm on a 0.005 grid that meets every constraint
    (to the grid's resolution), and is never above it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 2))
    weight = rng.normal(size=(3, 2))
    targets = rng.integers(0, 3, size=5)
    targets[0] = 0
    problem = MarginProblem(x, targets, weight, np.zeros(3), np.array([0]), 0.1)
    sol = solve(problem, norm, 10.0)  # type: ignore[arg-type]
    step, reach = 0.005, 5.0
    axis = np.arange(-reach, reach + step, step)
    d0, d1 = np.meshgrid(axis, axis, indexing="ij")
    deltas = np.stack([d0.ravel(), d1.ravel()], axis=1)  # G x 2 candidates for row 0
    z = x @ weight.T  # 5 x 3
    ok = np.ones(len(deltas), dtype=bool)
    shift = deltas @ x.T  # G x 5: change of each input's class-0 score
    for i, t in enumerate(targets):
        for k in range(3):
            if k == t:
                continue
            gap = (
                z[i, t] - z[i, k] + (shift[:, i] if t == 0 else 0) - (shift[:, i] if k == 0 else 0)
            )
            if t != 0 and k != 0:
                continue  # neither row moves: not part of the program
            ok &= gap >= 0.1
    norms = np.abs(deltas).sum(1) if norm == "l1" else np.abs(deltas).max(1)
    if not ok.any():  # nothing on the grid: infeasible, or the least change lies beyond it
        assert sol.status == "infeasible" or np.abs(sol.delta).max() > reach
        return
    best = norms[ok].min()
    assert sol.status == "optimal"
    assert sol.objective <= best + 1e-9
    assert sol.objective == pytest.approx(best, abs=2.5 * step)


def _network_check(model, x, y, split, cls, res, margin: float) -> None:
    """Re-run the whole network with the patch: every negative now ``cls`` and every positive
    still right (all positives are sampled here), each by the margin."""
    patched = type(model)(model.body, apply_patch(model.head, res.patch)).eval()
    with torch.no_grad():
        logits = patched(x).double().numpy()
    neg, pos = split.negatives(cls), split.positives()
    idx = np.concatenate([neg, pos])
    targets = np.concatenate([np.full(neg.size, cls), split.y[pos]])
    own = logits[idx, targets]
    others = logits[idx].copy()
    others[np.arange(len(idx)), targets] = -np.inf
    top = others.max(axis=1)
    rest = logits[idx, cls]
    # All rows free: the margin against every class. Target row only: against the target
    # class for other classes' inputs, against every class for the class's own.
    against = np.where(targets == cls, top, rest)
    assert (own - against >= margin * (1 - 1e-3)).all()
    assert (logits[neg].argmax(1) == cls).all() and (logits[pos].argmax(1) == split.y[pos]).all()
    assert res.rr == 100.0 and res.br == 0.0


@pytest.mark.parametrize("rows", ["target", "all"])
@pytest.mark.parametrize("seed", [7, 8, 9])
def test_every_certified_patch_holds_when_the_network_is_run_again(rows: str, seed: int) -> None:
    """Random problems (untrained CNNs, every class): a certified patch gives RR 100 and BR 0
    through the full network with every margin met; an uncertified one says why."""
    model, x, y, feats, split = untrained_cnn(seed)
    cfg = ProvableRepairSpec(rows=rows, n_positives=10_000, margin=0.1)  # type: ignore[arg-type]
    certified = 0
    for cls in range(10):
        res = repair(RepairTask(model.head, feats, y, split, cls, cls), cfg)
        if res.status == "nothing_to_repair":
            continue
        assert set(res.details) >= {"certified", "solver_status"}
        if res.details["certified"]:
            certified += 1
            assert res.details["solver_status"] == "optimal"
            assert rows == "all" or {p.row for p in res.patch} == {cls}
            if rows == "target":
                _network_check(model, x, y, split, cls, res, 0.1)
            else:
                _full_margin_check(model, x, split, cls, res, 0.1)
        else:
            assert res.details["solver_status"] in {"infeasible", "time limit"}
            assert "total violation" in res.details["method_note"]
    assert certified > 0


def _full_margin_check(model, x, split, cls, res, margin: float) -> None:
    patched = type(model)(model.body, apply_patch(model.head, res.patch)).eval()
    with torch.no_grad():
        logits = patched(x).double().numpy()
    neg, pos = split.negatives(cls), split.positives()
    idx = np.concatenate([neg, pos])
    targets = np.concatenate([np.full(neg.size, cls), split.y[pos]])
    own = logits[idx, targets]
    others = logits[idx].copy()
    others[np.arange(len(idx)), targets] = -np.inf
    assert (own - others.max(axis=1) >= margin * (1 - 1e-3)).all()
    assert res.rr == 100.0 and res.br == 0.0


def conflicting() -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor, TargetSplit]:
    """A negative of class 0 and a positive of class 1 with the same features: no change
    of the layer can classify both right."""
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    pred = head(feats).argmax(1).numpy()  # 1, 1, 0 (the last is a tie: argmax picks 0)
    return head, feats, y, TargetSplit(y=y.numpy(), pred=pred)


@pytest.mark.parametrize("rows", ["target", "all"])
def test_an_infeasible_repair_says_so_and_minimises_the_total_violation(rows: str) -> None:
    """Contradictory constraints: certified false, status infeasible, and the patch's total
    violation is the least possible (the two constraints' required gaps add up)."""
    head, feats, y, split = conflicting()
    cfg = ProvableRepairSpec(rows=rows, margin=0.5, n_positives=10)  # type: ignore[arg-type]
    res = repair(RepairTask(head, feats, y, split, 0, 0), cfg)
    assert res.details["certified"] is False
    assert res.details["solver_status"] == "infeasible"
    assert "minimises the total violation" in res.details["method_note"]
    # With s = (d_0 - d_1) . (1, 0), the negative needs s >= 1.5 and the positive s <= 0.5:
    # their violations add up to at least 1.0 whatever s; the third input's constraint can
    # be met. A least-violation patch reaches exactly 1.0.
    assert res.history[-1]["objective"] == pytest.approx(1.0, abs=1e-6)
    assert res.history[-1]["certified"] == 0 and res.history[-1]["unmet"] == 1


def test_a_time_limit_too_short_is_reported_and_not_certified() -> None:
    """A limit HiGHS cannot meet gives status 'time limit', certified false, and a note."""
    model, _x, y, feats, split = untrained_cnn(7)
    cfg = ProvableRepairSpec(rows="all", norm="linf", n_positives=10_000, time_limit=1e-6)
    res = repair(RepairTask(model.head, feats, y, split, 3, 0), cfg)
    assert res.details["solver_status"] == "time limit"
    assert res.details["certified"] is False
    assert res.details["method_note"]


def test_same_inputs_give_the_same_patch() -> None:
    """The only random choice is the positives' draw from the seed."""
    model, _x, y, feats, split = untrained_cnn(7)
    cfg = ProvableRepairSpec(n_positives=30)
    a = repair(RepairTask(model.head, feats, y, split, 3, 5), cfg)
    b = repair(RepairTask(model.head, feats, y, split, 3, 5), cfg)
    assert a.patch == b.patch and a.details == b.details


@pytest.mark.parametrize(
    ("field", "value"),
    [("norm", "l2"), ("margin", 0), ("time_limit", -1), ("rows", "some"), ("keep_positives", 1)],
)
def test_bad_fields_are_refused(field: str, value: object) -> None:
    """Each field of the provable block is validated."""
    with pytest.raises(ValidationError, match=field):
        ProvableRepairSpec(**{field: value})
