"""The law check behind the losslessness tests (tests/test_trees_law.py and the strategy,
suffix and draw-order law tests): exact laws, the chi-square check and its power, simulated
sampled drafting, and the Hypothesis strategies that generate cases.

For a small vocabulary the target's law of the first K emitted tokens is computed exactly by
enumeration. The real verification (`verify_batch`, of which `verify` is the batch of one) runs
n independent decode steps with fixed seeds: n independently drafted trees verified in one batch,
plain target sampling for the positions after the bonus token. Pearson's chi-square test
compares the counts with the exact law.

Power. Under an alternative Q, with P the exact law, Pearson's statistic over C cells is
(asymptotically) noncentral chi2(C - 1, lam) with lam = n * sum_c (Q_c - P_c)^2 / P_c. By
Cauchy-Schwarz (sum_c |Q_c - P_c|)^2 <= sum_c (Q_c - P_c)^2 / P_c * sum_c P_c, so lam >= n (2 TV)^2.
n is the smallest with P[ncx2(C - 1, n (2 TV)^2) > chi2.isf(ALPHA, C - 1)] >= POWER at TV = 0.02.
Cases keep every possible cell at an expected count >= 5 (Hypothesis filters the others) so the
approximation holds; cells of probability exactly 0 must stay empty. The same check is run
against deliberately wrong verifiers whose bias (computed exactly) is >= 0.02 and must reject.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from hypothesis import assume, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import chi2, ncx2

from trees import DraftTree, Proposals, SamplingSpec, TreeSpec, build_tree, merge_trees, process_logits
from trees.verifying import BatchVerifyResult, TreeBatch, verify_batch


ALPHA = 1e-3  # false-alarm rate of one law check
POWER = 0.99  # probability of rejecting any alternative at total variation >= TV
TV = 0.02
MIN_EXPECTED = 5.0
MAX_PATHS = 1400  # complete-trie size bound for the vectorised drafting simulation
LAW_SETTINGS = settings(max_examples=6, derandomize=True, deadline=None, database=None)

Verifier = Callable[[TreeBatch, torch.Tensor, SamplingSpec, torch.Generator], BatchVerifyResult]


# --- sample size and the chi-square check ------------------------------------------------------
def required_samples(df: int, tv: float) -> int:
    crit = chi2.isf(ALPHA, df)
    lam = brentq(lambda nc: ncx2.sf(crit, df, nc) - POWER, 1e-6, 1e5)
    return math.ceil(lam / (2 * tv) ** 2)


def power_at(n: int, df: int, tv: float) -> float:
    return float(ncx2.sf(chi2.isf(ALPHA, df), df, n * (2 * tv) ** 2))


def plan_samples(law: np.ndarray) -> int:
    """Smallest n with power POWER at TV. With impossible cells an alternative may hide mass
    delta there: delta >= 5/n is caught by the empty-cell check with probability
    >= 1 - e^-5 > POWER; a smaller delta costs at most delta/2 of TV, so n is sized for TV - 2.5/n."""
    df = max(1, int((law > 0).sum()) - 1)
    n = required_samples(df, TV)
    while (law == 0).any() and required_samples(df, TV - 2.5 / n) > n:
        n = required_samples(df, TV - 2.5 / n)
    return n


def well_conditioned(law: np.ndarray) -> bool:
    """Every possible cell expects >= MIN_EXPECTED samples (the chi-square approximation holds)."""
    return bool(law[law > 0].min() * plan_samples(law) >= MIN_EXPECTED)


@dataclass
class LawCheck:
    n: int
    statistic: float
    df: int
    p_value: float
    power: float
    impossible: int  # samples that landed on a cell of probability 0

    @property
    def rejects(self) -> bool:
        return self.impossible > 0 or self.p_value < ALPHA

    def __str__(self) -> str:
        return (f"chi2={self.statistic:.1f} df={self.df} p={self.p_value:.2e} "
                f"impossible={self.impossible} n={self.n} power={self.power:.4f}")


def chi_square_check(counts: np.ndarray, law: np.ndarray) -> LawCheck:
    n = int(counts.sum())
    possible = law > 0
    expected = n * law[possible]
    stat = float(((counts[possible] - expected) ** 2 / expected).sum())
    df = max(1, int(possible.sum()) - 1)
    slack = 2.5 / n if (~possible).any() else 0.0
    return LawCheck(n=n, statistic=stat, df=df, p_value=float(chi2.sf(stat, df)),
                    power=power_at(n, df, TV - slack), impossible=int(counts[~possible].sum()))


# --- a target that is a random function of the token path --------------------------------------
# Paths are numbered like a heap over the complete V-ary trie: root 0, child = id * V + token + 1.
def n_paths(vocab: int, depth: int) -> int:
    return sum(vocab**d for d in range(depth + 1))


def path_ids(tree: DraftTree, vocab: int) -> torch.Tensor:
    ids = torch.zeros(len(tree), dtype=torch.long)
    for d in range(1, int(tree.depths.max()) + 1):
        level = (tree.depths == d).nonzero().flatten()
        ids[level] = ids[tree.parents[level]] * vocab + tree.tokens[level] + 1
    return ids


def random_logits(vocab: int, depth: int, seed: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_paths(vocab, depth), vocab, generator=g) * scale


def probs_table(logits: torch.Tensor, spec: SamplingSpec) -> np.ndarray:
    """The shared processing function, in float64 for exact enumeration."""
    p = process_logits(logits, spec).double().numpy()
    return p / p.sum(-1, keepdims=True)


def exact_first_k_law(table: np.ndarray, vocab: int, k: int) -> np.ndarray:
    """P(first k tokens = s) for every s, index = base-V digits of s (the target's sequential law)."""
    ids, law = np.zeros(1, dtype=np.int64), np.ones(1)
    for _ in range(k):
        law = (law[:, None] * table[ids]).reshape(-1)
        ids = (ids[:, None] * vocab + np.arange(vocab) + 1).reshape(-1)
    return law


@dataclass
class LawCase:
    vocab: int
    k: int
    target_logits: torch.Tensor  # [n_paths, V]
    target: SamplingSpec
    draw_batch: Callable[[int, np.random.Generator], tuple[TreeBatch, torch.Tensor]]  # n trees + path id per node

    @property
    def table(self) -> np.ndarray:
        return probs_table(self.target_logits, self.target)

    @property
    def law(self) -> np.ndarray:
        return exact_first_k_law(self.table, self.vocab, self.k)


def emitted_first_k(verifier: Verifier, case: LawCase, n: int, seed: int) -> np.ndarray:
    """Counts of the first k emitted tokens of n independent decode steps; positions after the
    bonus token are plain target samples."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    v, k = case.vocab, case.k
    batch, ids = case.draw_batch(n, rng)
    result = verifier(batch, case.target_logits[ids], case.target, g)
    emitted = torch.cat([result.tokens[:, 1:], torch.full((n, 1), -1)], dim=1)
    emitted[torch.arange(n), result.lengths - 1] = result.bonus  # path tokens, then the bonus
    have = np.minimum(result.lengths.numpy(), k)
    emitted = emitted[:, :k].numpy()
    seq, ids = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for i in range(k):
        token = emitted[:, i] if i < emitted.shape[1] else np.full(n, -1)
        todo = have <= i  # past the bonus: sample from the target
        cdf = np.cumsum(case.table[ids[todo]], axis=1)
        token = token.copy()
        token[todo] = np.minimum((cdf <= rng.random(todo.sum())[:, None] * cdf[:, -1:]).sum(1), v - 1)
        seq, ids = seq * v + token, ids * v + token + 1
    return np.bincount(seq, minlength=v**k)


def check_law(verifier: Verifier, case: LawCase, seed: int = 0) -> LawCheck:
    law = case.law
    assert well_conditioned(law), "a law case needs every possible cell at >= 5 expected samples"
    check = chi_square_check(emitted_first_k(verifier, case, plan_samples(law), seed), law)
    assert check.power >= POWER, f"the check lacks power: {check}"
    return check


def assert_lossless(check: LawCheck) -> None:
    assert not check.rejects, f"emitted law differs from the target's: {check}"


# --- sampled drafting, simulated for n trees at once --------------------------------------------
@dataclass
class SimDrafter:
    kind: str  # "without" / "with" (replacement): draws with proposal rows; "topk": deterministic
    q: np.ndarray  # [n_paths, V]: the distribution it draws from at every path
    count: int  # draws (or top-k children) per expansion
    expand: float  # probability that it expands a non-root node, decided before its draws there


def inverse_cdf(q: np.ndarray, u: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(q, axis=1)
    return np.minimum((cdf <= u[:, None] * cdf[:, -1:]).sum(1), q.shape[1] - 1)


def drafter_draws(d: SimDrafter, q: np.ndarray, rng: np.random.Generator):
    """Per draw slot j: (tokens [M], q rows they were drawn from [M, V] or None, valid [M])."""
    m = len(q)
    if d.kind == "topk":
        order = np.argsort(-q, axis=1, kind="stable")
        for j in range(min(d.count, q.shape[1])):
            yield order[:, j], None, np.ones(m, bool)
    elif d.kind == "with":
        for _ in range(d.count):
            yield inverse_cdf(q, rng.random(m)), q, np.ones(m, bool)
    else:
        left, support = q.copy(), (q > 0).sum(1)
        for j in range(min(d.count, q.shape[1])):
            valid = support > j  # the count is fixed before drawing: min(count, |support q|)
            row = left / np.maximum(left.sum(1, keepdims=True), 1e-300)
            token = inverse_cdf(np.where(valid[:, None], row, 1.0), rng.random(m))
            yield token, row, valid
            left[np.arange(m), token] = 0.0


def simulate_sampled(drafters: list[SimDrafter], vocab: int, depth: int, n: int, rng: np.random.Generator):
    """n independently drafted trees: every drafter may expand every node (a coin flip decided
    before its draws there); the children are the trie union of all draws, every draw a proposal
    row with its own q, rows of a node in (drafter, draw) order. Returns (TreeBatch, path ids)."""
    present = np.zeros((n, n_paths(vocab, depth)), dtype=bool)
    present[:, 0] = True
    rows = []  # (sample, parent id, child id, q)
    for d in range(depth):
        lo = n_paths(vocab, d - 1) if d else 0
        sample_of, local = np.nonzero(present[:, lo : n_paths(vocab, d)])
        node_id = lo + local
        for drafter in drafters:
            expand = np.ones(len(node_id), bool) if d == 0 else rng.random(len(node_id)) < drafter.expand
            s, parent = sample_of[expand], node_id[expand]
            for token, q_rows, valid in drafter_draws(drafter, drafter.q[parent], rng):
                child = parent * vocab + token + 1
                present[s[valid], child[valid]] = True
                if q_rows is not None:
                    rows.append((s[valid], parent[valid], child[valid], q_rows[valid]))
    sample_of, node_id = np.nonzero(present)  # sample-major, heap order inside: parents first
    index = np.full(present.shape, -1)
    index[sample_of, node_id] = np.arange(len(node_id))
    parent_id = np.maximum(node_id - 1, 0) // vocab
    depths = np.zeros(present.shape[1], np.int64)
    for d in range(1, depth + 1):
        depths[n_paths(vocab, d - 1) : n_paths(vocab, d)] = d
    proposals = None
    if rows:
        s, parent, child, q = (np.concatenate(x) for x in zip(*rows))
        proposals = Proposals(parent=torch.from_numpy(index[s, parent]), child=torch.from_numpy(index[s, child]),
                              q=torch.from_numpy(q).float())
    batch = TreeBatch(
        tokens=torch.from_numpy(np.where(node_id > 0, (node_id - 1) % vocab, 0)),
        parents=torch.from_numpy(np.where(node_id > 0, index[sample_of, parent_id], -1)),
        depths=torch.from_numpy(depths[node_id]),
        starts=torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(sample_of, minlength=n))])),
        proposals=proposals,
    )
    return batch, torch.from_numpy(node_id)


def pool_batch(pool: list[DraftTree], vocab: int, n: int) -> tuple[TreeBatch, torch.Tensor]:
    """n decode steps over fixed (deterministic) trees: step i uses pool[i % len(pool)]."""
    trees = [pool[i % len(pool)] for i in range(n)]
    ids = [path_ids(t, vocab) for t in pool]
    return TreeBatch.from_trees(trees), torch.cat([ids[i % len(pool)] for i in range(n)])


# --- Hypothesis strategies ----------------------------------------------------------------------
@st.composite
def sampling_specs(draw, vocab: int) -> SamplingSpec:
    return SamplingSpec(
        temperature=draw(st.floats(0.5, 2.0)),
        top_k=draw(st.sampled_from([0, 0, *range(1, vocab + 1)])),
        top_p=draw(st.sampled_from([1.0, 1.0, 0.5, 0.7, 0.9])),
    )


@st.composite
def shapes(draw) -> tuple[int, int, int]:
    """(vocab, k, depth): small vocabularies, the first 2-3 tokens, trees 1-6 deep."""
    vocab, k = draw(st.sampled_from([(2, 2), (2, 3), (3, 2), (4, 2)]))
    depth = draw(st.integers(1, 6))
    while n_paths(vocab, depth) > MAX_PATHS:
        depth -= 1
    return vocab, k, depth


@st.composite
def targets(draw, vocab: int, k: int, depth: int) -> tuple[torch.Tensor, SamplingSpec]:
    """Random target logits per path and processing (temperature, top-k, top-p)."""
    logits = random_logits(vocab, max(depth, k), draw(st.integers(0, 2**20)), draw(st.floats(0.3, 2.0)))
    spec = draw(sampling_specs(vocab))
    assume(well_conditioned(exact_first_k_law(probs_table(logits, spec), vocab, k)))
    return logits, spec


def table_step_fn(logits: torch.Tensor, vocab: int):
    """A drafter whose logits are a function of the token path (for build_tree)."""
    return lambda tree, frontier: logits[path_ids(tree, vocab)[frontier]]


@st.composite
def deterministic_cases(draw) -> LawCase:
    """Pools of EAGLE-2 trees from 1-3 drafters merged as a trie (`sum`, or `equal`, which cuts
    by score and drops any proposal table): duplicate tokens across drafters share a node."""
    vocab, k, depth = draw(shapes())
    pool = []
    for _ in range(draw(st.integers(1, 3))):
        trees = []
        for d in range(draw(st.integers(1, 3))):
            logits = random_logits(vocab, depth, draw(st.integers(0, 2**20)), draw(st.floats(0.5, 3.0)))
            spec = TreeSpec(depth=draw(st.integers(1, depth)), top_k=draw(st.integers(1, vocab)),
                            budget=draw(st.integers(1, 12)))
            trees.append(build_tree(0, table_step_fn(logits, vocab), spec, drafter_name=f"d{d}"))
        mode = draw(st.sampled_from(["sum", "equal"]))
        pool.append(merge_trees(trees, mode, budget=draw(st.integers(1, 12)) if mode == "equal" else None))
    logits, target = draw(targets(vocab, k, depth))
    return LawCase(vocab, k, logits, target, draw_batch=lambda n, rng: pool_batch(pool, vocab, n))


@st.composite
def sampled_cases(draw) -> LawCase:
    """1-3 drafters drawing with or without replacement, possibly beside a top-k drafter:
    duplicate draws within and across drafters, each row with its drafter's own q."""
    vocab, k, depth = draw(shapes())
    kinds = draw(st.lists(st.sampled_from(["without", "with", "topk"]), min_size=1, max_size=3))
    if all(kind == "topk" for kind in kinds):
        kinds[0] = "with"
    drafters = []
    for kind in kinds:
        q_logits = random_logits(vocab, depth, draw(st.integers(0, 2**20)), draw(st.floats(0.5, 3.0)))
        drafters.append(SimDrafter(
            kind=kind, q=probs_table(q_logits, draw(sampling_specs(vocab))), count=draw(st.integers(1, 3)),
            expand=draw(st.floats(0.1, 0.6)) / len(kinds),
        ))
    logits, target = draw(targets(vocab, k, depth))
    return LawCase(vocab, k, logits, target,
                   draw_batch=lambda n, rng: simulate_sampled(drafters, vocab, depth, n, rng))
