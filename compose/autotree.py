"""tree="auto": the draft tree sized to the hardware and to how well the drafters are doing
(docs/design.md "tree=auto"), Sequoia's idea adapted online.

- Acceptance: Sequoia's positional model. p[r] = P(the r-th best child, by draft score, of a
  node the verifier reached is accepted), learnt from every verification (decayed counts over a
  prior). Under it, the expected accepted length of the tree an EAGLE-2 build of (depth, top-k,
  budget) makes is computable without drafting: simulate the build on the values
  prod(p[rank] along the path) and sum the kept nodes' values. A merged tree (merged_tree,
  `sum`) is w drafters' trees of that shape: each drafter learns its own p on its nodes
  (MergedAcceptance), the tree is valued as the best drafter's, and it costs w budgets' nodes.
- Cost: the machine's cost profile (compose/costs.py: target forward for n nodes, one draft
  level), scaled online by the ratio of observed to predicted times (load changes).
- No early stop (TreeSpec.stop_below): a drafter's raw path probability is no acceptance
  estimate (measured: docs/design.md "Measurements behind the code").
- Choice: the (depth, top-k, budget) of the grid with the most expected tokens per second, or no
  drafting at all (root only) when plain decoding is faster; then every `explore_every`-th step
  still drafts the best tree so the acceptance estimate keeps learning (the gap doubles, up to
  MAX_EXPLORE_GAP, while drafting keeps measuring below plain decoding). Whether drafting beats
  plain decoding is judged on measured tokens and times: the model's predicted rate for drafted
  steps is scaled by the tokens the last drafted steps delivered against what today's model
  predicts for them (`reality`); times come from the profile scaled by the load every step
  measures (one outlier-robust scale, with plain steps' cost kept relative to it), so a busy
  spell slows both sides of the comparison alike.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from trees import DraftTree, TreeSpec

from .costs import CostProfile

if TYPE_CHECKING:
    from .tree_policy import StepTimes

DEPTHS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16)  # deep narrow trees pay off for near-perfect drafters
TOP_KS = (1, 2, 3, 4, 6, 8)
MAX_NODES = 64  # draft nodes in the verified tree, all drafters together; every budget up to it is tried
RANKS = max(TOP_KS)
LEVELS = 2  # acceptance learnt separately for the root's children and for deeper nodes
# prior for p[r] (a weak, fairly optimistic drafter) and its weight in verified nodes
PRIOR = (0.55, 0.12, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01)
PRIOR_WEIGHT = 8.0
# the prior's weight shrinks by this per verified step, to PRIOR_FLOOR: it only bridges the first
# steps. Forgotten at the counts' rate (DECAY), it held a near-perfect drafter's first-level
# estimate at 0.94 after 39 straight hits, which kept auto a level short of the best chain
# (docs/design.md "tree=auto")
PRIOR_DECAY = 0.9
PRIOR_FLOOR = 0.5
DECAY = 0.99  # per verified step: the estimate follows a new prompt's domain within about a hundred steps
REALITY_STEPS = 32  # drafted steps whose measured throughput checks the model's
# plain steps between two drafted ones, at most, while drafting keeps losing. An explore step
# costs more than its tree: the drafters first catch up on every token committed since they last
# drafted (the prompt too, at a turn's first), 30-120 ms on the AVX2 machine where plain decoding
# is 10 ms a token. At 64 that was one a turn, 3-10% of it (docs/design.md "tree=auto")
MAX_EXPLORE_GAP = 256
PLAIN_REFRESH = 64  # steps between two choices while decoding plainly with nothing drafted since


class PositionalAcceptance:
    """p[level, r] for ranks 1..RANKS: decayed hit and trial counts over a prior. Level 0: the
    root's children; level 1: every deeper node's. They differ: a step starts right after the
    drafter's last miss (where the next token is harder), and then runs in its stride
    (docs/design.md "Measurements behind the code")."""

    def __init__(self, prior=PRIOR, weight: float = PRIOR_WEIGHT, decay: float = DECAY):
        # level 0 starts from the prior; deeper levels start from level 0's estimate (their own
        # counts start at zero), so a drafter seen only in shallow trees is not judged by the prior
        self.hits = torch.zeros(LEVELS, RANKS, dtype=torch.float64)
        self.trials = torch.zeros(LEVELS, RANKS, dtype=torch.float64)
        self.prior = torch.tensor(prior, dtype=torch.float64)
        self.weight, self.decay = weight, decay
        self.prior_weight = weight  # shrinks per verified step (PRIOR_DECAY), to PRIOR_FLOOR at least

    @property
    def p(self) -> torch.Tensor:
        first = (self.hits[0] + self.prior_weight * self.prior) / (self.trials[0] + self.prior_weight)
        deeper = (self.hits[1:] + self.weight * first) / (self.trials[1:] + self.weight)
        return torch.cat([first[None], deeper]).clamp(0.0, 1.0)

    def observe(self, tree: DraftTree, path: torch.Tensor, nodes: torch.Tensor | None = None) -> None:
        """Every node on the accepted path that has children is a trial for the ranks it has;
        the child taken next (if any) is a hit at its rank. The root is always a trial: a drafter
        that proposed nothing there (the suffix drafter without a match) missed. `nodes` (bool
        [N]): count one drafter's own nodes of a merged tree only, on the part of the accepted
        path they hold."""
        parents, scores = tree.parents, tree.scores
        if nodes is not None:
            nodes = nodes.clone()
            nodes[0] = True
            path = path[: int(nodes[path].long().cumprod(0).sum())]
            parents = torch.where(nodes, parents, -2)  # another drafter's nodes are nobody's children
        path = path.tolist()
        # forget per verified step, at every level alike: deeper trials are rare where the first
        # level mostly misses, and per-trial forgetting kept a previous prompt's deep acceptance
        # (GSM8K's, when MT-Bench followed) for hundreds of steps
        self.hits *= self.decay
        self.trials *= self.decay
        self.prior_weight = max(self.prior_weight * PRIOR_DECAY, min(self.weight, PRIOR_FLOOR))
        for i, node in enumerate(path):
            children = (parents == node).nonzero().flatten()
            if children.numel() == 0:
                if i == 0:
                    self.trials[0, 0] += 1
                continue
            ranked = children[torch.sort(scores[children], descending=True, stable=True).indices][:RANKS].tolist()
            level = min(i, LEVELS - 1)
            self.trials[level, : len(ranked)] += 1
            if i + 1 < len(path) and path[i + 1] in ranked:
                self.hits[level, ranked.index(path[i + 1])] += 1

    def levels(self, depth: int, top_k: int, p: np.ndarray | None = None) -> list[np.ndarray]:
        """The EAGLE-2 build (depth, top_k) on the positional model: per level, the values
        prod(p[level, rank]) of the children made (top_k of each of the top_k best frontier nodes).
        The build of a smaller depth is a prefix of this one. (numpy: a few hundred tiny array
        ops per decision, ~1 us each where torch's cost ~5.)"""
        p = (self.p.numpy() if p is None else p)[:, :top_k]
        frontier = np.ones(1)
        made = []
        for d in range(depth):
            children = (frontier[:, None] * p[min(d, LEVELS - 1)][None, :]).ravel()
            made.append(children)
            frontier = children.copy()
            frontier.sort()
            frontier = frontier[::-1][:top_k]  # the top_k best, descending
        return made

    def expected_by_depth(self, top_k: int, depths=DEPTHS) -> dict[int, torch.Tensor]:
        """E[accepted draft tokens] of the EAGLE-2 build (depth, top_k), for each depth, for every
        budget b (index b - 1): the build's nodes by value, best b kept."""
        levels = self.levels(max(depths), top_k)
        made = np.cumsum([lv.size for lv in levels])  # nodes the build of each depth makes
        table = _ranked_cumsum(levels, depths, int(made[-1]))
        return {d: torch.from_numpy(table[i, : made[d - 1]]) for i, d in enumerate(depths)}

    def expected_accepted(self, depth: int, top_k: int) -> torch.Tensor:
        return self.expected_by_depth(top_k, (depth,))[depth]

    def expected_tables(self, top_ks=TOP_KS, depths=DEPTHS, budgets: int = MAX_NODES) -> list[np.ndarray]:
        p = self.p.numpy()
        return [self.expected_table(top_k, depths, budgets, p) for top_k in top_ks]

    def expected_table(self, top_k: int, depths=DEPTHS, budgets: int = MAX_NODES, p: np.ndarray | None = None) -> np.ndarray:
        """expected_by_depth as one [len(depths), budgets] table (NaN where the build of that
        depth has fewer nodes than the budget), in a few array ops: `AutoTree._decide` reads
        every depth and budget of every top-k each time it decides (`expected_tables`)."""
        return _ranked_cumsum(self.levels(max(depths), top_k, p), depths, budgets)


def _ranked_cumsum(levels: list[np.ndarray], depths, budgets: int) -> np.ndarray:
    """[len(depths), budgets]: for the build of each depth (the first `depth` levels' nodes), the
    sum of its best b node values at column b - 1; NaN past the nodes it makes."""
    level_of = np.repeat(np.arange(len(levels)), [lv.size for lv in levels])
    built = level_of[None, :] < np.asarray(depths)[:, None]  # [D, nodes]: made by the build of that depth
    # values are in [0, 1]: a node the build does not make sorts after every one it makes
    values = np.where(built, np.concatenate(levels)[None, :], -1.0)
    values.sort(axis=1)
    ranked = np.full((len(depths), budgets), -1.0)  # past the build's nodes: none
    kept = min(budgets, values.shape[1])
    ranked[:, :kept] = values[:, ::-1][:, :kept]
    table = ranked.clip(min=0.0).cumsum(1)
    table[ranked < 0] = np.nan
    return table


class MergedAcceptance:
    """The acceptance of a tree merged from several drafters' trees of one shape (merged_tree,
    `sum`): a positional model per drafter, learnt on its own nodes of the verified tree (the
    proposers bits; ranks by the merged scores, the highest any drafter gave) and the part of
    the accepted path they hold. The merged tree is valued as its best drafter's tree: a lower
    bound (the union also accepts where the drafters take turns) that `reality` corrects. Pooling
    the drafters into one tree of top-k x drafters children and budget x drafters nodes let the
    model put every drafter's budget on one chain no drafter builds, and auto drafted deep,
    cut-down trees that paid for levels it then dropped (docs/design.md "tree=auto")."""

    def __init__(self, names):
        self.models = {name: PositionalAcceptance() for name in names}

    def observe(self, tree: DraftTree, path: torch.Tensor) -> None:
        for bit, name in enumerate(tree.drafter_names):
            if name in self.models:
                self.models[name].observe(tree, path, nodes=(tree.proposers >> bit) & 1 == 1)

    def expected_by_depth(self, top_k: int, depths=DEPTHS) -> dict[int, torch.Tensor]:
        each = [m.expected_by_depth(top_k, depths) for m in self.models.values()]
        return {d: torch.stack([e[d] for e in each]).amax(0) for d in depths}

    def expected_accepted(self, depth: int, top_k: int) -> torch.Tensor:
        return self.expected_by_depth(top_k, (depth,))[depth]

    def expected_table(self, top_k: int, depths=DEPTHS, budgets: int = MAX_NODES) -> np.ndarray:
        return self.expected_tables((top_k,), depths, budgets)[0]

    def expected_tables(self, top_ks=TOP_KS, depths=DEPTHS, budgets: int = MAX_NODES) -> list[np.ndarray]:
        each = [m.expected_tables(top_ks, depths, budgets) for m in self.models.values()]
        return [np.stack([e[i] for e in each]).max(0) for i in range(len(top_ks))]


@dataclass
class TreeChoice:
    spec: TreeSpec | None  # None: verify the root alone (no drafting this step)
    tokens_per_s: float


class AutoTree:
    """The automatic tree policy (compose/tree_policy.py TreePolicy): chooses each step's tree.
    `width`: how many drafter trees of the chosen shape the strategy merges into the verified one
    (their nodes add up); `drafters`: the names of the merged drafters (width > 1: each learns
    its acceptance apart, MergedAcceptance); `draft_units`: the drafting calls a step makes, each
    costing the profiled unit (default `width`; a lockstep group of drafters is one);
    `sampled`: kept from the user's tree options."""

    def __init__(self, costs: CostProfile, width: int = 1, sampled: bool = False, explore_every: int = 8,
                 acceptance: PositionalAcceptance | MergedAcceptance | None = None, refresh_every: int = 8,
                 drafters: Sequence[str] = (), draft_units: int | None = None):
        self.costs, self.width, self.sampled = costs, max(1, width), sampled
        self.draft_units = max(1, draft_units if draft_units is not None else self.width)
        if acceptance is None:
            acceptance = MergedAcceptance(drafters) if self.width > 1 and len(drafters) > 1 else PositionalAcceptance()
        # ms of a forward over 1 + n nodes, n = 0..MAX_NODES (index n)
        self._forward_ms = np.array([costs.forward(1 + n) for n in range(MAX_NODES + 1)])
        self.acceptance = acceptance
        self.explore_every, self.refresh_every = explore_every, refresh_every
        self.forward_scale = self.draft_scale = 1.0  # observed / profiled: the load (every step's forward)
        self.plain_shape = 1.0  # one-token forwards' observed / profiled time, over forward_scale
        self.overhead_ms = 0.0  # pack + verify + bookkeeping per step, learnt online
        # the last drafted steps' shares of a merged tree's draft nodes over width x budget (drafters
        # that propose the same token share a node). The count varies step to step, and a forward's
        # cost is not linear in it (17 rows run the AMX linears' 32-row pass), so a budget is
        # priced by the mean cost over recent shares, not the cost at the mean share
        self._shares: deque[float] = deque(maxlen=REALITY_STEPS)
        # the last drafted steps: (spec, tokens delivered)
        self._drafted: deque[tuple[TreeSpec, float]] = deque(maxlen=REALITY_STEPS)
        self._steps = 0
        self._stale = True  # a drafted step was observed since the last choice
        self._choice: TreeChoice | None = None
        self._best_tree: TreeChoice | None = None
        self._explore_gap = explore_every  # doubles (to MAX_EXPLORE_GAP) while exploring keeps losing
        self._since_explore = 0

    # --- choosing ---------------------------------------------------------------------------------
    def choose(self) -> TreeSpec | None:
        # while decoding plainly only the cost scales move (a drafted step moves the acceptance:
        # `_stale`), so the choice (2-3 ms on the AVX2 machine, 2% of its plain steps at every
        # eighth) is remade every PLAIN_REFRESH steps there
        due = self._steps % self.refresh_every == 0 and (
            self._stale or self._choice is None or self._choice.spec is not None or self._steps % PLAIN_REFRESH == 0)
        if self._choice is None or due:
            self._choice, self._best_tree = self._decide()
            self._stale = False
        self._steps += 1
        if self._choice.spec is not None:
            self._explore_gap = self.explore_every
            return self._choice.spec
        self._since_explore += 1
        if self._since_explore >= self._explore_gap:  # keep measuring the drafters while plain decoding wins
            self._since_explore = 0
            # any predicted loss backs off: at 0.8 x plain decoding and above the gap stayed at
            # explore_every, and strategies whose trees lost by a few percent drafted every 8th step
            gap_loses = self._best_tree.tokens_per_s * self.reality < self._choice.tokens_per_s
            self._explore_gap = min(MAX_EXPLORE_GAP, 2 * self._explore_gap) if gap_loses else self.explore_every
            return self._best_tree.spec
        return None

    def step_ms(self, depth: int, top_k: int, budget: int) -> float:
        forward = self.forward_ms(np.asarray([budget]))[0]
        return forward + self.draft_scale * self.draft_ms(depth, top_k) + self.overhead_ms

    @property
    def node_share(self) -> float:
        """The recent steps' mean share of draft nodes over width x budget (1 before any)."""
        return float(np.mean(self._shares)) if self._shares else 1.0

    def forward_ms(self, budgets: np.ndarray) -> np.ndarray:
        """Predicted ms of the verify forward for each per-drafter budget: the profile at 1 + the
        draft nodes, averaged over the recent steps' node shares (merged trees), times the load."""
        shares = np.asarray(self._shares) if self._shares else np.ones(1)
        nodes = np.clip(np.round(shares[:, None] * self.width * budgets[None, :]).astype(np.int64), 1, MAX_NODES)
        return self.forward_scale * self._forward_ms[nodes].mean(0)

    def draft_ms(self, depth: int, top_k: int) -> float:
        """Profiled ms of drafting a (depth, top_k) tree with every merged drafter (unscaled)."""
        return self.draft_units * (self.costs.root_ms + (depth - 1) * self.costs.level(top_k))

    def expected_tokens(self, spec: TreeSpec) -> float:
        """Tokens per step the acceptance model expects of `spec` (bonus included)."""
        expected = self.acceptance.expected_accepted(spec.depth, spec.top_k)
        return 1.0 + float(expected[min(spec.budget, expected.numel()) - 1])

    @property
    def reality(self) -> float:
        """Tokens the last drafted steps delivered over what today's acceptance model expects of
        them (1 before any): the model's own error (e.g. correlated depths). Tokens only, not
        throughput: a burst of load that slows a few drafted steps is the cost scales' business
        (robust, shared with plain steps), and counting it here too locked auto into plain
        decoding on a busy machine. The tokens are predicted by today's model, not the one of the
        step's time: a model still at its prior when the steps ran (at T = 1 it expected twice
        what the first steps delivered) is lag the model has since learnt away."""
        if not self._drafted:
            return 1.0
        predicted = {spec: self.expected_tokens(spec) for spec in {d[0] for d in self._drafted}}
        tokens = sum(d[1] for d in self._drafted)
        p_tokens = sum(predicted[d[0]] for d in self._drafted)
        return min(2.0, max(0.05, tokens / p_tokens))

    def _decide(self) -> tuple[TreeChoice, TreeChoice]:
        """Every (depth, top-k, budget) of the grid at once: expected tokens per step over
        predicted ms per step, a [depth, budget] table per top-k (the forward's cost is looked up
        per node count). Ties go to the first in (top-k, depth, budget) order."""
        plain = TreeChoice(None, 1e3 / (self.forward_scale * self.plain_shape * self.costs.forward(1) + self.overhead_ms))
        best = TreeChoice(TreeSpec(depth=1, top_k=1, budget=1, sampled=self.sampled), 0.0)
        w = self.width
        budgets = np.arange(1, MAX_NODES // w + 1)
        forward = self.forward_ms(budgets)  # [B]
        levels = np.asarray(DEPTHS, dtype=np.float64) - 1
        for top_k, accepted in zip(TOP_KS, self.acceptance.expected_tables(TOP_KS, DEPTHS, budgets.size)):
            # accepted: [D, B], NaN where the build has no such budget
            draft = self.draft_scale * self.draft_units * (self.costs.root_ms + levels * self.costs.level(top_k))
            rates = np.nan_to_num(1e3 * (1.0 + accepted) / (forward[None, :] + draft[:, None] + self.overhead_ms), nan=-1.0)
            i = int(rates.argmax())  # the first maximum, row-major: depth, then budget
            if float(rates.flat[i]) > best.tokens_per_s:
                d, b = divmod(i, budgets.size)
                best = TreeChoice(TreeSpec(depth=DEPTHS[d], top_k=top_k, budget=b + 1, sampled=self.sampled),
                                  float(rates.flat[i]))
        return (best if best.tokens_per_s * self.reality > plain.tokens_per_s else plain), best

    # --- learning -----------------------------------------------------------------------------------
    def observe(self, spec: TreeSpec | None, tree: DraftTree, path: torch.Tensor, times: StepTimes) -> None:
        """After a verification: the acceptance on the tree, and the observed times (seconds)
        against the profile's prediction (exponential averages)."""
        nodes = len(tree)
        ratio = 1e3 * times.forward / self.costs.forward(nodes)
        self.forward_scale = _robust_ema(self.forward_scale, ratio)
        self.overhead_ms = _robust_ema(self.overhead_ms, 1e3 * times.other)
        if spec is None:  # plain steps keep their cost relative to the load all steps measure
            self.plain_shape = _robust_ema(self.plain_shape, ratio / self.forward_scale)
            return
        predicted = self.draft_ms(spec.depth, spec.top_k)
        self.draft_scale = _robust_ema(self.draft_scale, 1e3 * times.draft / max(predicted, 1e-6))
        self.acceptance.observe(tree, path)
        self._stale = True
        if self.width > 1:
            self._shares.append(min(1.0, max(0.05, (nodes - 1) / (self.width * spec.budget))))
        self._drafted.append((spec, float(path.numel())))


def _ema(old: float, new: float, weight: float = 0.1) -> float:
    return (1 - weight) * old + weight * new


def _robust_ema(old: float, new: float, weight: float = 0.1, step: float = 1.5) -> float:
    """An exponential average that one outlier cannot drag: the new value is clipped to within
    `step`x of the current one, so a single 10x-slow step moves the estimate 5%, while a lasting
    change of load is followed within tens of steps."""
    if old > 0:
        new = min(max(new, old / step), old * step)
    return _ema(old, new, weight)
