"""The sampling law through the real composition strategies, at the full power of
test_trees_law.py (>= 0.99 at total variation 0.02, alpha 1e-3).

Drafting is simulated so that tens of thousands of decode steps take seconds: a `TableDrafter`
is a Drafter whose next-token logits are a function of the token path (a table), whose trees
are drawn in vectorised chunks by tree_law.simulate_sampled (honest draws: the number of
draws at a node is fixed before drawing; every draw a proposal row with the q it came from),
then given the scores and entropies build_tree records. A strategy object (the code under test)
turns the drafters' trees into the one verified tree, decode step by decode step; the n trees
are verified in one batch and the first k emitted tokens are compared with the exact law."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from drafters.base import Drafter
from trees import DraftTree, Proposals, SamplingSpec, TreeSpec, process_logits
from trees.verifying import TreeBatch

from tree_law import LawCase, SimDrafter, n_paths, random_logits, simulate_sampled

CHUNK = 4096  # trees drawn per vectorised refill


class TableModule(nn.Module):
    """The drafter's weights: logits per path (what `averaged` averages)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.float(), requires_grad=False)


class TableDrafter(Drafter):
    """Trees rooted at path 0 (token 0): `count` draws at the root, then each non-root node up
    to `depth` is expanded with probability `expand` (decided before its draws). Top-k children
    instead when the tree spec is not sampled (or sampling is greedy)."""

    target_layers = None

    def __init__(self, name: str, logits: torch.Tensor, vocab: int, depth: int, count: int, expand: float):
        self.name, self.vocab_size = name, vocab
        self.model = TableModule(logits)
        self.depth, self.count, self.expand = depth, count, expand
        self.pool: list[DraftTree] = []  # sampled trees drawn ahead, used once each
        self.fixed: DraftTree | None = None  # the top-k tree (deterministic)
        self.drafted = 0

    def start(self, prompt_ids, hidden) -> None:
        pass

    def advance(self, tokens, hidden) -> None:
        pass

    def architecture_key(self) -> tuple:
        return ("table", tuple(self.model.logits.shape))

    def propose(self, root_token: int, tree: TreeSpec, sampling: SamplingSpec, generator=None) -> DraftTree:
        assert root_token == 0, "table drafters draft from path 0"
        self.drafted += 1
        if not (tree.sampled and not sampling.greedy):
            if self.fixed is None:
                self.fixed = self.draw("topk", sampling, 1, np.random.default_rng(0))[0]
            return self.fixed
        if not self.pool:
            seed = int(torch.randint(2**62, (1,), generator=generator))
            self.pool = self.draw("without", sampling, CHUNK, np.random.default_rng(seed))
        return self.pool.pop()

    def draw(self, kind: str, sampling: SamplingSpec, n: int, rng: np.random.Generator) -> list[DraftTree]:
        logq = torch.log_softmax(self.model.logits.double(), -1)
        q = process_logits(self.model.logits, sampling if not sampling.greedy else SamplingSpec(1.0)).double()
        q = (q / q.sum(-1, keepdim=True)).numpy()
        sim = SimDrafter(kind=kind, q=q, count=self.count, expand=self.expand)
        batch, ids = simulate_sampled([sim], self.vocab_size, self.depth, n, rng)
        return split_batch(batch, ids, logq, self.name)


def split_batch(batch: TreeBatch, ids: torch.Tensor, logq: torch.Tensor, name: str) -> list[DraftTree]:
    """The batch's trees as DraftTrees with build_tree's scores (cumulative log q) and entropies
    (of q at every node the drafter expanded, nan elsewhere)."""
    v = logq.shape[1]
    parents_global = batch.parents
    has_parent = parents_global >= 0
    step = torch.zeros(len(ids), dtype=torch.float64)
    step[has_parent] = logq[ids[parents_global[has_parent]], batch.tokens[has_parent]]
    scores = step.clone()
    for d in range(1, int(batch.depths.max()) + 1):
        level = (batch.depths == d).nonzero().flatten()
        scores[level] = scores[parents_global[level]] + step[level]
    expanded = torch.zeros(len(ids), dtype=torch.bool)
    expanded[parents_global[has_parent]] = True
    entropy = -(logq.exp() * logq).sum(-1)
    entropies = torch.where(expanded, entropy[ids].float(), torch.tensor(float("nan")))
    # numpy slices wrapped by torch.from_numpy: ~5x cheaper per tree than torch views
    bounds = batch.starts.tolist()
    offsets = batch.starts[:-1].repeat_interleave(batch.starts.diff())
    tokens, parents, depths = (t.numpy() for t in (
        batch.tokens, torch.where(parents_global >= 0, parents_global - offsets, -1), batch.depths))
    scores, entropies, proposers = scores.float().numpy(), entropies.numpy(), np.ones(len(ids), np.int64)
    props, row_bounds = batch.proposals, None
    if props is not None:
        row_tree = batch.tree_of[props.parent]
        order = torch.sort(row_tree, stable=True).indices
        local = offsets[props.parent[order]]
        row_parent, row_child, row_q = (props.parent[order] - local).numpy(), (props.child[order] - local).numpy(), props.q[order].numpy()
        row_bounds = [0] + torch.cumsum(torch.bincount(row_tree, minlength=batch.size), 0).tolist()
    trees, wrap = [], torch.from_numpy
    for b in range(batch.size):
        lo, hi = bounds[b], bounds[b + 1]
        proposals = None
        if row_bounds is not None:
            r0, r1 = row_bounds[b], row_bounds[b + 1]
            proposals = Proposals(wrap(row_parent[r0:r1]), wrap(row_child[r0:r1]), wrap(row_q[r0:r1]))
        trees.append(DraftTree(
            tokens=wrap(tokens[lo:hi]), parents=wrap(parents[lo:hi]), scores=wrap(scores[lo:hi]),
            proposers=wrap(proposers[lo:hi]), drafter_names=(name,), proposals=proposals,
            depths=wrap(depths[lo:hi]), entropies=wrap(entropies[lo:hi]),
        ))
    return trees


def batch_path_ids(batch: TreeBatch, vocab: int) -> torch.Tensor:
    ids = torch.zeros(batch.tokens.numel(), dtype=torch.long)
    for d in range(1, int(batch.depths.max()) + 1):
        level = (batch.depths == d).nonzero().flatten()
        ids[level] = ids[batch.parents[level]] * vocab + batch.tokens[level] + 1
    return ids


@dataclass
class DrafterShape:
    seed: int
    scale: float
    count: int
    expand: float


def table_drafters(vocab: int, depth: int, shapes: list[DrafterShape]) -> dict[str, TableDrafter]:
    return {
        f"d{i}": TableDrafter(f"d{i}", random_logits(vocab, depth, s.seed, s.scale), vocab, depth, s.count, s.expand)
        for i, s in enumerate(shapes)
    }


# a decode step: (strategy, step index) -> the verified tree; lets a test drive per-turn state
StepFn = Callable[[int], DraftTree]


def strategy_case(
    vocab: int, k: int, depth: int, target_logits: torch.Tensor, target: SamplingSpec, make_steps: Callable[[], StepFn]
) -> LawCase:
    """A LawCase whose n decode steps are the trees a strategy hands verification.
    `make_steps()` is called once per law check and returns step(i) -> verified tree."""
    assert target_logits.shape[0] >= n_paths(vocab, max(depth, k))

    def draw_batch(n: int, rng: np.random.Generator):
        step = make_steps()
        batch = TreeBatch.from_trees([step(i) for i in range(n)])
        return batch, batch_path_ids(batch, vocab)

    return LawCase(vocab, k, target_logits, target, draw_batch)


def root_target(vocab: int, p_root: list[float], depth: int, seed: int = 7) -> torch.Tensor:
    """Target logits with `p_root` at the root (temperature 1) and random rows below."""
    logits = random_logits(vocab, max(depth, 2), seed, 1.0)
    logits[0] = torch.tensor(p_root).log()
    return logits
