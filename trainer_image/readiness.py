"""Repair-readiness policies: while a model trains, say when it is ready to be repaired.

Why this exists: the paper compared repairs only at a few fixed checkpoints and names "an
online method to determine if a model is ready for repair" as future work. A policy sees
only what is available during training - the validation split and the repair set, packed
into ``Evidence`` (the test split is not in it, by type) - and turns one number per epoch
into a decision, with Keras-style patience:

* every *evaluation* (an epoch at which the policy has a score) either improves on the
  score at the last significant improvement by more than ``min_delta`` (the patience resets)
  or does not (the wait grows); a non-finite score never improves;
* the policy *fires* for a watched (method, class) - a *track* - once the wait reaches
  ``patience``; the track is frozen from then on (``action: record`` evaluates exactly this
  decision against the full curve);
* the track's *ready epoch* is the epoch with the best score (the first on ties) up to
  firing, or up to the end of training when it never fired: the model the policy would repair;
* with ``action: stop`` training ends once every track has fired.

A new policy is one subclass of ``ReadinessPolicy`` with a ``score`` (higher is better;
None where it has no evidence that epoch) and, when it watches repaired models, a ``watch``;
``training.readiness.policy`` names it by import path, or by a short name once it has a line
in ``orchestrator.catalog.READINESS_POLICIES``. The policy's whole state is a plain dict
(``state_dict``) so that it is part of the resumable training state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from orchestrator import catalog
from orchestrator.errors import BadInput
from orchestrator.spec import ReadinessSpec

# (method, class) of a repaired model; (None, None) for a policy of the unrepaired model.
Track = tuple[str | None, int | None]
UNREPAIRED: Track = (None, None)


@dataclass(frozen=True)
class RepairedScores:
    """One repaired model, measured on data a policy may see (validation split, repair set)."""

    val_accuracy: float
    val_per_class_accuracy: Sequence[float | None]  # None for a class the split lacks
    rr: float | None  # % of the repair set's target negatives now correct
    br: float | None  # % of the repair set's positives now wrong


@dataclass(frozen=True)
class Evidence:
    """What one epoch offers a policy. ``repaired`` is None at epochs without online repair."""

    epoch: int
    val_loss: float
    val_acc: float
    repaired: Mapping[Track, RepairedScores] | None = None


def qual(alpha: float, acc_class: float | None, acc_total: float) -> float:
    """Qual(alpha, c) = alpha Acc_c + (1 - alpha) Acc_total (docs/science.md); NaN without
    Acc_c."""
    if acc_class is None:
        return math.nan
    return alpha * acc_class + (1 - alpha) * acc_total


@dataclass
class TrackState:
    """Patience bookkeeping of one track (plain values, so it serialises as a dict)."""

    best_epoch: int | None = None
    best: float = -math.inf
    reference: float = -math.inf  # the score at the last significant improvement
    wait: int = 0
    evaluations: int = 0
    fired_epoch: int | None = None
    # [epoch, score] of every epoch that had a score, after firing too (None: not finite),
    # so that a reader can replay each decision and see the curve it ignored.
    scores: list[list[Any]] = field(default_factory=list)

    def note(self, epoch: int, score: float) -> None:
        self.scores.append([epoch, score if math.isfinite(score) else None])

    def update(self, epoch: int, score: float, patience: int, min_delta: float) -> bool:
        """Record one evaluation; True when the track fires with it."""
        self.note(epoch, score)
        self.evaluations += 1
        finite = math.isfinite(score)
        if finite and score > self.best:
            self.best, self.best_epoch = score, epoch
        if finite and score > self.reference + min_delta:
            self.reference, self.wait = score, 0
        else:
            self.wait += 1
        if self.wait >= patience:
            self.fired_epoch = epoch
            return True
        return False


class ReadinessPolicy:
    """Base class: patience per track, firing, state; subclasses say what is scored."""

    needs_repair: ClassVar[bool] = False  # scores come from online repairs

    def __init__(self, spec: ReadinessSpec, tracks: Sequence[Track]) -> None:
        if not tracks:
            raise BadInput(f"training.readiness: policy {spec.policy!r} has nothing to watch")
        self.spec = spec
        self.tracks: dict[Track, TrackState] = {t: TrackState() for t in tracks}

    @classmethod
    def watch(
        cls, spec: ReadinessSpec, methods: Sequence[str], classes: Sequence[int]
    ) -> list[Track]:
        """The tracks this policy keeps for a run repairing ``classes`` with ``methods``."""
        return [UNREPAIRED]

    def score(self, evidence: Evidence, track: Track) -> float | None:
        """Higher is better; None when this epoch holds no evidence for ``track``."""
        raise NotImplementedError

    # --- decisions --------------------------------------------------------------------

    def observe(self, evidence: Evidence) -> list[Track]:
        """Feed one epoch; returns the tracks that fired with it."""
        fired = []
        for track, state in self.tracks.items():
            score = self.score(evidence, track)
            if score is None:
                continue
            if state.fired_epoch is not None:  # frozen: the value is only kept
                state.note(evidence.epoch, float(score))
                continue
            if state.update(evidence.epoch, float(score), self.spec.patience, self.spec.min_delta):
                fired.append(track)
        return fired

    @property
    def all_fired(self) -> bool:
        return all(s.fired_epoch is not None for s in self.tracks.values())

    @property
    def stops(self) -> bool:
        """Whether training must end now."""
        return self.spec.action == "stop" and self.all_fired

    def candidates(self) -> set[int]:
        """Epochs that may still become a ready epoch (their weights may be needed)."""
        return {s.best_epoch for s in self.tracks.values() if s.best_epoch is not None}

    def ready_epochs(self) -> set[int]:
        """Ready epochs of the tracks that fired: the checkpoints ``action: stop`` keeps."""
        return {
            s.best_epoch
            for s in self.tracks.values()
            if s.fired_epoch is not None and s.best_epoch is not None
        }

    # --- state and outcome ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"tracks": [[list(t), asdict(s)] for t, s in self.tracks.items()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = {tuple(t): s for t, s in state["tracks"]}
        if set(saved) != set(self.tracks):
            raise ValueError(
                f"the stored readiness state watches {sorted(saved, key=str)}, this run"
                f" {sorted(self.tracks, key=str)}"
            )
        names = {f.name for f in fields(TrackState)}
        # A state saved before a field existed (scores) starts it afresh.
        self.tracks = {
            t: TrackState(**{k: saved[t][k] for k in names if k in saved[t]}) for t in self.tracks
        }

    def outcome(self, *, stopped_training: bool) -> dict[str, Any]:
        """``readiness`` of ``train/summary.json`` (records.ReadinessOutcome)."""
        return {
            "policy": self.spec.policy,
            "action": self.spec.action,
            "alpha": self.spec.alpha,
            "stopped_training": stopped_training,
            "tracks": [
                {
                    "method": method,
                    "repair_class": cls,
                    "fired_epoch": s.fired_epoch,
                    "ready_epoch": s.best_epoch,
                    "best_score": s.best if s.best_epoch is not None else None,
                    "evaluations": s.evaluations,
                    "scores": [list(p) for p in s.scores],
                }
                for (method, cls), s in self.tracks.items()
            ],
        }


class ValLoss(ReadinessPolicy):
    """The baseline: the unrepaired validation loss, every epoch - what early stopping does
    (same patience and min_delta give the same epochs as ``train.EarlyStopping``)."""

    def score(self, evidence: Evidence, track: Track) -> float | None:
        return -evidence.val_loss


class RepairedValQual(ReadinessPolicy):
    """Qual(alpha, c) of the model repaired for class c, on the validation split, after every
    online repair; one track per watched (method, class)."""

    needs_repair = True

    @classmethod
    def watch(
        cls, spec: ReadinessSpec, methods: Sequence[str], classes: Sequence[int]
    ) -> list[Track]:
        # readiness.method names a method: it watches it under every acceptance rule
        # (arachne watches arachne and arachne+fixes-some).
        ms = [m for m in methods if spec.method in (None, m, m.split("+", 1)[0])]
        cs = [c for c in classes if spec.repair_class in (None, c)]
        return [(m, c) for m in ms for c in cs]

    def score(self, evidence: Evidence, track: Track) -> float | None:
        if evidence.repaired is None:
            return None
        scores = evidence.repaired[track]
        _method, cls = track
        assert cls is not None
        return qual(self.spec.alpha, scores.val_per_class_accuracy[cls], scores.val_accuracy)


def build(spec: ReadinessSpec, methods: Sequence[str], classes: Sequence[int]) -> ReadinessPolicy:
    """The policy ``spec`` names, watching what a run repairing ``classes`` produces."""
    cls = catalog.resolve(catalog.readiness_policy(spec.policy))
    if not (isinstance(cls, type) and issubclass(cls, ReadinessPolicy)):
        raise BadInput(
            f"training.readiness.policy: {spec.policy!r} is not a subclass of"
            " trainer_image.readiness.ReadinessPolicy"
        )
    return cls(spec, cls.watch(spec, methods, classes))
