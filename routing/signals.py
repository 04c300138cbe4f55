"""Routing signals computed from draft trees (usable without the engine)."""
from __future__ import annotations

import math

import torch

from trees import DraftTree


def tree_confidence(tree: DraftTree) -> float:
    """Mean exp(cumulative draft log-probability) over the kept draft nodes (root excluded):
    the mean probability the drafter gives its own root-to-node paths. A root-only tree has
    confidence 0."""
    if len(tree) <= 1:
        return 0.0
    return float(tree.scores[1:].exp().mean())


def tree_entropy(tree: DraftTree) -> float:
    """Mean entropy (nats) of the drafter's next-token distribution over the kept nodes it
    expanded. Trees built without entropies (or with no expanded node) give +inf, so they never
    win an entropy routing decision by accident."""
    ent = getattr(tree, "entropies", None)
    if ent is None:
        return math.inf
    known = ent[torch.isfinite(ent)]
    return float(known.mean()) if known.numel() else math.inf
