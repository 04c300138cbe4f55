"""Building trees: EAGLE-2 dynamic trees, chains and sampled trees, and the step_fn contract."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from trees import DraftTree, SamplingSpec, SparseLogits, TreeSpec, build_chain, build_tree, process_logits
from trees.build import draw_without_replacement
from trees.checks import NonFiniteLogitsError

FAST = settings(max_examples=40, derandomize=True, deadline=None, database=None)


class RecordingDrafter:
    """A drafter whose logits are a random function of the token path; checks the step_fn
    contract on every call: frontier nodes are in the partial tree, parents fed before children,
    each node fed once, and node indices stable (each partial tree extends the previous one)."""

    def __init__(self, vocab: int, seed: int, scale: float = 2.0, blocked: tuple[int, ...] = ()):
        self.vocab, self.seed, self.scale, self.blocked = vocab, seed, scale, blocked
        self.fed: list[int] = []
        self.last: DraftTree | None = None
        self.frontier_sizes: list[int] = []

    def logits_for(self, path: tuple[int, ...]) -> torch.Tensor:
        g = torch.Generator().manual_seed(hash((self.seed, path)) % 2**31)
        out = torch.randn(self.vocab, generator=g) * self.scale
        out[list(self.blocked)] = float("-inf")  # a truncated draft vocabulary
        return out

    def path_of(self, tree: DraftTree, node: int) -> tuple[int, ...]:
        return tuple(tree.tokens[tree.path_to(node)].tolist())

    def __call__(self, tree: DraftTree, frontier: torch.Tensor) -> torch.Tensor:
        tree.validate(self.vocab)
        if self.last is not None:  # append-only: the previous partial tree is a prefix
            n = len(self.last)
            assert torch.equal(tree.tokens[:n], self.last.tokens) and torch.equal(tree.parents[:n], self.last.parents)
        for node in frontier.tolist():
            assert 0 <= node < len(tree), "frontier node not in the partial tree"
            assert node not in self.fed, "node fed twice"
            assert node == 0 or int(tree.parents[node]) in self.fed, "child fed before its parent"
            self.fed.append(node)
        self.last = DraftTree(tree.tokens.clone(), tree.parents.clone(), tree.scores.clone(), tree.proposers.clone())
        self.frontier_sizes.append(frontier.numel())
        return torch.stack([self.logits_for(self.path_of(tree, i)) for i in frontier.tolist()])


def eagle2_reference(drafter: RecordingDrafter, root: int, spec: TreeSpec) -> dict[tuple[int, ...], float]:
    """Plain-Python EAGLE-2: token paths kept and their scores."""
    scores: dict[tuple[int, ...], float] = {}
    created: list[tuple[int, ...]] = []
    frontier = [(root,)]
    for _ in range(spec.depth):
        level = []
        for path in frontier:
            logq = torch.log_softmax(drafter.logits_for(path), -1)
            values, tokens = logq.topk(min(spec.top_k, drafter.vocab))
            for v, t in zip(values.tolist(), tokens.tolist()):
                if math.isfinite(v):
                    child = path + (t,)
                    scores[child] = scores.get(path, 0.0) + v
                    created.append(child), level.append(child)
        frontier = sorted(level, key=lambda p: -scores[p])[: spec.top_k]
    kept = sorted(created, key=lambda p: -scores[p])[: spec.budget]
    return {p: scores[p] for p in kept}


@FAST
@given(st.integers(2, 12), st.integers(1, 5), st.integers(1, 4), st.integers(1, 30), st.integers(0, 10**6))
def test_dynamic_tree_is_eagle2(vocab, depth, top_k, budget, seed):
    spec = TreeSpec(depth=depth, top_k=top_k, budget=budget)
    drafter = RecordingDrafter(vocab, seed)
    tree = build_tree(3 % vocab, drafter, spec, drafter_name="math").validate(vocab)
    assert tree.drafter_names == ("math",) and tree.proposals is None
    assert len(drafter.frontier_sizes) <= depth and max(drafter.frontier_sizes) <= top_k
    expected = eagle2_reference(RecordingDrafter(vocab, seed), 3 % vocab, spec)
    got = {tuple(tree.tokens[tree.path_to(i)].tolist()): float(tree.scores[i]) for i in range(1, len(tree))}
    assert set(got) == set(expected)
    for path, score in got.items():
        assert score == pytest.approx(expected[path], abs=1e-5)
    # ancestor-closed (node set) and siblings distinct
    assert all(int(tree.parents[i]) < i for i in range(1, len(tree)))
    keys = {(int(tree.parents[i]), int(tree.tokens[i])) for i in range(1, len(tree))}
    assert len(keys) == len(tree) - 1


def test_ties_keep_the_tree_ancestor_closed():
    """All logits equal: every score ties, the rerank must still keep parents."""
    def flat(tree, frontier):
        return torch.zeros(frontier.numel(), 6)
    for budget in range(1, 20):
        tree = build_tree(0, flat, TreeSpec(depth=4, top_k=3, budget=budget)).validate(6)
        assert len(tree) == budget + 1


def test_truncated_draft_vocabulary_never_proposes_blocked_tokens():
    drafter = RecordingDrafter(8, seed=1, blocked=(0, 1, 2, 3, 4, 5))  # only 6 and 7 are possible
    tree = build_tree(0, drafter, TreeSpec(depth=3, top_k=4, budget=20)).validate(8)
    assert set(tree.tokens[1:].tolist()) <= {6, 7} and torch.isfinite(tree.scores).all()


@FAST
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 20), st.integers(0, 10**6), st.booleans())
def test_sparse_logits_build_the_same_tree_as_dense(depth, top_k, budget, seed, sampled):
    """A truncated head's logits over its sub-vocabulary (SparseLogits) give the tree of the same
    logits spread over the full vocabulary with -inf elsewhere: the same tokens and parents; the
    scores to the last ulp or so (a softmax over 5 columns and over 12 reduce in different vector
    widths on AVX2, to the bit alike on AVX-512 only)."""
    allowed = torch.tensor([1, 4, 5, 9, 11])
    blocked = tuple(sorted(set(range(12)) - set(allowed.tolist())))
    dense, recorder = RecordingDrafter(12, seed, blocked=blocked), RecordingDrafter(12, seed, blocked=blocked)

    def sparse(tree, frontier):
        return SparseLogits(recorder(tree, frontier)[:, allowed], allowed, 12)

    spec = TreeSpec(depth=depth, top_k=top_k, budget=budget, sampled=sampled)
    sampling = SamplingSpec(temperature=0.8)
    a = build_tree(4, dense, spec, sampling, torch.Generator().manual_seed(seed))
    b = build_tree(4, sparse, spec, sampling, torch.Generator().manual_seed(seed))
    for field in ("tokens", "parents"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-6, atol=1e-6)
    if sampled:
        torch.testing.assert_close(a.proposals.q, b.proposals.q, rtol=1e-6, atol=1e-7)


def test_chain_is_the_top1_path():
    drafter = RecordingDrafter(10, seed=5)
    chain = build_chain(2, drafter, depth=5, drafter_name="chat").validate(10)
    assert chain.parents.tolist() == [-1, 0, 1, 2, 3, 4]
    path = (2,)
    for node in range(1, 6):
        token = int(drafter.logits_for(path).argmax())
        assert int(chain.tokens[node]) == token
        path += (token,)


def test_step_fn_with_a_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="step_fn returned logits of shape"):
        build_tree(0, lambda tree, frontier: torch.zeros(5), TreeSpec(depth=2, top_k=2, budget=3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "all -inf"])
@pytest.mark.parametrize("spec, sampling", [
    (TreeSpec(depth=3, top_k=2, budget=4), None),
    (TreeSpec(depth=3, top_k=2, budget=4, sampled=True), SamplingSpec(1.0)),
])
def test_non_finite_drafter_logits_name_the_drafter(bad, spec, sampling):
    def step(tree, frontier):
        logits = torch.zeros(frontier.numel(), 6)
        if len(tree) > 1:  # the second level goes wrong
            if bad == "all -inf":
                logits[-1] = float("-inf")
            else:
                logits[-1, 2] = bad
        return logits

    with pytest.raises(NonFiniteLogitsError, match="drafter 'math' produced non-finite logits"):
        build_tree(0, step, spec, sampling, torch.Generator().manual_seed(0), drafter_name="math")


# --- sampled trees ----------------------------------------------------------------------------------
@FAST
@given(st.integers(3, 12), st.integers(1, 5), st.integers(1, 4), st.integers(1, 30), st.integers(0, 10**6),
       st.sampled_from([SamplingSpec(1.0), SamplingSpec(0.7, top_p=0.9), SamplingSpec(1.3, top_k=3)]))
def test_sampled_tree_records_what_each_child_was_drawn_from(vocab, depth, top_k, budget, seed, sampling):
    drafter = RecordingDrafter(vocab, seed)
    spec = TreeSpec(depth=depth, top_k=top_k, budget=budget, sampled=True)
    tree = build_tree(0, drafter, spec, sampling, torch.Generator().manual_seed(seed)).validate(vocab)
    rows = tree.proposals
    assert len(tree) - 1 <= budget and len(rows) == len(tree) - 1  # one row per draw, no duplicates
    assert rows.child.tolist() == list(range(1, len(tree)))
    for node in range(len(tree)):
        children = [c for c in tree.children(node)]
        if not children:
            continue
        path = tuple(tree.tokens[tree.path_to(node)].tolist())
        q = process_logits(drafter.logits_for(path), sampling)
        for child in children:  # the j-th draw came from q without the earlier draws, renormalised
            expected = q.clone()
            expected[tree.tokens[[c for c in children if c < child]]] = 0
            torch.testing.assert_close(rows.q[child - 1], expected / expected.sum())
            assert float(tree.scores[child]) == pytest.approx(float(tree.scores[node] + q[tree.tokens[child]].log()), abs=1e-5)


def test_sampled_children_counts_do_not_depend_on_the_draws():
    """With full-support q the tree shape per level (children per node, in frontier order) is
    the same for every seed: counts are fixed before drawing, nothing is cut after."""
    shapes = set()
    for seed in range(12):
        drafter = RecordingDrafter(50, seed=seed % 3)
        tree = build_tree(0, drafter, TreeSpec(depth=5, top_k=4, budget=23, sampled=True), SamplingSpec(1.0),
                          torch.Generator().manual_seed(seed))
        per_level = tuple(tuple(sorted(len(tree.children(n)) for n in range(len(tree)) if int(tree.depths[n]) == d))
                          for d in range(5))
        shapes.add((per_level, tuple(drafter.frontier_sizes)))
        assert len(tree) - 1 == 23
    assert len(shapes) == 1


def test_greedy_sampling_falls_back_to_the_dynamic_tree():
    spec = TreeSpec(depth=3, top_k=2, budget=5, sampled=True)
    a = build_tree(1, RecordingDrafter(9, 4), spec, SamplingSpec(0.0))
    b = build_tree(1, RecordingDrafter(9, 4), TreeSpec(depth=3, top_k=2, budget=5))
    assert a.proposals is None and torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)


def test_draws_without_replacement_have_the_sequential_law():
    """Gumbel-top-k gives ordered pairs with P(a, b) = q(a) q(b) / (1 - q(a))."""
    q = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 60_000
    draws = draw_without_replacement(q.expand(n, 4), 2, torch.Generator().manual_seed(0)).numpy()
    assert (draws[:, 0] != draws[:, 1]).all()
    counts = np.bincount(draws[:, 0] * 4 + draws[:, 1], minlength=16)
    qn = q.double().numpy()
    law = np.array([qn[a] * qn[b] / (1 - qn[a]) if a != b else 0.0 for a in range(4) for b in range(4)])
    possible = law > 0
    stat = (((counts[possible] - n * law[possible]) ** 2) / (n * law[possible])).sum()
    assert chi2.sf(stat, possible.sum() - 1) > 1e-3 and counts[~possible].sum() == 0


def test_stop_below_ends_the_build_where_no_path_is_likely_enough():
    """A drafter with a uniform next-token distribution over 4 tokens: a path of depth d has
    probability 4^-d, so stop_below=0.05 stops after the level that made depth-3 nodes (1/64),
    whatever `depth` allows; 0 drafts every level; a sampled build never stops early."""
    uniform = lambda tree, frontier: torch.zeros(frontier.numel(), 4)  # noqa: E731
    full = build_tree(0, uniform, TreeSpec(depth=6, top_k=2, budget=64))
    stopped = build_tree(0, uniform, TreeSpec(depth=6, top_k=2, budget=64, stop_below=0.05))
    assert int(full.depths.max()) == 6 and int(stopped.depths.max()) == 3
    sampled = [build_tree(0, uniform, TreeSpec(depth=6, top_k=2, budget=12, sampled=True, stop_below=stop),
                          SamplingSpec(temperature=1.0), torch.Generator().manual_seed(0)) for stop in (0.0, 0.05)]
    assert torch.equal(sampled[0].depths, sampled[1].depths) and int(sampled[1].depths.max()) > 3
    with pytest.raises(ValueError, match="stop_below"):
        TreeSpec(stop_below=1.0)


def test_lockstep_builds_over_one_vocabulary_equal_each_build_alone_to_the_bit(monkeypatch):
    """build_lockstep runs one softmax and one top-k over the rows of every dynamic build whose
    logits cover one vocabulary (here two sparse drafters over one draft vocabulary and two dense
    ones, of two widths); each tree is still exactly the tree its drafter builds alone."""
    from trees import build, build_lockstep, new_build

    ids = torch.tensor([1, 3, 4, 8, 9, 12, 15, 20, 21, 30])

    def sparse(d: RecordingDrafter):
        return lambda tree, frontier: SparseLogits(d(tree, frontier)[:, ids], ids, d.vocab)

    def fresh():
        return [sparse(RecordingDrafter(40, seed=1)), sparse(RecordingDrafter(40, seed=2)),
                RecordingDrafter(40, seed=3), RecordingDrafter(40, seed=4), RecordingDrafter(33, seed=5)]

    spec = TreeSpec(depth=4, top_k=3, budget=10)
    alone = [build_tree(5, fn, spec, drafter_name=f"d{i}") for i, fn in enumerate(fresh())]
    fns, batches = fresh(), []
    real_top_children = build.top_children
    monkeypatch.setattr(build, "top_children", lambda outs, k: batches.append(len(outs)) or real_top_children(outs, k))
    together = build_lockstep([new_build(5, spec, None, None, f"d{i}") for i in range(len(fns))],
                              lambda trees, frontiers: [fn(t, f) for fn, t, f in zip(fns, trees, frontiers)])
    for a, b in zip(alone, together):
        for field in ("tokens", "parents", "scores", "depths", "entropies"):  # entropies: NaN where not expanded
            torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=0, atol=0, equal_nan=True)
    assert batches[:3] == [2, 2, 1]  # the sparse pair, the dense pair of width 40, the width-33 one
