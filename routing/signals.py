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


def tree_gain(tree: DraftTree, continuation: torch.Tensor, probs: torch.Tensor) -> float:
    """What `tree` would have had accepted along a verified continuation: the expected number of
    accepted draft tokens when the target's law at the j-th verified node is probs[j] (one row
    per verified node: the root, then each accepted node; `continuation[j]` is the token the
    target emitted there, the last one being the bonus). At the tree's node on the verified path,
    a step is accepted with the target's mass on its children's tokens (the match rule); the walk
    follows the verified token and stops where the tree leaves the verified path (the target's
    law beyond it is unknown). Greedy (one-hot rows): the number of verified tokens the tree
    holds as a path from its root."""
    node, reach, gain = 0, 1.0, 0.0
    for j in range(int(continuation.numel())):
        kids = (tree.parents == node).nonzero().flatten()
        if kids.numel() == 0:
            break
        reach *= float(probs[j, tree.tokens[kids].unique()].sum())
        gain += reach
        follow = kids[tree.tokens[kids] == continuation[j]]
        if follow.numel() == 0:
            break
        node = int(follow[0])
    return gain
