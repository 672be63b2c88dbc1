"""A readiness policy defined outside the package, by import path: adding a policy is one
class (a name and a score)."""

from __future__ import annotations

from trainer_image.readiness import Evidence, ReadinessPolicy, Track


class ValAccuracy(ReadinessPolicy):
    """The unrepaired validation accuracy, every epoch."""

    def score(self, evidence: Evidence, track: Track) -> float | None:
        return evidence.val_acc


NOT_A_POLICY = object()


class RepairedRR(ReadinessPolicy):
    """The repair rate of every online repair (it needs training.repair_every)."""

    needs_repair = True

    @classmethod
    def watch(cls, spec: object, methods: list[str], classes: list[int]) -> list[Track]:
        return [(m, c) for m in methods for c in classes]

    def score(self, evidence: Evidence, track: Track) -> float | None:
        if evidence.repaired is None:
            return None
        return evidence.repaired[track].rr
