"""Merging drafters' trees as a trie on the full token path, and cutting to a budget."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trees import DraftTree, Proposals, cut_to_budget, merge_trees
from trees.tree import path_min_scores

FAST = settings(max_examples=60, derandomize=True, deadline=None, database=None)


@st.composite
def drafter_trees(draw, vocab: int, root: int, name: str) -> DraftTree:
    """A random tree with non-increasing scores down every path (cumulative log-probs) and
    sometimes a proposal table for some of its children."""
    n = draw(st.integers(1, 25))
    tokens, parents, scores = [root], [-1], [0.0]
    for _ in range(1, n):
        parent = draw(st.integers(0, len(tokens) - 1))
        tokens.append(draw(st.integers(0, vocab - 1)))
        parents.append(parent)
        scores.append(scores[parent] - draw(st.floats(0.0, 3.0)))
    tree = DraftTree.from_lists(tokens, parents, scores, drafter_names=(name,))
    if n > 1 and draw(st.booleans()):
        rows = draw(st.lists(st.integers(1, n - 1), min_size=1, max_size=8))
        q = torch.rand(len(rows), vocab) + 0.01
        tree.proposals = Proposals(parent=tree.parents[rows], child=torch.tensor(rows), q=q / q.sum(-1, keepdim=True))
    return tree.validate(vocab)


def token_paths(tree: DraftTree) -> list[tuple[int, ...]]:
    return [tuple(tree.tokens[tree.path_to(i)].tolist()) for i in range(len(tree))]


@st.composite
def forests(draw):
    vocab = draw(st.integers(2, 6))
    k = draw(st.integers(1, 4))
    return vocab, [draw(drafter_trees(vocab, root=1, name=f"d{i}")) for i in range(k)]


@FAST
@given(forests())
def test_sum_merge_is_the_trie_union(forest):
    vocab, trees = forest
    merged = merge_trees(trees, "sum").validate(vocab)
    paths = token_paths(merged)
    index = {p: i for i, p in enumerate(paths)}
    assert len(index) == len(paths)  # one node per full token path: siblings never share a token
    assert merged.drafter_names == tuple(n for t in trees for n in t.drafter_names)
    expected_score: dict[tuple[int, ...], float] = {}
    expected_bits: dict[tuple[int, ...], int] = {}
    for bit, tree in enumerate(trees):
        for path, score in zip(token_paths(tree), tree.scores.tolist()):
            assert path in index  # every path of every input survives
            expected_score[path] = max(expected_score.get(path, float("-inf")), score)
            expected_bits[path] = expected_bits.get(path, 0) | 1 << bit
    assert set(index) == set(expected_score)  # and nothing else appears
    for path, node in index.items():
        assert float(merged.scores[node]) == pytest.approx(expected_score[path])
        assert int(merged.proposers[node]) == expected_bits[path]
        assert merged.proposers_of(node) == {f"d{b}" for b in range(len(trees)) if expected_bits[path] >> b & 1}


@FAST
@given(forests())
def test_sum_merge_keeps_every_proposal_row_in_order(forest):
    vocab, trees = forest
    merged = merge_trees(trees, "sum")
    expected = [(token_paths(t)[int(c)], q) for t in trees if t.proposals is not None
                for c, q in zip(t.proposals.child, t.proposals.q)]
    if not expected:
        assert merged.proposals is None
        return
    got = [(token_paths(merged)[int(c)], q) for c, q in zip(merged.proposals.child, merged.proposals.q)]
    assert [p for p, _ in got] == [p for p, _ in expected]  # duplicates keep their own rows
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, expected))
    assert torch.equal(merged.parents[merged.proposals.child], merged.proposals.parent)


@FAST
@given(forests(), st.integers(0, 40))
def test_equal_merge_cuts_to_the_budget_by_score(forest, budget):
    vocab, trees = forest
    union = merge_trees(trees, "sum")
    merged = merge_trees(trees, "equal", budget=budget).validate(vocab)  # validate: parents precede children
    assert len(merged) - 1 == min(budget, len(union) - 1)
    kept = set(token_paths(merged))
    assert all(p[:-1] in kept for p in kept if len(p) > 1)  # ancestor-closed
    if len(union) - 1 > budget:
        assert merged.proposals is None  # a cut that looked at scores: the match rule verifies it
        eff = path_min_scores(union)
        in_kept = torch.tensor([p in kept for p in token_paths(union)])
        if in_kept[1:].any() and (~in_kept).any():
            assert eff[in_kept][1:].min() >= eff[~in_kept].max()  # the best budget nodes were kept
    else:
        assert (merged.proposals is None) == (union.proposals is None)  # nothing cut: rows stay


def test_duplicate_sibling_nodes_inside_one_tree_collapse():
    tree = DraftTree.from_lists([0, 4, 4, 2], [-1, 0, 0, 2], [0, -1, -2, -3])
    merged = merge_trees([tree])
    assert token_paths(merged) == [(0,), (0, 4), (0, 4, 2)]
    assert merged.scores.tolist() == [0, -1, -3]


def test_cut_to_budget_with_non_monotone_scores_stays_closed():
    tree = DraftTree.from_lists([0, 1, 2, 3], [-1, 0, 1, 2], [0, -5, -1, -0.5])
    cut = cut_to_budget(tree, 2)
    assert token_paths(cut) == [(0,), (0, 1), (0, 1, 2)]


def test_merge_rejects_bad_input():
    a = DraftTree.from_lists([0, 1], [-1, 0], drafter_names=("a",))
    b = DraftTree.from_lists([0, 2], [-1, 0], drafter_names=("b",))
    with pytest.raises(ValueError, match="at least one tree"):
        merge_trees([])
    with pytest.raises(ValueError, match="share the root token"):
        merge_trees([a, DraftTree.from_lists([3, 1], [-1, 0], drafter_names=("c",))])
    with pytest.raises(ValueError, match="distinct drafter names"):
        merge_trees([a, a])
    with pytest.raises(ValueError, match="'sum' or 'equal'"):
        merge_trees([a, b], "union")
    with pytest.raises(ValueError, match="needs a budget"):
        merge_trees([a, b], "equal")
    with pytest.raises(ValueError, match="budget must be >= 0"):
        cut_to_budget(a, -1)
    bad = DraftTree.from_lists([0, 1], [-1, 1], drafter_names=("z",))
    with pytest.raises(ValueError, match="parents must precede children"):
        merge_trees([a, bad])
