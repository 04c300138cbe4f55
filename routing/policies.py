"""Routing policies: which drafter's tree to verify (per step) or which drafter serves a turn."""
from __future__ import annotations

from typing import Mapping

from trees import DraftTree

from .signals import tree_confidence, tree_entropy


def _best(values: Mapping[str, float], highest: bool) -> str:
    if not values:
        raise ValueError("routing needs at least one candidate tree")
    # ties go to the first drafter in the given order, so decisions are deterministic
    order = list(values)
    return max(order, key=lambda k: (values[k] if highest else -values[k], -order.index(k)))


class ConfidenceRouter:
    """Per decode step: verify the tree with the highest mean exp(score) over its kept nodes."""

    def scores(self, trees: Mapping[str, DraftTree]) -> dict[str, float]:
        return {name: tree_confidence(t) for name, t in trees.items()}

    def choose(self, trees: Mapping[str, DraftTree]) -> str:
        return _best(self.scores(trees), highest=True)


class EntropyRouter:
    """Per prompt turn: the drafter whose probe tree has the lowest mean draft entropy over its
    kept nodes drafts the whole turn."""

    def scores(self, trees: Mapping[str, DraftTree]) -> dict[str, float]:
        return {name: tree_entropy(t) for name, t in trees.items()}

    def choose(self, trees: Mapping[str, DraftTree]) -> str:
        return _best(self.scores(trees), highest=False)
