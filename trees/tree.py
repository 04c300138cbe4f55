"""The draft tree type: one flat, topologically ordered node table.

Node 0 is the root (the last accepted token); every other node's parent has a smaller index,
so a single forward pass over the node order visits parents before children. Per node we keep
the token, parent, depth, cumulative draft log-probability (score) and a bitmask of the
drafters that proposed it. Sampled trees also carry a `Proposals` table: the ordered draws made
at each node, each with the exact distribution q it was drawn from, which recursive rejection
sampling needs (duplicates included, see docs/design.md "Verification rules").
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .checks import check_proposal_rows


@dataclass
class Proposals:
    """Ordered sampled draws. Row j: a draw made at node `parent[j]` that maps to tree node
    `child[j]` (several rows may map to one child: duplicate draws), drawn from `q[j]`
    (a probability vector over the vocabulary, already renormalised for draws without
    replacement). Rows of one parent are verified in row order."""

    parent: torch.Tensor  # int64 [K]
    child: torch.Tensor  # int64 [K]
    q: torch.Tensor  # float [K, V]

    def __len__(self) -> int:
        return int(self.parent.numel())


@dataclass
class DraftTree:
    tokens: torch.Tensor  # int64 [N]
    parents: torch.Tensor  # int64 [N]; parents[0] == -1
    scores: torch.Tensor  # float32 [N]; cumulative draft log-prob, scores[0] == 0
    proposers: torch.Tensor  # int64 [N]; bit i set <=> drafter_names[i] proposed the node
    drafter_names: tuple[str, ...] = ("draft",)
    proposals: Proposals | None = None  # present <=> children are verified by rejection sampling
    depths: torch.Tensor = field(default=None)  # int64 [N]; derived from parents when omitted
    # float [N]: entropy (nats) of the drafter's next-token distribution at each node it
    # expanded, nan elsewhere; read by entropy routing. None when not recorded (e.g. merged).
    entropies: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.depths is None:
            self.depths = depths_from_parents(self.parents)

    # --- construction helpers -------------------------------------------------------------
    @classmethod
    def root_only(cls, token: int, drafter_names: tuple[str, ...] = ("draft",)) -> "DraftTree":
        return cls(
            tokens=torch.tensor([token], dtype=torch.long),
            parents=torch.tensor([-1], dtype=torch.long),
            scores=torch.zeros(1),
            proposers=torch.tensor([(1 << len(drafter_names)) - 1], dtype=torch.long),
            drafter_names=drafter_names,
        )

    @classmethod
    def from_lists(
        cls,
        tokens: list[int],
        parents: list[int],
        scores: list[float] | None = None,
        drafter_names: tuple[str, ...] = ("draft",),
        proposers: list[int] | None = None,
    ) -> "DraftTree":
        n = len(tokens)
        return cls(
            tokens=torch.tensor(tokens, dtype=torch.long),
            parents=torch.tensor(parents, dtype=torch.long),
            scores=torch.tensor(scores if scores is not None else [0.0] * n, dtype=torch.float32),
            proposers=torch.tensor(
                proposers if proposers is not None else [1] * n, dtype=torch.long
            ),
            drafter_names=drafter_names,
        )

    # --- queries ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.tokens.numel())

    @property
    def root_token(self) -> int:
        return int(self.tokens[0])

    def proposers_of(self, node: int) -> set[str]:
        bits = int(self.proposers[node])
        return {name for i, name in enumerate(self.drafter_names) if bits >> i & 1}

    def children(self, node: int) -> list[int]:
        return (self.parents == node).nonzero().flatten().tolist()

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root down to `node` (inclusive)."""
        path = [node]
        while path[-1] != 0:
            if len(path) > len(self):
                raise ValueError(f"draft tree has a parent cycle above node {node}")
            path.append(int(self.parents[path[-1]]))
        return path[::-1]

    def validate(self, vocab_size: int | None = None, proposal_values: bool = True) -> "DraftTree":
        """Raise ValueError naming the first structural problem; return self when valid.
        proposal_values=False skips the O(rows x V) checks of the proposal distributions."""
        n = len(self)
        if n == 0:
            raise ValueError("draft tree is empty: it needs at least the root node")
        for name in ("parents", "scores", "proposers", "depths"):
            t = getattr(self, name)
            if t.shape != (n,):
                raise ValueError(f"draft tree field {name!r} has shape {tuple(t.shape)}, expected ({n},)")
        if int(self.parents[0]) != -1:
            raise ValueError("draft tree node 0 must be the root (parent -1)")
        if n > 1:
            rest = self.parents[1:]
            if (rest == -1).any():
                raise ValueError("draft tree has several roots (more than one node with parent -1)")
            idx = torch.arange(1, n)
            if ((rest < 0) | (rest >= idx)).any():
                bad = int(idx[(rest < 0) | (rest >= idx)][0])
                raise ValueError(
                    f"draft tree node {bad} has parent {int(self.parents[bad])}: parents must precede "
                    "children (a forward parent or a cycle)"
                )
            if not torch.equal(self.depths, depths_from_parents(self.parents)):
                raise ValueError("draft tree depths do not equal parent depth + 1")
        if (self.tokens < 0).any() or (vocab_size is not None and (self.tokens >= vocab_size).any()):
            raise ValueError(f"draft tree has token ids outside the vocabulary [0, {vocab_size})")
        if not torch.isfinite(self.scores).all():
            raise ValueError("draft tree has non-finite scores")
        if len(set(self.drafter_names)) != len(self.drafter_names):
            raise ValueError(f"draft tree drafter_names must be distinct, got {self.drafter_names}")
        if ((self.proposers < 0) | (self.proposers >= 1 << len(self.drafter_names))).any():
            raise ValueError("draft tree proposers has bits beyond its drafter_names")
        if self.proposals is not None:
            check_proposal_rows(self.parents, self.tokens, self.proposals, vocab_size, proposal_values)
        return self

    def select(self, keep: torch.Tensor) -> "DraftTree":
        """The sub-tree on the node set `keep` (bool [N] or indices; must hold the root and be
        ancestor-closed), renumbered in the original order. The proposal table is dropped: a
        cut that looked at the drawn values must be verified by the match rule (docs/design.md "Verification rules")."""
        mask = torch.zeros(len(self), dtype=torch.bool)
        mask[keep] = True
        check_ancestor_closed(self.parents, mask)
        idx = mask.nonzero().flatten()
        new_index = torch.cumsum(mask, 0) - 1
        parents = self.parents[idx]
        parents = torch.where(parents >= 0, new_index[parents.clamp(min=0)], parents)
        return DraftTree(
            tokens=self.tokens[idx], parents=parents, scores=self.scores[idx],
            proposers=self.proposers[idx], drafter_names=self.drafter_names, depths=self.depths[idx],
            entropies=self.entropies[idx] if self.entropies is not None else None,
        )

    def to_networkx(self):
        """A networkx DiGraph (parent -> child) with token, depth, score and proposers per node."""
        import networkx as nx

        g = nx.DiGraph()
        for i in range(len(self)):
            g.add_node(
                i,
                token=int(self.tokens[i]),
                depth=int(self.depths[i]),
                score=float(self.scores[i]),
                proposers=sorted(self.proposers_of(i)),
            )
            if i:
                g.add_edge(int(self.parents[i]), i)
        return g


def depths_from_parents(parents: torch.Tensor) -> torch.Tensor:
    """Depth per node; assumes parents precede children (validated separately)."""
    par = parents.tolist()
    depths = [0] * len(par)
    for i in range(1, len(par)):  # O(N) list walk; N is a tree budget (<= a few hundred)
        p = par[i]
        depths[i] = depths[p] + 1 if 0 <= p < i else -1
    return torch.tensor(depths, dtype=torch.long)


def check_ancestor_closed(parents: torch.Tensor, keep: torch.Tensor) -> None:
    """Raise ValueError unless the node set `keep` (bool [N]) holds the root and, with every
    node, its parent."""
    if not bool(keep[0]):
        raise ValueError("node set is not ancestor-closed: the root (node 0) is missing")
    open_nodes = keep[1:] & ~keep[parents[1:]]
    if open_nodes.any():
        node = int(open_nodes.nonzero()[0]) + 1
        raise ValueError(
            f"node set is not ancestor-closed: node {node} is kept without its parent {int(parents[node])}"
        )


def path_min_scores(tree: DraftTree) -> torch.Tensor:
    """Each node's score capped by its ancestors' (min along the root path): non-increasing down
    every path, so ranking by it keeps a parent ahead of its children even for arbitrary scores."""
    eff = tree.scores.clone()
    for d in range(1, int(tree.depths.max()) + 1):
        level = (tree.depths == d).nonzero().flatten()
        eff[level] = torch.minimum(eff[level], eff[tree.parents[level]])
    return eff


def top_scoring_closed(tree: DraftTree, budget: int) -> torch.Tensor:
    """bool [N]: the root and the best `budget` draft nodes by score. Ties go to the smaller
    index (a parent precedes its children), so the set is ancestor-closed; checked anyway."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    eff = path_min_scores(tree)[1:]
    order = torch.sort(eff, descending=True, stable=True).indices[:budget] + 1
    keep = torch.zeros(len(tree), dtype=torch.bool)
    keep[0] = True
    keep[order] = True
    check_ancestor_closed(tree.parents, keep)
    return keep
