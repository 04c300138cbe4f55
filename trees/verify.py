"""Verifying a draft tree against the target's logits at every node (DESIGN.md "Verify").

Greedy is one vectorised pass. Sampling walks the accepted path (at most depth + 1 nodes) and
processes only the target rows it visits: processing all N rows of a 49k vocabulary up front
costs more than the walk. At every visited node the walk emits one token with the law of the
target's processed distribution p:
  - proposal rows at the node (sampled children), in row order: accept row j's token x with
    probability min(1, p(x) / q_j(x)); on rejection p <- normalise(max(0, p - q_j));
  - no row accepted (or no rows: the match rule): draw y ~ p.
If the emitted token has a child node (the accepted row's child, else the first child with that
token) the walk descends into it; otherwise the token is the bonus and the walk stops.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import process_logits, sample
from .spec import SamplingSpec
from .tree import DraftTree


@dataclass
class VerifyResult:
    path: torch.Tensor  # int64 node indices from the root (path[0] == 0) to the last accepted node
    tokens: torch.Tensor  # int64 tokens of `path` (tokens[0] is the root token)
    bonus: int  # the extra token emitted at the last accepted node (next step's root)

    @property
    def accepted(self) -> int:
        """Number of accepted draft tokens (root and bonus not counted)."""
        return int(self.path.numel()) - 1


def verify(
    tree: DraftTree,
    target_logits: torch.Tensor,
    sampling: SamplingSpec,
    generator: torch.Generator | None = None,
) -> VerifyResult:
    """target_logits [N, V]: the target's raw logits at every node (row i = next-token logits
    after the path to node i). Greedy, match rule (no proposal table) or recursive rejection
    sampling (proposal table present) per DESIGN.md."""
    if target_logits.dim() != 2 or target_logits.shape[0] != len(tree):
        raise ValueError(
            f"target_logits must have shape [{len(tree)}, V] for a tree of {len(tree)} nodes, "
            f"got {tuple(target_logits.shape)}"
        )
    if sampling.greedy:
        return follow_draws(tree, target_logits.argmax(-1))
    return walk_sampled(tree, target_logits, sampling, generator)


def first_sibling_mask(tree: DraftTree) -> torch.Tensor:
    """bool [N]: node is the lowest-index child of its parent with its token (duplicate siblings
    are legal; the first one stands for the token in the match rule)."""
    base = int(tree.tokens.max()) + 1
    keys = tree.parents.clamp(min=0) * base + tree.tokens
    _, inverse = torch.unique(keys, return_inverse=True)
    arange = torch.arange(len(tree))
    first = torch.full_like(arange, len(tree)).scatter_reduce(0, inverse, arange, reduce="amin")
    return first[inverse] == arange


def follow_draws(tree: DraftTree, draws: torch.Tensor) -> VerifyResult:
    """Accepted path when node i emits draws[i]: a node is accepted iff every node on its root
    path is the (first) child carrying its parent's draw. Pointer jumping: log2(depth) steps."""
    parents = tree.parents.clamp(min=0)  # the root points at itself and always matches
    accepted = (tree.tokens == draws[parents]) & first_sibling_mask(tree)
    accepted[0] = True
    jump = parents
    for _ in range(int(tree.depths.max()).bit_length()):
        accepted = accepted & accepted[jump]
        jump = jump[jump]
    path = accepted.nonzero().flatten()  # one node per depth, in depth order
    return VerifyResult(path=path, tokens=tree.tokens[path], bonus=int(draws[path[-1]]))


def rows_by_parent(tree: DraftTree) -> tuple[list[list[int]], list[int]]:
    """Proposal row indices per node (in row order) and the child token of every row."""
    rows: list[list[int]] = [[] for _ in range(len(tree))]
    if tree.proposals is None:
        return rows, []
    for j, parent in enumerate(tree.proposals.parent.tolist()):
        rows[parent].append(j)
    return rows, tree.tokens[tree.proposals.child].tolist()


def child_with_token(tree: DraftTree, node: int, token: int) -> int | None:
    hit = ((tree.parents == node) & (tree.tokens == token)).nonzero()
    return int(hit[0]) if hit.numel() else None


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalise(max(0, p - q)): the target law left after rejecting a draw from q. If nothing
    is left (p == q up to rounding: the rejection had probability 0) p is kept."""
    r = (p - q).clamp_(min=0)
    total = r.sum()
    return r / total if total > 0 else p


def walk_sampled(
    tree: DraftTree, target_logits: torch.Tensor, sampling: SamplingSpec, generator: torch.Generator | None
) -> VerifyResult:
    rows, row_tokens = rows_by_parent(tree)
    props = tree.proposals
    uniforms = torch.rand(len(row_tokens), dtype=torch.float64, generator=generator).tolist()
    path, node = [0], 0
    while True:
        p = process_logits(target_logits[node], sampling)
        token, child = None, None
        for j in rows[node]:
            x = row_tokens[j]
            q = props.q[j]
            if uniforms[j] * float(q[x]) < float(p[x]):  # accept with probability min(1, p(x)/q(x))
                token, child = x, int(props.child[j])
                break
            p = residual(p, q)
        if token is None:
            token = int(sample(p, generator))
            child = child_with_token(tree, node, token)
        if child is None:
            idx = torch.tensor(path, dtype=torch.long)
            return VerifyResult(path=idx, tokens=tree.tokens[idx], bonus=token)
        path.append(child)
        node = child
