"""Which weights a last-layer repair may change, and which correct inputs it must keep.

Why this module exists: every method that repairs the final Linear layer starts from the
same two choices, made the way Arachne made them, so that methods compared on one
checkpoint and class work on the same problem; they are the set-up that
:func:`trainer_image.repair.last_layer.set_up` performs for every method.

- **Fault localisation** (:func:`localise`) on the target class's negatives ``I_neg``:
  ``|dL/dw_ij|`` of the mean cross-entropy on ``I_neg`` w.r.t. the final layer's weights,
  in closed form from the cached features (``(softmax - onehot)^T @ features / n``); the
  top ``N_g = grad_factor x |I_neg|`` weights by ``|grad|`` (a stable sort: equal gradients
  keep row-major (class, feature) order, exactly like the released code's stable Python
  sort); forward impact ``|mean_{I_neg} o_j x w_ij|`` of each kept weight; then the Pareto
  front of (``|grad|``, forward impact), both maximised (:func:`pareto_front`, sort-based,
  O(n log n)). A weight is dropped only when another is at least as good on both
  objectives and strictly better on one, so points equal on both objectives are all kept.
- **Positives** ``I_pos`` (:func:`sample_positives`, ``repair.positives``): ``uniform``
  (default) draws ``n_positives`` of the split's positives (all classes) without replacement
  by the seeded generator (all of them when there are fewer). ``with-replacement-dedup``:
  ``n_positives`` draws *with* replacement (``rng.choice(n, 200)`` in the Arachne code the
  paper built on), then repeated draws and inputs with identical feature rows are removed,
  keeping the first, so fewer than ``n_positives`` may remain. ``balanced``: the released
  code's label-balanced sample (:func:`balanced_amounts`): per label ``a = int(n / L x 2/3)
  + int(n x count / total x 1/3)``, capped at twice its count (a label with ``a > 2 count``
  is *saturated*); the shortfall ``n - sum(a)`` goes, uncapped, to one uncapped label drawn
  at random; each label then gives all its positives when ``a >= count``, else ``a`` of them
  without replacement - the released code's duplicates removed (nothing is added when every
  label is saturated, where the released code failed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# --- fault localisation -------------------------------------------------------------


@dataclass(frozen=True)
class Localisation:
    """The localised weights (rows = classes, cols = penultimate units) and their scores."""

    rows: np.ndarray
    cols: np.ndarray
    grad: np.ndarray  # |dL/dw| of each localised weight
    impact: np.ndarray  # forward impact of each localised weight
    n_candidates: int  # N_g actually kept before the Pareto front


def loss_gradient(
    weight: torch.Tensor, bias: torch.Tensor | None, features: torch.Tensor, label: int
) -> torch.Tensor:
    """d(mean CE of ``features`` all labelled ``label``)/dW in closed form, shape like W."""
    logits = features @ weight.T
    if bias is not None:
        logits = logits + bias
    err = torch.softmax(logits, dim=1)
    err[:, label] -= 1.0
    return err.T @ features / features.shape[0]


def pareto_front(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean mask of the points not dominated when maximising both ``a`` and ``b``.

    ``m`` dominates ``k`` when ``a_m >= a_k``, ``b_m >= b_k`` and one is strict; points equal
    on both objectives never dominate each other, so all copies of a front point are kept.
    Sort by ``a`` descending (ties: ``b`` descending); then ``k`` is dominated iff some point
    with strictly larger ``a`` has ``b >= b_k`` (prefix maximum over the earlier groups), or
    a point with equal ``a`` has strictly larger ``b`` (the first of its group).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = a.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((-b, -a))
    a_s, b_s = a[order], b[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = a_s[1:] != a_s[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    prefix_max = np.maximum.accumulate(b_s)
    best_before = np.where(group_start > 0, prefix_max[group_start - 1], -np.inf)
    dominated = (best_before >= b_s) | (b_s < b_s[group_start])
    keep = np.empty(n, dtype=bool)
    keep[order] = ~dominated
    return keep


def localise(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    neg_features: torch.Tensor,
    target_class: int,
    grad_factor: int,
) -> Localisation:
    """Arachne's fault localisation on the negatives (module docstring).

    Runs on the CPU in float64 whatever the search device, so the same checkpoint always
    localises the same weights.
    """
    w = weight.detach().to("cpu", torch.float64)
    b = None if bias is None else bias.detach().to("cpu", torch.float64)
    f = neg_features.detach().to("cpu", torch.float64)
    grad = loss_gradient(w, b, f, target_class).abs().numpy().ravel()
    n_g = min(grad_factor * f.shape[0], grad.size)
    # Stable descending sort: equal |grad| keep row-major order, like the released code.
    top = np.argsort(-grad, kind="stable")[:n_g]
    rows, cols = np.divmod(top, w.shape[1])
    mean_act = f.mean(dim=0).numpy()
    impact = np.abs(mean_act[cols] * w.numpy()[rows, cols])
    front = pareto_front(grad[top], impact)
    order = np.lexsort((cols[front], rows[front]))
    return Localisation(
        rows=rows[front][order],
        cols=cols[front][order],
        grad=grad[top][front][order],
        impact=impact[front][order],
        n_candidates=int(n_g),
    )


# --- positives -----------------------------------------------------------------------


# The released sampler's constants: the share of the sample split equally across labels,
# and how many times a label's count it may ask for.
BALANCED_SHARE = 2 / 3
BALANCED_CAP = 2


def balanced_amounts(counts: dict[int, int], n: int) -> tuple[dict[int, int], list[int]]:
    """Per label, how many the released sampler asks for before the shortfall; and the
    labels that may take the shortfall (not saturated). See the module docstring.

    The float expressions are the released code's, so ``int`` truncates the same values.
    """
    total = sum(counts.values())
    amounts: dict[int, int] = {}
    open_labels: list[int] = []
    for label, count in counts.items():
        a = int((n / len(counts)) * BALANCED_SHARE)
        a += int((n * (count / total)) * (1 - BALANCED_SHARE))
        if a > count * BALANCED_CAP:
            a = count * BALANCED_CAP
        else:
            open_labels.append(label)
        amounts[label] = a
    return amounts, open_labels


def _balanced(
    positives: np.ndarray, labels: np.ndarray, n: int, generator: torch.Generator
) -> np.ndarray:
    classes = np.unique(labels)
    members = {int(c): positives[labels == c] for c in classes}
    amounts, open_labels = balanced_amounts({c: len(m) for c, m in members.items()}, n)
    shortfall = n - sum(amounts.values())
    if shortfall > 0 and open_labels:
        lucky = open_labels[int(torch.randint(len(open_labels), (1,), generator=generator))]
        amounts[lucky] += shortfall
    picked = []
    for label, idx in members.items():
        if amounts[label] >= len(idx):  # asked for all of them, some more than once
            picked.append(idx)
        else:
            pick = torch.randperm(len(idx), generator=generator)[: amounts[label]].numpy()
            picked.append(idx[pick])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def sample_positives(
    positives: np.ndarray,
    features: torch.Tensor,
    n: int,
    how: str,
    generator: torch.Generator,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (into the repair set) of the positives the fitness uses (module docstring).

    ``how`` is ``repair.positives``; ``labels`` (the repair set's) are needed for
    ``balanced``.
    """
    if positives.size == 0:
        return positives.astype(np.int64)
    if how == "uniform":
        if positives.size <= n:
            return np.sort(positives).astype(np.int64)
        pick = torch.randperm(positives.size, generator=generator)[:n].numpy()
        return np.sort(positives[pick]).astype(np.int64)
    if how == "balanced":
        if labels is None:
            raise ValueError("balanced positives need the repair set's labels")
        return _balanced(positives, labels[positives], n, generator)
    if how != "with-replacement-dedup":
        raise ValueError(f"unknown positives sampling {how!r}")
    draws = positives[torch.randint(positives.size, (n,), generator=generator).numpy()]
    rows = features[torch.as_tensor(draws)].detach().cpu().numpy()
    _, first = np.unique(rows, axis=0, return_index=True)
    return np.sort(draws[first]).astype(np.int64)
