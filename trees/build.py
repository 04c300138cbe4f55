"""Building one drafter's tree from a step function.

`step_fn(tree, frontier) -> logits [F, V]`: given the partial tree built so far and the int64
indices of the F frontier nodes to expand (all already in `tree`), return the drafter's next-token
logits (raw, float) at each of them, or `SparseLogits` when the drafter only covers part of the
vocabulary (a truncated draft head): top-k then never touches the full vocabulary. The drafter owns its model state (e.g. a KV cache of the
nodes it has been fed); every frontier node is fed exactly once, parents before children.
Node indices are append-only during a build; only the final EAGLE-2 rerank renumbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .checks import require_finite_rows
from .sampling import process_logits
from .spec import SamplingSpec, TreeSpec
from .tree import DraftTree, Proposals, top_scoring_closed



@dataclass
class SparseLogits:
    """Logits over a sub-vocabulary: column i is target token vocab_ids[i]; every other target
    token has logit -inf."""

    logits: torch.Tensor  # float [F, Vd]
    vocab_ids: torch.Tensor  # int64 [Vd], target ids
    vocab_size: int  # the target vocabulary size

    def dense(self) -> torch.Tensor:
        full = self.logits.new_full((self.logits.shape[0], self.vocab_size), float("-inf"))
        return full.index_copy_(1, self.vocab_ids.to(full.device), self.logits)


StepFn = Callable[[DraftTree, torch.Tensor], "torch.Tensor | SparseLogits"]


class GrowingTree:
    """Append-only node table; `snapshot()` is the partial tree handed to step_fn."""

    def __init__(self, root_token: int, drafter_name: str):
        self.tokens = torch.tensor([root_token], dtype=torch.long)
        self.parents = torch.tensor([-1], dtype=torch.long)
        self.scores = torch.zeros(1)
        self.depths = torch.zeros(1, dtype=torch.long)
        self.entropies = torch.full((1,), float("nan"))
        self.drafter_name = drafter_name

    def __len__(self) -> int:
        return self.tokens.numel()

    def add(self, parents: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Append children; return their node indices."""
        start = len(self)
        self.tokens = torch.cat([self.tokens, tokens.long()])
        self.parents = torch.cat([self.parents, parents.long()])
        self.scores = torch.cat([self.scores, scores.float()])
        self.depths = torch.cat([self.depths, self.depths[parents] + 1])
        self.entropies = torch.cat([self.entropies, torch.full((tokens.numel(),), float("nan"))])
        return torch.arange(start, len(self))

    def record_entropy(self, nodes: torch.Tensor, logp: torch.Tensor) -> None:
        """Entropy of the drafter's distribution (log-probs `logp`) at the expanded `nodes`."""
        self.record_entropies(nodes, row_entropy(logp))

    def record_entropies(self, nodes: torch.Tensor, entropy: torch.Tensor) -> None:
        """An entropy is NaN exactly when the drafter's logits row held NaN or inf or nothing
        finite, so it doubles as the drafter's non-finite check at no extra cost."""
        require_finite_rows(entropy, f"drafter {self.drafter_name!r}")
        self.entropies[nodes] = entropy

    def snapshot(self, proposals: Proposals | None = None) -> DraftTree:
        return DraftTree(
            tokens=self.tokens, parents=self.parents, scores=self.scores,
            proposers=torch.ones(len(self), dtype=torch.long), drafter_names=(self.drafter_name,),
            proposals=proposals, depths=self.depths, entropies=self.entropies,
        )


def build_tree(
    root_token: int,
    step_fn: StepFn,
    spec: TreeSpec,
    sampling: SamplingSpec | None = None,
    generator: torch.Generator | None = None,
    drafter_name: str = "draft",
) -> DraftTree:
    """EAGLE-2 dynamic tree (spec.sampled False) or sampled tree (spec.sampled True, children
    drawn without replacement from process_logits(logits, sampling), proposals recorded).
    A sampled spec with greedy (or no) sampling falls back to the dynamic tree."""
    build = new_build(root_token, spec, sampling, generator, drafter_name)
    return build_lockstep([build], lambda trees, frontiers: [step_fn(trees[0], frontiers[0])])[0]


def new_build(root_token: int, spec: TreeSpec, sampling: SamplingSpec | None = None,
              generator: torch.Generator | None = None, drafter_name: str = "draft") -> "DynamicBuild | SampledBuild":
    if spec.sampled and sampling is not None and not sampling.greedy:
        return SampledBuild(root_token, spec, sampling, generator, drafter_name)
    return DynamicBuild(root_token, spec, drafter_name)


def build_lockstep(builds: list, step_many) -> list[DraftTree]:
    """Run builds level by level, together: `step_many(partial trees, frontiers)` feeds every
    build's frontier (one batched drafter call, or one call per drafter; a finished build's
    frontier is None) and returns one step output per build (None for the finished ones)."""
    while any(b.frontier is not None for b in builds):
        frontiers = [b.frontier for b in builds]
        outs = step_many([b.grow.snapshot() for b in builds], frontiers)
        live = [(b, checked(out, f)) for b, f, out in zip(builds, frontiers, outs) if f is not None]
        for batch in _same_vocabulary(live):
            if isinstance(batch[0][0], DynamicBuild):  # one softmax / entropy / top-k for all their rows
                for (b, _), top in zip(batch, top_children([out for _, out in batch], batch[0][0].spec.top_k)):
                    b.add_level(*top)
            else:
                for b, out in batch:
                    b.expand(out)
    return [b.tree() for b in builds]


# Batched expansion pays while all rows' float logits stay in a core's L2; past it, one pass over
# large temporaries costs more than the members' passes (docs/design.md "Measurements behind the code").
BATCH_LOGITS = 1 << 17


def _same_vocabulary(live: list) -> list[list]:
    """Consecutive runs of dynamic builds with one top-k whose logits cover one vocabulary (dense
    of one width, or sparse over equal ids), up to BATCH_LOGITS logits a run; every other build alone."""
    batches: list[list] = []
    for b, out in live:
        logits = out.logits if isinstance(out, SparseLogits) else out
        if (batches and isinstance(b, DynamicBuild) and _batchable(batches[-1][-1], (b, out))
                and logits.numel() * (len(batches[-1]) + 1) <= BATCH_LOGITS):
            batches[-1].append((b, out))
        else:
            batches.append([(b, out)])
    return batches


def _batchable(first: tuple, second: tuple) -> bool:
    (a, x), (b, y) = first, second
    if not (isinstance(a, DynamicBuild) and a.spec.top_k == b.spec.top_k and type(x) is type(y)):
        return False
    if isinstance(x, SparseLogits):
        return x.logits.shape[1] == y.logits.shape[1] and x.logits.device == y.logits.device and x.vocab_size == y.vocab_size and (
            x.vocab_ids is y.vocab_ids or torch.equal(x.vocab_ids, y.vocab_ids))
    return x.shape[1] == y.shape[1] and x.device == y.device


def build_chain(root_token: int, step_fn: StepFn, depth: int, drafter_name: str = "draft") -> DraftTree:
    """Top-1 chain of `depth` draft nodes."""
    return build_tree(root_token, step_fn, TreeSpec(depth=depth, top_k=1, budget=depth), drafter_name=drafter_name)


def checked(out: torch.Tensor | SparseLogits, frontier: torch.Tensor) -> torch.Tensor | SparseLogits:
    logits = out.logits if isinstance(out, SparseLogits) else out
    if logits.dim() != 2 or logits.shape[0] != frontier.numel():
        raise ValueError(
            f"step_fn returned logits of shape {tuple(logits.shape)}, expected [{frontier.numel()}, V]"
        )
    return out


def dense_logits(out: torch.Tensor | SparseLogits) -> torch.Tensor:
    return (out.dense() if isinstance(out, SparseLogits) else out).float()


class DynamicBuild:
    """EAGLE-2, one level per `expand`: expand the frontier's top-k children, keep the best k of
    the k^2 candidates by cumulative log q (temperature 1) as the next frontier; after `depth`
    levels (or earlier, once the best path probability is below `spec.stop_below`) keep the best
    `budget` nodes overall (ancestor-closed, checked). `frontier` is None once the build is done."""

    def __init__(self, root_token: int, spec: TreeSpec, drafter_name: str = "draft"):
        self.grow, self.spec, self.level = GrowingTree(root_token, drafter_name), spec, 0
        self.frontier: torch.Tensor | None = torch.zeros(1, dtype=torch.long)

    def expand(self, out: torch.Tensor | SparseLogits) -> None:
        self.add_level(*top_children([out], self.spec.top_k)[0])

    def add_level(self, entropy: torch.Tensor, top_logq: torch.Tensor, top_tokens: torch.Tensor) -> None:
        """Grow the frontier's top-k children (`top_children` of its logits)."""
        grow, frontier, k = self.grow, self.frontier, self.spec.top_k
        grow.record_entropies(frontier, entropy)
        cand_scores = (grow.scores[frontier][:, None] + top_logq.cpu()).flatten()
        finite = torch.isfinite(cand_scores)  # a truncated draft head gives -inf outside its vocabulary
        cand_parents = frontier.repeat_interleave(top_tokens.shape[1])[finite]
        new = grow.add(cand_parents, top_tokens.cpu().flatten()[finite], cand_scores[finite])
        self.level += 1
        if new.numel() == 0 or self.level == self.spec.depth:
            self.frontier = None
            return
        best = torch.sort(grow.scores[new], descending=True, stable=True).indices[:k]
        if math.exp(float(grow.scores[new[best[0]]])) < self.spec.stop_below:
            self.frontier = None  # no path is likely enough to be worth another level
            return
        self.frontier = new[best.sort().values]

    def tree(self) -> DraftTree:
        tree = self.grow.snapshot()
        if len(tree) - 1 <= self.spec.budget:  # every node kept (a chain, a small tree): select would copy it
            return tree
        return tree.select(top_scoring_closed(tree, self.spec.budget))


def row_entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of log-probabilities."""
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


def top_children(outs: list, k: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(entropy [F], top log q [F, k], their target tokens [F, k]) for each step output in `outs`
    (all over one vocabulary), from one log-softmax and one top-k over all their rows: each
    row's numbers are those it gets alone."""
    sparse = isinstance(outs[0], SparseLogits)
    rows = [out.logits if sparse else out for out in outs]
    logq = torch.log_softmax((rows[0] if len(rows) == 1 else torch.cat(rows)).float(), dim=-1)
    entropy = row_entropy(logq)
    top_logq, top_tokens = logq.topk(min(k, logq.shape[-1]), dim=-1)
    if sparse:
        top_tokens = outs[0].vocab_ids.to(top_tokens.device)[top_tokens]
    sizes = [r.shape[0] for r in rows]
    return list(zip(entropy.split(sizes), top_logq.split(sizes), top_tokens.split(sizes)))


def split_quota(quota: int, frontier_size: int, cap: int) -> torch.Tensor:
    """Children per frontier node (best first): `quota` spread evenly, the extra to the best."""
    counts = torch.full((frontier_size,), quota // frontier_size, dtype=torch.long)
    counts[: quota % frontier_size] += 1
    return counts.clamp_(max=cap)


def draw_without_replacement(q: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """`count` ordered draws per row of q [F, V] without replacement (Gumbel-top-k: the order of
    the largest perturbed log-probabilities has the law of sequential draws)."""
    u = torch.rand(q.shape, generator=generator, device=q.device).clamp_(min=1e-20)
    keys = torch.log(q) - torch.log(-torch.log(u))
    return keys.topk(count, dim=-1).indices


def renormalised_rows(q: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """q_j for each draw j [F, C, V]: q with the earlier draws of its row removed, renormalised
    (the distribution the j-th draw without replacement actually came from)."""
    rows = [q]
    for j in range(1, draws.shape[1]):
        rows.append(rows[-1].scatter(1, draws[:, j - 1 : j], 0.0))
    out = torch.stack(rows, dim=1)
    return out / out.sum(-1, keepdim=True)


class SampledBuild:
    """Sampled tree verified by recursive rejection sampling, one level per `expand`. The number
    of children of a node is fixed before its draws are made (a level's quota = remaining budget
    / remaining levels, spread over the best-scoring frontier nodes), so no cut ever looks at
    drawn values."""

    def __init__(self, root_token: int, spec: TreeSpec, sampling: SamplingSpec,
                 generator: torch.Generator | None = None, drafter_name: str = "draft"):
        self.grow, self.spec, self.sampling, self.generator = GrowingTree(root_token, drafter_name), spec, sampling, generator
        self.rows_parent, self.rows_child, self.rows_q = [], [], []
        self.level, self.remaining = 0, spec.budget
        self._plan(torch.zeros(1, dtype=torch.long))

    def _plan(self, frontier: torch.Tensor) -> None:
        """Children per frontier node for the next level (None frontier: done)."""
        if self.remaining <= 0 or frontier.numel() == 0 or self.level == self.spec.depth:
            self.frontier = None
            return
        quota = math.ceil(self.remaining / (self.spec.depth - self.level))
        counts = split_quota(quota, frontier.numel(), self.spec.top_k)
        self.frontier, self.counts = frontier[counts > 0], counts[counts > 0]

    def expand(self, out: torch.Tensor | SparseLogits) -> None:
        grow, frontier = self.grow, self.frontier
        logits = dense_logits(out).cpu()
        grow.record_entropy(frontier, torch.log_softmax(logits, dim=-1))
        q = process_logits(logits, self.sampling)
        counts = torch.minimum(self.counts, (q > 0).sum(-1))  # cannot draw more distinct tokens than q's support
        draws = draw_without_replacement(q, int(counts.max()), self.generator)
        q_rows = renormalised_rows(q, draws)
        taken = torch.arange(draws.shape[1])[None, :] < counts[:, None]  # [F, C], row-major = draw order
        parents = frontier[:, None].expand_as(draws)[taken]
        scores = grow.scores[parents] + torch.log(q.gather(1, draws))[taken]
        new = grow.add(parents, draws[taken], scores)
        self.rows_parent.append(parents), self.rows_child.append(new), self.rows_q.append(q_rows[taken])
        self.remaining -= new.numel()
        self.level += 1
        best = torch.sort(grow.scores[new], descending=True, stable=True).indices[: self.spec.top_k]
        self._plan(new[best])  # best first: split_quota gives the extra children to the best

    def tree(self) -> DraftTree:
        proposals = Proposals(
            parent=torch.cat(self.rows_parent) if self.rows_parent else torch.zeros(0, dtype=torch.long),
            child=torch.cat(self.rows_child) if self.rows_child else torch.zeros(0, dtype=torch.long),
            q=torch.cat(self.rows_q) if self.rows_q else torch.zeros(0, 0),
        )
        return self.grow.snapshot(proposals)
