"""Routing policies: which drafter's tree to verify (per step) or which drafter serves a turn."""
from __future__ import annotations

from typing import Mapping

from trees import DraftTree

from .calibration import Calibration
from .signals import tree_confidence, tree_entropy


def _best(values: Mapping[str, float], highest: bool) -> str:
    if not values:
        raise ValueError("routing needs at least one candidate tree")
    # ties go to the first drafter in the given order, so decisions are deterministic
    order = list(values)
    return max(order, key=lambda k: (values[k] if highest else -values[k], -order.index(k)))


class SignalRouter:
    """Choose by a signal of each drafter's tree: raw, or calibrated (routing.calibration: the
    gain each drafter's signal predicts, learnt from verified outcomes) when given a Calibration."""

    signal = ""
    raw_highest = True  # raw signal: does a larger value win?

    def __init__(self, calibration: Calibration | None = None):
        self.calibration = calibration

    def raw(self, tree: DraftTree) -> float:
        raise NotImplementedError

    def scores(self, trees: Mapping[str, DraftTree], domain: Mapping[str, float] | None = None) -> dict[str, float]:
        """Raw signal per drafter, or its calibrated expected gain given the turn's domain
        evidence per drafter (routing.calibration.domain_evidence; absent: none)."""
        if self.calibration is None:
            return {name: self.raw(t) for name, t in trees.items()}
        domain = domain or {}
        return {name: self.calibration.predict(self.signal, name, t, domain.get(name, 0.0)) for name, t in trees.items()}

    def choose(self, trees: Mapping[str, DraftTree], domain: Mapping[str, float] | None = None) -> str:
        return _best(self.scores(trees, domain), highest=self.raw_highest or self.calibration is not None)


class ConfidenceRouter(SignalRouter):
    """Per decode step: verify the tree with the highest mean exp(score) over its kept nodes
    (calibrated: the highest expected gain predicted from it)."""

    signal = "confidence"

    def raw(self, tree: DraftTree) -> float:
        return tree_confidence(tree)


class EntropyRouter(SignalRouter):
    """Per prompt turn: the drafter whose probe tree has the lowest mean draft entropy over its
    kept nodes drafts the whole turn (calibrated: the highest expected gain predicted from it)."""

    signal = "entropy"
    raw_highest = False

    def raw(self, tree: DraftTree) -> float:
        return tree_entropy(tree)
