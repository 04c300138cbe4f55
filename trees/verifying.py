"""Verifying draft trees against the target's logits at every node (docs/design.md "Verification rules").

Greedy is one vectorised pass. Sampling walks the accepted paths (at most depth + 1 steps) and
processes only the target rows it visits: processing all N rows of a 49k vocabulary up front
costs more than the walk. At every visited node the walk emits one token with the law of the
target's processed distribution p:
  - proposal rows at the node (sampled children), in row order: accept row j's token x with
    probability min(1, p(x) / q_j(x)); on rejection p <- normalise(max(0, p - q_j));
  - no row accepted (or no rows: the match rule): draw y ~ p.
If the emitted token has a child node (the accepted row's child, else the first child with that
token) the walk descends into it; otherwise the token is the bonus and the walk stops.

Everything runs on a `TreeBatch` (several independent trees in one node table, each walked
independently, in lockstep); `verify` is the batch of one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .checks import check_proposal_rows, debug_checks, require_finite_logits, require_finite_rows
from .sampling import process_logits, sample
from .spec import SamplingSpec
from .tree import DraftTree, Proposals


TARGET_FORWARD = "the target's verify forward (its logits at the draft tree's nodes)"


@dataclass
class VerifyResult:
    path: torch.Tensor  # int64 node indices from the root (path[0] == 0) to the last accepted node
    tokens: torch.Tensor  # int64 tokens of `path` (tokens[0] is the root token)
    bonus: int  # the extra token emitted at the last accepted node (next step's root)

    @property
    def accepted(self) -> int:
        """Number of accepted draft tokens (root and bonus not counted)."""
        return int(self.path.numel()) - 1


@dataclass
class TreeBatch:
    """Independent trees in one flat node table: tree b owns nodes starts[b]:starts[b+1];
    parents and proposal rows use global node indices; roots have parent -1."""

    tokens: torch.Tensor  # int64 [T]
    parents: torch.Tensor  # int64 [T]
    depths: torch.Tensor  # int64 [T]
    starts: torch.Tensor  # int64 [B + 1]
    proposals: Proposals | None = None

    @classmethod
    def from_trees(cls, trees: Sequence[DraftTree]) -> "TreeBatch":
        sizes = torch.tensor([len(t) for t in trees])
        starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, 0)])
        offsets = starts[:-1].repeat_interleave(sizes)
        parents = torch.cat([t.parents for t in trees])
        tables = [(t.proposals, int(o)) for t, o in zip(trees, starts) if t.proposals is not None and len(t.proposals)]
        proposals = None
        if tables:
            proposals = Proposals(
                parent=torch.cat([p.parent + o for p, o in tables]),
                child=torch.cat([p.child + o for p, o in tables]),
                q=torch.cat([p.q for p, _ in tables]),
            )
        return cls(
            tokens=torch.cat([t.tokens for t in trees]),
            parents=torch.where(parents >= 0, parents + offsets, -1),
            depths=torch.cat([t.depths for t in trees]),
            starts=starts,
            proposals=proposals,
        )

    @property
    def size(self) -> int:
        return self.starts.numel() - 1

    @property
    def tree_of(self) -> torch.Tensor:
        return torch.arange(self.size).repeat_interleave(self.starts.diff())


@dataclass
class BatchVerifyResult:
    paths: torch.Tensor  # int64 [B, L]: local node indices of each accepted path, -1 padded
    tokens: torch.Tensor  # int64 [B, L]: their tokens, -1 padded
    lengths: torch.Tensor  # int64 [B]: nodes on each path (root included)
    bonus: torch.Tensor  # int64 [B]

    def __getitem__(self, b: int) -> VerifyResult:
        n = int(self.lengths[b])
        return VerifyResult(path=self.paths[b, :n].clone(), tokens=self.tokens[b, :n].clone(), bonus=int(self.bonus[b]))


def verify(
    tree: DraftTree,
    target_logits: torch.Tensor,
    sampling: SamplingSpec,
    generator: torch.Generator | None = None,
) -> VerifyResult:
    """target_logits [N, V]: the target's raw logits at every node (row i = next-token logits
    after the path to node i). Greedy, match rule (no proposal table) or recursive rejection
    sampling (proposal table present) per docs/design.md "Verification rules"."""
    if sampling.greedy and len(tree) <= GREEDY_WALK_NODES:
        return _verify_greedy_walk(tree, target_logits)
    if len(tree) == 1 and (tree.proposals is None or len(tree.proposals) == 0):
        return _verify_sampled_root(tree, target_logits, sampling, generator)
    return verify_batch(TreeBatch.from_trees([tree]), target_logits, sampling, generator)[0]


# up to this many nodes a greedy tree is walked on Python lists: the batch machinery's ~40 small
# tensor ops cost ~0.6 ms a step (~4% of a drafted step on 4-bit weights); a walk is O(nodes)
GREEDY_WALK_NODES = 256


def _verify_greedy_walk(tree: DraftTree, target_logits: torch.Tensor) -> VerifyResult:
    """verify_batch's greedy result for one tree (tests/test_trees_verify.py): the same checks;
    from the root, descend into the first child (lowest index) carrying the node's argmax while
    there is one; that argmax at the last node is the bonus. A proposal table is not read at
    T = 0, as in verify_batch, but its pointers are checked."""
    vocab = check_logits_and_tokens(tree.tokens, target_logits)
    parents, depths = tree.parents.tolist(), tree.depths.tolist()
    n = len(parents)
    if len(depths) != n or tree.tokens.numel() != n:
        raise ValueError(f"tree parents / depths must have shape ({n},) like its tokens")
    bad = next((i for i in range(n) if (parents[i] != -1 if i == 0 else not 0 <= parents[i] < i)), None)
    if bad is not None:
        raise ValueError(f"malformed draft tree: node {bad} has parent {parents[bad]} "
                         "(node 0 must be the only root, and every parent must precede its child)")
    if depths[0] != 0 or any(depths[i] != depths[parents[i]] + 1 for i in range(1, n)):
        raise ValueError("malformed draft tree: depths do not equal parent depth + 1")
    if tree.proposals is not None and len(tree.proposals):
        check_proposal_rows(tree.parents, tree.tokens, tree.proposals, vocab, values=debug_checks())
    draws = target_logits.argmax(-1)
    # a NaN row's argmax points at the NaN, so the row max costs one gather, not a pass
    require_finite_rows(target_logits.gather(1, draws[:, None]).squeeze(1), TARGET_FORWARD)
    draws, tokens = draws.tolist(), tree.tokens.tolist()
    first_child: dict[tuple[int, int], int] = {}
    for i in range(n - 1, 0, -1):  # downwards: the lowest index of duplicate siblings is kept
        first_child[parents[i], tokens[i]] = i
    path = [0]
    while (child := first_child.get((path[-1], draws[path[-1]]))) is not None:
        path.append(child)
    return VerifyResult(path=torch.tensor(path), tokens=tree.tokens[path].long().cpu(), bonus=draws[path[-1]])


def _verify_sampled_root(tree: DraftTree, target_logits: torch.Tensor, sampling: SamplingSpec,
                         generator: torch.Generator | None) -> VerifyResult:
    """A sampled plain step (the root alone): one draw from its processed row, without the tree
    machinery (~1.3 ms of a sampled step of plain decoding on 4-bit weights; a greedy one is
    `_verify_greedy_walk`'s). The same checks, and the same result and generator use as
    verify_batch's for this one case: the same `sample` call on the same law
    (tests/test_trees_verify.py)."""
    check_logits_and_tokens(tree.tokens, target_logits)
    if int(tree.parents[0]) != -1 or int(tree.depths[0]) != 0:
        raise ValueError("malformed draft tree: node 0 must be the only root, at depth 0")
    require_finite_logits(target_logits, TARGET_FORWARD)
    draw = sample(process_logits(target_logits, sampling), generator)[0]
    return VerifyResult(path=torch.zeros(1, dtype=torch.long), tokens=tree.tokens[:1].long().cpu().clone(), bonus=int(draw))


def verify_batch(
    batch: TreeBatch,
    target_logits: torch.Tensor,
    sampling: SamplingSpec,
    generator: torch.Generator | None = None,
) -> BatchVerifyResult:
    """`verify` for every tree of the batch at once; target_logits [T, V] row per node."""
    check_inputs(batch, target_logits)
    if sampling.greedy:
        draws = target_logits.argmax(-1)
        # a NaN row's argmax points at the NaN, so the row max costs one gather, not a pass
        require_finite_rows(target_logits.gather(1, draws[:, None]).squeeze(1), TARGET_FORWARD)
        draws = draws.to(batch.tokens.device)  # the tree's device may differ
        end = follow_draws(batch, draws)
        return paths_to(batch, end, draws[end])
    require_finite_logits(target_logits, TARGET_FORWARD)
    end, bonus = walk_sampled(batch, target_logits, sampling, generator)
    return paths_to(batch, end, bonus)


def check_inputs(batch: TreeBatch, target_logits: torch.Tensor) -> None:
    """Shapes, the node table's structure and the proposal rows' pointers, in O(T + K); the
    O(K x V) proposal value checks only in debug mode (trees.debug_checks). A malformed input
    would make verification silently lossy rather than crash."""
    vocab = check_logits_and_tokens(batch.tokens, target_logits)
    check_structure(batch)
    if batch.proposals is not None and len(batch.proposals):
        check_proposal_rows(batch.parents, batch.tokens, batch.proposals, vocab, values=debug_checks())


def check_logits_and_tokens(tokens: torch.Tensor, target_logits: torch.Tensor) -> int:
    """One logits row per node and every token inside the vocabulary; returns the vocabulary size."""
    t = tokens.numel()
    if target_logits.dim() != 2 or target_logits.shape[0] != t:
        raise ValueError(
            f"target_logits must have shape [{t}, V] (one row per tree node), got {tuple(target_logits.shape)}"
        )
    vocab = target_logits.shape[1]
    if t and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"tree has token ids outside the target vocabulary [0, {vocab})")
    return vocab


def check_structure(batch: TreeBatch) -> None:
    """Each tree's first node is its root (parent -1); every other node's parent lies in the same
    tree before it; depth = parent depth + 1."""
    t = batch.tokens.numel()
    if batch.parents.shape != (t,) or batch.depths.shape != (t,):
        raise ValueError(f"tree parents / depths must have shape ({t},) like its tokens")
    starts = batch.starts
    if starts.numel() < 2 or int(starts[0]) != 0 or int(starts[-1]) != t or (starts.diff() < 1).any():
        raise ValueError("tree batch starts must rise from 0 to the node count, one non-empty tree each")
    index = torch.arange(t)
    is_root = torch.zeros(t, dtype=torch.bool)
    is_root[starts[:-1]] = True
    own_start = starts[:-1][batch.tree_of]
    bad = torch.where(is_root, batch.parents != -1, (batch.parents < own_start) | (batch.parents >= index))
    if bad.any():
        node = int(bad.nonzero()[0])
        raise ValueError(
            f"malformed draft tree: node {node - int(own_start[node])} has parent "
            f"{int(batch.parents[node]) - int(own_start[node]) if not is_root[node] else int(batch.parents[node])} "
            "(node 0 must be the only root, and every parent must precede its child)"
        )
    parent_depth = batch.depths[batch.parents.clamp(min=0)]
    if (batch.depths != torch.where(is_root, 0, parent_depth + 1)).any():
        raise ValueError("malformed draft tree: depths do not equal parent depth + 1")


def first_sibling_mask(batch: TreeBatch) -> torch.Tensor:
    """bool [T]: the node is the lowest-index child of its parent with its token (duplicate
    siblings are legal; the first one stands for the token). Roots are True."""
    base = int(batch.tokens.max()) + 1
    keys = batch.parents * base + batch.tokens
    keys = torch.where(batch.parents >= 0, keys, -1 - torch.arange(keys.numel()))  # roots: unique keys
    _, inverse = torch.unique(keys, return_inverse=True)
    arange = torch.arange(keys.numel())
    first = torch.full_like(arange, keys.numel()).scatter_reduce(0, inverse, arange, reduce="amin")
    return first[inverse] == arange


def follow_draws(batch: TreeBatch, draws: torch.Tensor) -> torch.Tensor:
    """Last accepted node of every tree when node i emits draws[i]: a node is accepted iff every
    node on its root path is the (first) child carrying its parent's draw. Pointer jumping:
    log2(depth) vectorised steps."""
    arange = torch.arange(batch.tokens.numel())
    parents = torch.where(batch.parents >= 0, batch.parents, arange)  # roots point at themselves
    accepted = ((batch.tokens == draws[parents]) & first_sibling_mask(batch)) | (batch.parents < 0)
    jump = parents
    for _ in range(int(batch.depths.max()).bit_length()):
        accepted = accepted & accepted[jump]
        jump = jump[jump]
    # a path's deepest node has its largest index (parents precede children)
    nodes = accepted.nonzero().flatten()
    return torch.full((batch.size,), -1).scatter_reduce(0, batch.tree_of[nodes], nodes, reduce="amax")


def paths_to(batch: TreeBatch, end: torch.Tensor, bonus: torch.Tensor) -> BatchVerifyResult:
    """Root-to-`end` paths of every tree, padded, in local node indices."""
    lengths = batch.depths[end] + 1
    width = int(lengths.max())
    paths = torch.full((batch.size, width), -1)
    node = end.clone()
    for d in range(width - 1, -1, -1):  # climb all trees one level per step
        at = lengths > d
        paths[at, d] = node[at]
        node = torch.where(at & (batch.parents[node] >= 0), batch.parents[node], node)
    valid = paths >= 0
    tokens = torch.where(valid, batch.tokens[paths.clamp(min=0)], -1)
    local = torch.where(valid, paths - batch.starts[:-1, None], -1)
    return BatchVerifyResult(paths=local, tokens=tokens, lengths=lengths, bonus=bonus.long())


class ChildIndex:
    """Child lookup by (node, token) through one sorted key array; duplicate siblings resolve
    to the lowest index (stable sort)."""

    def __init__(self, batch: TreeBatch, vocab: int):
        has_parent = batch.parents >= 0
        keys = batch.parents[has_parent] * vocab + batch.tokens[has_parent]
        self.keys, order = torch.sort(keys, stable=True)
        self.nodes = has_parent.nonzero().flatten()[order]
        self.vocab = vocab

    def __call__(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Child of nodes[i] with tokens[i], or -1."""
        if self.keys.numel() == 0:
            return torch.full_like(nodes, -1)
        keys = nodes * self.vocab + tokens
        pos = torch.searchsorted(self.keys, keys).clamp_(max=self.keys.numel() - 1)
        return torch.where(self.keys[pos] == keys, self.nodes[pos], -1)


class RowIndex:
    """Proposal rows grouped by parent node (row order kept), one uniform per row."""

    def __init__(self, batch: TreeBatch, generator: torch.Generator | None):
        t = batch.tokens.numel()
        props = batch.proposals
        if props is None or len(props) == 0:
            self.count = torch.zeros(t, dtype=torch.long)
            return
        self.props = props
        self.order = torch.sort(props.parent, stable=True).indices
        self.count = torch.bincount(props.parent, minlength=t)
        self.start = torch.cumsum(self.count, 0) - self.count
        self.token = batch.tokens[props.child]
        self.uniform = torch.rand(len(props), dtype=torch.float64, generator=generator)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalise(max(0, p - q)) per row: the target law left after rejecting a draw from q. A
    row with nothing left (p == q up to rounding: the rejection had probability 0) keeps p."""
    r = (p - q).clamp_(min=0)
    total = r.sum(-1, keepdim=True)
    r /= total
    empty = (total <= 0).squeeze(-1)
    if empty.any():
        r[empty] = p[empty]
    return r


def emit_at(
    p: torch.Tensor, nodes: torch.Tensor, rows: RowIndex, children: ChildIndex, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One emitted token per node (law p[i]) and the child it leads to (-1: it is the bonus)."""
    token, child = torch.full_like(nodes, -1), torch.full_like(nodes, -1)
    open_ = torch.ones_like(nodes, dtype=torch.bool)
    count = rows.count[nodes]
    for j in range(int(count.max()) if nodes.numel() else 0):  # j-th proposal row of every node
        at = (open_ & (count > j)).nonzero().flatten()
        if at.numel() == 0:
            break
        r = rows.order[rows.start[nodes[at]] + j]
        x = rows.token[r]
        q = rows.props.q[r].float()
        ok = rows.uniform[r] * q.gather(1, x[:, None]).squeeze(1) < p[at, x]  # prob. min(1, p(x)/q(x))
        token[at[ok]], child[at[ok]], open_[at[ok]] = x[ok], rows.props.child[r[ok]], False
        p[at[~ok]] = residual(p[at[~ok]], q[~ok])
    rest = open_.nonzero().flatten()
    if rest.numel():
        token[rest] = sample(p[rest], generator)
        child[rest] = children(nodes[rest], token[rest])
    return token, child


def walk_sampled(
    batch: TreeBatch, target_logits: torch.Tensor, sampling: SamplingSpec, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last accepted node and bonus token of every tree."""
    rows, children = RowIndex(batch, generator), ChildIndex(batch, target_logits.shape[1])
    node = batch.starts[:-1].clone()
    bonus = torch.full_like(node, -1)
    active = torch.arange(batch.size)
    while active.numel():
        cur = node[active]
        p = process_logits(target_logits[cur.to(target_logits.device)], sampling).to(cur.device)
        token, child = emit_at(p, cur, rows, children, generator)
        stop = child < 0
        bonus[active[stop]] = token[stop]
        active = active[~stop]
        node[active] = child[~stop]
    return node, bonus
