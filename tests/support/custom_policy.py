"""A readiness policy defined outside the package, by import path: adding a policy is one
class (a name and a score)."""

from __future__ import annotations

from trainer_image.readiness import Evidence, ReadinessPolicy, Track


class ValAccuracy(ReadinessPolicy):
    """The unrepaired validation accuracy, every epoch."""

    def score(self, evidence: Evidence, track: Track) -> float | None:
        return evidence.val_acc


NOT_A_POLICY = object()
