"""The smallest change of a final Linear layer that classifies given inputs by a margin, as
a linear program: the solver-facing core of the ``provable`` repair method.

Why this module exists: with the penultimate features ``x_i`` fixed, the logits
``z_i = W x_i + b`` are linear in the weights, so "input ``i`` gets class ``t_i`` by a margin
``m``" is the set of linear constraints ``(w_t - w_k) . x_i + (b_t - b_k) >= m`` for every other
class ``k`` (the line of PRDNN, Sotoudeh & Thakur, PLDI 2021, and APRNN, Tao et al., PLDI
2023, restricted to the last layer). The smallest change ``D = W' - W`` meeting them all is
a linear program in ``D`` for the L1 norm (``sum |D|``, with ``D = U - V``, ``U, V >= 0``) and
for the L-infinity norm (``max |D| = s``; with ``D = u / tau``, ``u`` in ``[-1, 1]`` and
``tau = 1 / s``, "maximise ``tau``" has box bounds instead of ``2 x R x d`` extra rows;
then, among its optima, the least L1 change with ``|D| <= s``, so that weights that do not
help stay as they are). The bias stays: a patch holds weights only, as for every method.

**Lazily**: most constraints are far from binding (an input's distant competitors), so the
program is first solved over every unmet constraint and each input's
``FIRST_COMPETITORS`` closest ones; the constraints its solution misses are added and it is
solved again, until the solution meets all - then it is optimal for all of them.

Only the rows ``rows`` of ``W`` may change (every class, or the target class alone). A
constraint between two fixed rows is left out: the patch cannot change it, and an input
constrained here is classified correctly before the patch (a positive) or involves the
target row (a negative), so its class is kept by the fixed rows whatever their margin. When
only the target row ``c`` may change, an input's constraints against the fixed rows
collapse into the one against its largest competitor.

**Solving** with SciPy's HiGHS (``scipy.optimize.linprog``, ``method="highs"``) under a
wall-clock ``time_limit``. Outcomes (:class:`Solution`):

- ``optimal``: the smallest change meeting every constraint;
- ``infeasible`` or ``time limit`` (or any other HiGHS status): the *elastic* program is
  solved instead - each constraint ``a . D >= r`` becomes ``a . D + e >= r`` with a
  violation ``e >= 0`` - minimising the total violation ``sum e`` (plus ``1e-6`` times the
  L1 norm of ``D`` whatever ``norm``, so that among equally violating patches the smaller
  change wins), in the time that is left (at least a tenth of the limit). ``fallback``
  says so; when it too fails the change is zero.

:func:`margins` recomputes every constrained input's margin for a candidate layer, which is
how a patch is *certified*: the caller checks the layer in its own dtype (the network's).
Pure numpy/scipy; no torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.optimize import OptimizeResult, linprog

Norm = Literal["l1", "linf"]

# Weight of the norm next to the total violation in the elastic program: it only breaks
# ties between equally violating patches.
ELASTIC_NORM_WEIGHT = 1e-6
# The elastic fallback gets at least this share of the time limit.
MIN_FALLBACK_SHARE = 0.1
# Each input's closest competitors in the first round of the lazy solve.
FIRST_COMPETITORS = 2
# A constraint left out is added when the solution's gap is below margin x this: a hair
# under 1, so a constraint the solver meets to its tolerance is not added again.
ACTIVE_RTOL = 1.0 - 1e-6
# The least-L1 tie-break among L-infinity optima may exceed the optimum by this share.
LINF_SLACK = 1e-7
# L-infinity's 1 / max|D| below this: no change meets the constraints (infeasible).
TAU_MIN = 1e-9

# HiGHS statuses as scipy's linprog reports them.
LINPROG_STATUS = {
    0: "optimal",
    1: "time limit",  # or iteration limit
    2: "infeasible",
    3: "unbounded",
    4: "numerical difficulties",
}


@dataclass(frozen=True)
class MarginProblem:
    """Inputs ``x`` (n x d) that must get classes ``targets`` (n,) from the layer ``weight``
    (C x d), ``bias`` (C,) by ``margin``, changing only the rows ``rows`` of ``weight``."""

    x: np.ndarray
    targets: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    rows: np.ndarray
    margin: float

    @property
    def logits(self) -> np.ndarray:
        return self.x @ self.weight.T + self.bias


@dataclass(frozen=True)
class Program:
    """``A_ub y <= b_ub`` over the change's variables."""

    objective: np.ndarray
    a_ub: sp.csr_matrix
    b_ub: np.ndarray
    bounds: list[tuple[float | None, float | None]] | tuple[float, float | None]
    n_delta: int  # the first n_delta (L1: 2 x n_delta) variables describe D
    norm: Norm

    @property
    def size(self) -> dict[str, int]:
        return {
            "variables": int(self.a_ub.shape[1]),
            "constraints": int(self.a_ub.shape[0]),
            "nonzeros": int(self.a_ub.nnz),
        }


@dataclass(frozen=True)
class Solution:
    """What solving gave: the change of the free rows (R x d), the solver's word on it."""

    delta: np.ndarray
    status: str  # the main program's HiGHS status (LINPROG_STATUS)
    message: str
    fallback: str | None  # "min-violation" when the elastic program gave ``delta``
    objective: float | None  # the norm of ``delta`` (main program) or the total violation
    seconds: float
    size: dict[str, int]


def pairs(problem: MarginProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The constraints that involve a free row: (input, its class t, competitor k) arrays."""
    n, classes = problem.x.shape[0], problem.weight.shape[0]
    free = np.zeros(classes, dtype=bool)
    free[problem.rows] = True
    inp = np.repeat(np.arange(n), classes)
    comp = np.tile(np.arange(classes), n)
    tgt = problem.targets[inp]
    keep = (comp != tgt) & (free[comp] | free[tgt])
    return inp[keep], tgt[keep], comp[keep]


@dataclass(frozen=True)
class Constraints:
    """The program's constraints ``(d_t - d_k) . x_i >= m - gap``: input, t, k, and the
    current ``gap = z_t - z_k``."""

    inp: np.ndarray
    tgt: np.ndarray
    comp: np.ndarray
    gap: np.ndarray

    def take(self, mask: np.ndarray) -> Constraints:
        return Constraints(self.inp[mask], self.tgt[mask], self.comp[mask], self.gap[mask])


def constraints(problem: MarginProblem) -> Constraints:
    """Every constraint of the program (collapsed when only one row is free)."""
    z = problem.logits
    inp, tgt, comp = pairs(problem)
    if len(problem.rows) == 1:
        inp, tgt, comp = _collapse(z, inp, tgt, comp, int(problem.rows[0]))
    return Constraints(inp, tgt, comp, z[inp, tgt] - z[inp, comp])


def build(
    problem: MarginProblem, norm: Norm, cons: Constraints, cap: float | None = None
) -> Program:
    """The linear program of the module docstring over the constraints ``cons``, as
    ``A_ub y <= b_ub``.

    Variables: the change of the free rows, row-major (``R x d``); for L1 split into
    ``U`` then ``V``; for L-infinity ``D`` then ``s``. Each constraint ``(d_t - d_k) . x >=
    m - gap`` is written ``-(d_t - d_k) . x <= gap - m`` (a fixed row's ``d`` is 0).
    ``cap`` (L1 only) bounds every ``|d|``.
    """
    x, d = problem.x.astype(np.float64), problem.x.shape[1]
    slot = np.full(problem.weight.shape[0], -1)
    slot[problem.rows] = np.arange(len(problem.rows))
    m, n_delta = len(cons.inp), len(problem.rows) * d
    rows_idx, cols_idx, vals = [], [], []
    for sign, cls in ((-1.0, cons.tgt), (1.0, cons.comp)):
        s = slot[cls]
        ok = s >= 0
        rows_idx.append(np.repeat(np.flatnonzero(ok), d))
        cols_idx.append((s[ok][:, None] * d + np.arange(d)[None, :]).ravel())
        vals.append((sign * x[cons.inp[ok]]).ravel())
    a = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows_idx), np.concatenate(cols_idx))),
        shape=(m, n_delta),
    )
    rhs = cons.gap - problem.margin
    if norm == "l1":
        return Program(
            objective=np.ones(2 * n_delta),
            a_ub=sp.hstack([a, -a], format="csr"),
            b_ub=rhs,
            bounds=(0.0, cap),
            n_delta=n_delta,
            norm=norm,
        )
    # L-infinity: minimise s with |D| <= s. With D = u / tau, u in [-1, 1] and tau = 1 / s
    # this is "maximise tau subject to a u - rhs tau <= 0": box bounds instead of 2 R d rows.
    # (Only when some constraint is not met now, i.e. some rhs < 0; solve() checks.)
    objective = np.zeros(n_delta + 1)
    objective[-1] = -1.0
    return Program(
        objective=objective,
        a_ub=sp.hstack([a, sp.csr_matrix(-rhs[:, None])], format="csr"),
        b_ub=np.zeros(m),
        bounds=[(-1.0, 1.0)] * n_delta + [(0.0, None)],
        n_delta=n_delta,
        norm=norm,
    )


def _collapse(
    z: np.ndarray, inp: np.ndarray, tgt: np.ndarray, comp: np.ndarray, row: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """With ``row`` the one free row: an input of that class keeps only its constraint
    against its largest competitor (its constraints differ by constants only); an input of
    another class has one constraint already (against ``row``)."""
    other = tgt != row
    own_inputs = np.unique(inp[~other])
    rest = z[own_inputs].copy()
    rest[:, row] = -np.inf
    best = rest.argmax(axis=1)
    return (
        np.concatenate([own_inputs, inp[other]]),
        np.concatenate([np.full(len(own_inputs), row), tgt[other]]),
        np.concatenate([best, comp[other]]),
    )


def delta_of(program: Program, y: np.ndarray) -> np.ndarray:
    """The change ``D`` (flat, n_delta) from a solution vector of ``program``."""
    n = program.n_delta
    if program.norm == "l1":
        return y[:n] - y[n : 2 * n]
    tau = y[n]
    return y[:n] / tau if tau > TAU_MIN else np.zeros(n)


def norm_of(delta: np.ndarray, norm: Norm) -> float:
    if delta.size == 0:
        return 0.0
    return float(np.abs(delta).sum() if norm == "l1" else np.abs(delta).max())


def shifted_gaps(problem: MarginProblem, cons: Constraints, delta: np.ndarray) -> np.ndarray:
    """Each constraint's gap after the change ``delta`` (R x d) of the free rows."""
    shift = np.zeros((problem.x.shape[0], problem.weight.shape[0]))
    shift[:, problem.rows] = problem.x @ delta.T
    return cons.gap + shift[cons.inp, cons.tgt] - shift[cons.inp, cons.comp]


def initial_active(cons: Constraints, margin: float) -> np.ndarray:
    """The constraints solved first: every one not met now, and each input's
    ``FIRST_COMPETITORS`` closest competitors."""
    order = np.lexsort((cons.gap, cons.inp))
    rank = np.empty(len(order), dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(cons.inp[order])) + 1]
    counts = np.diff(np.r_[starts, len(order)])
    rank[order] = np.arange(len(order)) - np.repeat(starts, counts)
    return (cons.gap < margin) | (rank < FIRST_COMPETITORS)


@dataclass
class Lazy:
    """The outcome of :func:`solve_lazily`: the last solver result, its program, the
    constraints it had, and the rounds it took."""

    result: object
    program: Program
    active: np.ndarray
    rounds: int


def solve_lazily(
    problem: MarginProblem,
    norm: Norm,
    cons: Constraints,
    elastic: bool,
    deadline: float,
    cap: float | None = None,
) -> Lazy:
    """Solve over a growing subset of the constraints until the solution meets all of them.

    Most constraints are far from binding (an input's distant competitors), so the program
    is first solved over :func:`initial_active`; every constraint the solution misses is
    added and the program solved again. The last solution is optimal for all constraints:
    it is optimal for a subset and meets the rest. ``elastic`` solves the least-violation
    program the same way (a constraint left out is met, so it adds no violation).
    """
    active = initial_active(cons, problem.margin)
    rounds = 0
    while True:
        rounds += 1
        program = build(problem, "l1" if elastic else norm, cons.take(active), cap)
        objective, a_ub, bounds = (
            _elastic(program)
            if elastic
            else (
                program.objective,
                program.a_ub,
                program.bounds,
            )
        )
        left = max(deadline - time.perf_counter(), 1e-3)
        res = _linprog(objective, a_ub, program.b_ub, bounds, left)
        if res.status != 0 or res.x is None:
            return Lazy(res, program, active, rounds)
        delta = delta_of(program, res.x).reshape(len(problem.rows), -1)
        missed = ~active & (shifted_gaps(problem, cons, delta) < problem.margin * ACTIVE_RTOL)
        if not missed.any():
            return Lazy(res, program, active, rounds)
        active |= missed


def _least_l1(
    problem: MarginProblem, cons: Constraints, delta: np.ndarray, deadline: float
) -> np.ndarray:
    """Among the L-infinity optima (``|d| <= max |delta|``), the one of least L1 norm: an
    L-infinity optimum is far from unique (every weight that does not help may take any
    value up to the bound), and this keeps those at 0. ``delta`` when it does not solve."""
    cap = float(np.abs(delta).max()) * (1.0 + LINF_SLACK)
    lazy = solve_lazily(problem, "l1", cons, False, max(deadline, time.perf_counter() + 1.0), cap)
    if lazy.result.status != 0 or lazy.result.x is None:
        return delta
    return delta_of(lazy.program, lazy.result.x)


def solve(problem: MarginProblem, norm: Norm, time_limit: float) -> Solution:
    """Solve the program; fall back to the least total violation (module docstring)."""
    start = time.perf_counter()
    cons = constraints(problem)
    shape = (len(problem.rows), problem.x.shape[1])
    if (cons.gap >= problem.margin).all():  # met already: no change is the least change
        return Solution(
            delta=np.zeros(shape),
            status="optimal",
            message="every constraint is met without a change",
            fallback=None,
            objective=0.0,
            seconds=time.perf_counter() - start,
            size={
                "variables": 0,
                "constraints": 0,
                "nonzeros": 0,
                "all_constraints": len(cons.inp),
                "rounds": 0,
            },
        )
    main = solve_lazily(problem, norm, cons, False, start + time_limit)
    res = main.result
    status = LINPROG_STATUS.get(res.status, f"status {res.status}")
    if res.status == 0 and norm == "linf" and res.x[main.program.n_delta] <= TAU_MIN:
        status = "infeasible"  # no direction meets every constraint
    size = {**main.program.size, "all_constraints": len(cons.inp), "rounds": main.rounds}
    if status == "optimal":
        delta = delta_of(main.program, res.x)
        if norm == "linf":
            delta = _least_l1(problem, cons, delta, start + time_limit)
        return Solution(
            delta=delta.reshape(shape),
            status=status,
            message=res.message,
            fallback=None,
            objective=norm_of(delta, norm),
            seconds=time.perf_counter() - start,
            size=size,
        )
    left = max(time_limit - (time.perf_counter() - start), MIN_FALLBACK_SHARE * time_limit)
    fallback = solve_lazily(problem, norm, cons, True, time.perf_counter() + left)
    res_e = fallback.result
    if res_e.status != 0 or res_e.x is None:
        delta, objective, how = np.zeros(shape), None, "none (zero change)"
    else:
        delta = delta_of(fallback.program, res_e.x).reshape(shape)
        objective = float(res_e.x[fallback.program.a_ub.shape[1] :].sum())
        how = "min-violation"
    return Solution(
        delta=delta,
        status=status,
        message=res.message,
        fallback=how,
        objective=objective,
        seconds=time.perf_counter() - start,
        size=size,
    )


def _elastic(
    program: Program,
) -> tuple[np.ndarray, sp.csr_matrix, list[tuple[float | None, float | None]]]:
    """Objective, ``A_ub`` and bounds of the elastic program from an L1 ``program``: one
    violation variable per margin constraint."""
    m, n_var = program.a_ub.shape
    a_ub = sp.hstack([program.a_ub, -sp.identity(m, format="csr")], format="csr")
    objective = np.concatenate([ELASTIC_NORM_WEIGHT * program.objective, np.ones(m)])
    return objective, a_ub, [(0.0, None)] * (n_var + m)


def _linprog(
    objective: np.ndarray,
    a_ub: sp.csr_matrix,
    b_ub: np.ndarray,
    bounds: list[tuple[float | None, float | None]] | tuple[float, float | None],
    time_limit: float,
) -> OptimizeResult:
    return linprog(
        objective,
        A_ub=a_ub,
        b_ub=b_ub,
        bounds=bounds,
        method="highs",
        options={"time_limit": float(time_limit), "presolve": True},
    )


def gaps(problem: MarginProblem, logits: np.ndarray) -> np.ndarray:
    """``z_t - z_k`` of every constraint of the program (before any collapse) under the
    layer that gave ``logits`` (n x C): all must be at least the margin."""
    inp, tgt, comp = pairs(problem)
    return logits[inp, tgt] - logits[inp, comp]


def certify(problem: MarginProblem, logits: np.ndarray, rtol: float = 1e-3) -> bool:
    """Every constrained input classified as its target, every constraint's gap at least
    ``margin x (1 - rtol)`` (the solver's feasibility tolerance and the layer's rounding).

    ``logits`` should be what the network computes: the patched layer in its own dtype.
    """
    if len(logits) == 0:
        return True
    classified = bool((logits.argmax(axis=1) == problem.targets).all())
    g = gaps(problem, logits)
    return classified and bool((g >= problem.margin * (1.0 - rtol)).all())
