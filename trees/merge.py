"""Merging drafters' trees as a trie keyed on the full token path from the shared root."""
from __future__ import annotations

from typing import Literal, Sequence

import torch

from .tree import DraftTree, Proposals, top_scoring_closed


def merge_trees(
    trees: Sequence[DraftTree],
    mode: Literal["sum", "equal"] = "sum",
    budget: int | None = None,
) -> DraftTree:
    """Trie union under the shared root keyed on the full token path. drafter_names of the
    result = concatenation of the inputs' names (must be distinct); proposers are remapped.
    `equal`: rerank the union down to `budget` draft nodes (ancestor-closed); a cut that looks at
    scores drops the proposal table so verification falls back to the match rule.
    `budget` is used by `equal` only (in `sum` every drafter keeps its own budget)."""
    if mode not in ("sum", "equal"):
        raise ValueError(f"merge mode must be 'sum' or 'equal', got {mode!r}")
    if mode == "equal" and budget is None:
        raise ValueError("merge mode 'equal' needs a budget (draft nodes, root excluded)")
    check_mergeable(trees)
    merged = trie_union(trees)
    return cut_to_budget(merged, budget) if mode == "equal" else merged


def check_mergeable(trees: Sequence[DraftTree]) -> None:
    if len(trees) == 0:
        raise ValueError("merge_trees needs at least one tree")
    for t in trees:
        t.validate(proposal_values=False)  # structure only: q rows are checked where they are made
    roots = {t.root_token for t in trees}
    if len(roots) != 1:
        raise ValueError(f"trees to merge must share the root token, got roots {sorted(roots)}")
    names = [n for t in trees for n in t.drafter_names]
    if len(set(names)) != len(names):
        raise ValueError(f"trees to merge must have distinct drafter names, got {names}")
    if len(names) > 62:
        raise ValueError("at most 62 drafters can be merged (proposers is an int64 bitmask)")
    widths = {t.proposals.q.shape[1] for t in trees if t.proposals is not None and len(t.proposals)}
    if len(widths) > 1:
        raise ValueError(f"proposal tables disagree on the vocabulary size: {sorted(widths)}")


def trie_ids(tokens: torch.Tensor, parents: torch.Tensor, depths: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Merged node id of every input node: nodes with the same full token path share an id.
    Level by level, a node's key is (merged id of its parent, token); ids are assigned in depth
    order, so parents precede children in the merged table."""
    ids = torch.zeros_like(tokens)
    base = int(tokens.max()) + 1
    next_id = 1  # every root maps to 0
    for d in range(1, int(depths.max()) + 1):
        level = (depths == d).nonzero().flatten()
        keys = ids[parents[level]] * base + tokens[level]
        uniq, inverse = torch.unique(keys, return_inverse=True)
        ids[level] = next_id + inverse
        next_id += uniq.numel()
    return ids, next_id


def union_proposers(proposers: torch.Tensor, ids: torch.Tensor, n: int, n_bits: int) -> torch.Tensor:
    """Bitwise OR of the proposer masks that land on each merged node."""
    shifts = torch.arange(n_bits)
    bits = (proposers[:, None] >> shifts) & 1
    merged = torch.zeros(n, n_bits, dtype=torch.long).scatter_reduce(
        0, ids[:, None].expand_as(bits), bits, reduce="amax"
    )
    return (merged << shifts).sum(1)


def trie_union(trees: Sequence[DraftTree]) -> DraftTree:
    sizes = torch.tensor([len(t) for t in trees])
    node_offsets = torch.cumsum(sizes, 0) - sizes
    bit_offsets = [sum(len(t.drafter_names) for t in trees[:i]) for i in range(len(trees))]
    tokens = torch.cat([t.tokens for t in trees])
    depths = torch.cat([t.depths for t in trees])
    parents = torch.cat([torch.where(t.parents >= 0, t.parents + o, -1) for t, o in zip(trees, node_offsets)])
    proposers = torch.cat([t.proposers << b for t, b in zip(trees, bit_offsets)])
    scores = torch.cat([t.scores for t in trees])

    ids, n = trie_ids(tokens, parents, depths)
    rep = torch.full((n,), -1, dtype=torch.long).scatter_reduce(
        0, ids, torch.arange(ids.numel()), reduce="amin", include_self=False
    )  # one input node standing for each merged node
    merged_parents = torch.where(parents[rep] >= 0, ids[parents[rep].clamp(min=0)], -1)
    return DraftTree(
        tokens=tokens[rep],
        parents=merged_parents,
        scores=torch.full((n,), float("-inf")).scatter_reduce(0, ids, scores, reduce="amax"),
        proposers=union_proposers(proposers, ids, n, bit_offsets[-1] + len(trees[-1].drafter_names)),
        drafter_names=tuple(name for t in trees for name in t.drafter_names),
        proposals=merge_proposals(trees, ids, node_offsets),
        depths=depths[rep],
    )


def merge_proposals(trees: Sequence[DraftTree], ids: torch.Tensor, node_offsets: torch.Tensor) -> Proposals | None:
    """Concatenate the proposal tables in input order with node indices remapped; duplicate
    rows keep their own q (they carry residual updates that losslessness needs)."""
    tables = [(t.proposals, o) for t, o in zip(trees, node_offsets) if t.proposals is not None and len(t.proposals)]
    if not tables:
        return None
    return Proposals(
        parent=torch.cat([ids[p.parent + o] for p, o in tables]),
        child=torch.cat([ids[p.child + o] for p, o in tables]),
        q=torch.cat([p.q for p, _ in tables]),
    )


def cut_to_budget(tree: DraftTree, budget: int) -> DraftTree:
    """Keep the best `budget` draft nodes by score (ancestor-closed, root always kept). A tree
    already within budget is returned unchanged (proposals kept: nothing looked at the draws)."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if len(tree) - 1 <= budget:
        return tree
    return tree.select(top_scoring_closed(tree, budget))
