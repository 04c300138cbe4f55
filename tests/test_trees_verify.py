"""Greedy verification, batching, the shared logits processing, sampling and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

import trees
from trees import DraftTree, Proposals, SamplingSpec, process_logits, sample, verify
from trees.verifying import TreeBatch, verify_batch

FAST = settings(max_examples=60, derandomize=True, deadline=None, database=None)


@st.composite
def random_trees(draw, vocab: int, max_nodes: int = 30, distinct_siblings: bool = True) -> DraftTree:
    n = draw(st.integers(1, max_nodes))
    tokens, parents = [draw(st.integers(0, vocab - 1))], [-1]
    used: dict[int, set[int]] = {}
    for _ in range(1, n):
        parent = draw(st.integers(0, len(tokens) - 1))
        free = [t for t in range(vocab) if not distinct_siblings or t not in used.get(parent, set())]
        if not free:
            continue
        token = draw(st.sampled_from(free))
        used.setdefault(parent, set()).add(token)
        tokens.append(token), parents.append(parent)
    return DraftTree.from_lists(tokens, parents).validate(vocab)


def greedy_reference(tree: DraftTree, logits: torch.Tensor) -> tuple[list[int], int]:
    """Follow from the root the (first) child equal to the target argmax until none matches."""
    node, path = 0, [0]
    while True:
        best = int(logits[node].argmax())
        match = [c for c in tree.children(node) if int(tree.tokens[c]) == best]
        if not match:
            return path, best
        node = min(match)
        path.append(node)


@FAST
@given(st.data())
def test_greedy_accepts_the_longest_argmax_path(data):
    vocab = data.draw(st.integers(2, 6))
    tree = data.draw(random_trees(vocab))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    logits = torch.randn(len(tree), vocab, generator=g)
    # make acceptance likely: the target's argmax at a node is often one of its children
    for node in range(len(tree)):
        children = tree.children(node)
        if children and data.draw(st.booleans()):
            logits[node, tree.tokens[data.draw(st.sampled_from(children))]] += 10.0
    result = verify(tree, logits, SamplingSpec())
    argmax = logits.argmax(-1)
    on_argmax_path = [  # every next token along the root path is the target's argmax
        all(int(tree.tokens[c]) == int(argmax[tree.parents[c]]) for c in tree.path_to(i)[1:]) for i in range(len(tree))
    ]
    deepest = max((i for i in range(len(tree)) if on_argmax_path[i]), key=lambda i: int(tree.depths[i]))
    assert result.path.tolist() == tree.path_to(deepest)
    assert result.tokens.tolist() == tree.tokens[result.path].tolist()
    assert result.bonus == int(argmax[deepest])
    assert result.accepted == int(tree.depths[deepest])


@FAST
@given(st.data())
def test_greedy_with_duplicate_siblings_takes_the_first(data):
    vocab = data.draw(st.integers(2, 4))
    tree = data.draw(random_trees(vocab, distinct_siblings=False))
    logits = torch.randn(len(tree), vocab, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    for node in range(len(tree)):
        children = tree.children(node)
        if children:
            logits[node, tree.tokens[children[-1]]] += 10.0
    result = verify(tree, logits, SamplingSpec())
    assert (result.path.tolist(), result.bonus) == greedy_reference(tree, logits)


@FAST
@given(st.data())
def test_batched_greedy_equals_one_tree_at_a_time(data):
    vocab = data.draw(st.integers(2, 5))
    forest = [data.draw(random_trees(vocab, max_nodes=12)) for _ in range(data.draw(st.integers(1, 5)))]
    logits = [torch.randn(len(t), vocab) * 3 for t in forest]
    batch = verify_batch(TreeBatch.from_trees(forest), torch.cat(logits), SamplingSpec())
    for b, (tree, rows) in enumerate(zip(forest, logits)):
        single = verify(tree, rows, SamplingSpec())
        assert batch[b].path.tolist() == single.path.tolist()
        assert batch[b].bonus == single.bonus


@FAST
@given(st.data())
def test_sampling_a_batch_follows_each_trees_own_rows(data):
    """Sampling over a batch of several trees with a one-hot target (top_k=1: every draw is
    certain) takes, in every tree, the path its own logits rows dictate: a row offset or a
    neighbour's rows used by mistake changes some tree's path or bonus."""
    vocab = data.draw(st.integers(2, 5))
    forest = [data.draw(random_trees(vocab, max_nodes=12)) for _ in range(data.draw(st.integers(2, 5)))]
    logits = [torch.randn(len(t), vocab, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 999)))) * 3
              for t in forest]
    spec = SamplingSpec(temperature=0.8, top_k=1)
    batch = verify_batch(TreeBatch.from_trees(forest), torch.cat(logits), spec, torch.Generator().manual_seed(0))
    for b, (tree, rows) in enumerate(zip(forest, logits)):
        assert (batch[b].path.tolist(), batch[b].bonus) == greedy_reference(tree, rows)


def test_a_sure_target_accepts_the_whole_chain_in_sampling_mode():
    """A target that puts all its mass on the drafted chain (top_k=1) accepts every node."""
    tree = DraftTree.from_lists([5, 1, 2, 3], [-1, 0, 1, 2])
    logits = torch.zeros(4, 8)
    for node, nxt in enumerate([1, 2, 3, 7]):
        logits[node, nxt] = 4.0
    result = verify(tree, logits, SamplingSpec(temperature=1.0, top_k=1), torch.Generator().manual_seed(0))
    assert result.path.tolist() == [0, 1, 2, 3] and result.bonus == 7 and result.accepted == 3


# --- process_logits and sample --------------------------------------------------------------------
def reference_probs(logits: np.ndarray, spec: SamplingSpec) -> np.ndarray:
    """HF-style warpers in float64, one row at a time."""
    out = []
    for row in logits.astype(np.float64):
        if spec.greedy:
            one_hot = np.zeros_like(row)
            one_hot[np.argmax(row)] = 1
            out.append(one_hot)
            continue
        row = row / spec.temperature
        if 0 < spec.top_k < len(row):
            row = np.where(row < np.sort(row)[-spec.top_k], -np.inf, row)
        p = np.exp(row - row.max())
        p /= p.sum()
        if spec.top_p < 1:
            order = np.argsort(-p, kind="stable")
            before = np.cumsum(p[order]) - p[order]
            keep = np.zeros(len(p), bool)
            keep[order[before < spec.top_p]] = True
            p = np.where(keep, p, 0)
            p /= p.sum()
        out.append(p)
    return np.stack(out)


@FAST
@given(
    st.integers(2, 600), st.integers(1, 4), st.floats(0.0, 2.0), st.integers(0, 8),
    st.sampled_from([1.0, 0.95, 0.8, 0.5, 0.1]), st.floats(0.1, 20.0), st.integers(0, 2**16),
)
def test_process_logits_matches_reference_warpers(vocab, rows, temperature, top_k, top_p, scale, seed):
    if temperature < 0.05:
        temperature = 0.0
    spec = SamplingSpec(temperature=temperature, top_k=top_k, top_p=top_p)
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    probs = process_logits(logits, spec)
    assert probs.dtype == torch.float32 and probs.shape == logits.shape
    assert torch.allclose(probs.sum(-1), torch.ones(rows), atol=1e-5)
    np.testing.assert_allclose(probs.numpy(), reference_probs(logits.numpy(), spec), atol=2e-5)


def test_process_logits_details():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert process_logits(logits, SamplingSpec()).tolist() == [[0.0, 1.0, 0.0, 0.0]]  # first argmax on ties
    assert (process_logits(logits, SamplingSpec(1.0, top_k=2))[0, [0, 3]] == 0).all()
    kept = process_logits(logits, SamplingSpec(1.0, top_k=1))  # ties with the k-th value are kept
    assert torch.allclose(kept, torch.tensor([[0.0, 0.5, 0.5, 0.0]]))
    three_d = torch.randn(2, 3, 7)
    assert process_logits(three_d, SamplingSpec(0.7, top_p=0.9)).shape == (2, 3, 7)
    assert torch.allclose(process_logits(three_d.half(), SamplingSpec(1.0)),
                          torch.softmax(three_d.half().float(), -1), atol=1e-6)


def test_top_p_with_a_flat_large_vocabulary_uses_the_full_sort():
    """More than 256 candidates in the nucleus: the shortcut must fall back to a full sort."""
    logits = torch.randn(1, 5000, generator=torch.Generator().manual_seed(0)) * 0.1
    logits[0, :10] += 0.5
    probs = process_logits(logits, SamplingSpec(1.0, top_p=0.9))
    np.testing.assert_allclose(probs.numpy(), reference_probs(logits.numpy(), SamplingSpec(1.0, top_p=0.9)), atol=1e-6)
    assert int((probs > 0).sum()) > 256


def test_sample_has_the_law_of_probs():
    probs = torch.tensor([0.5, 0.0, 0.2, 0.3])
    n = 40_000
    draws = sample(probs.expand(n, 4), torch.Generator().manual_seed(0))
    counts = np.bincount(draws.numpy(), minlength=4)
    assert counts[1] == 0  # zero-probability tokens are never drawn
    expected = n * probs.numpy()[[0, 2, 3]]
    assert chi2.sf((((counts[[0, 2, 3]] - expected) ** 2) / expected).sum(), 2) > 1e-3
    assert sample(torch.tensor([[0.0, 0.0, 1.0]])).tolist() == [2]
    assert sample(torch.full((2, 3, 5), 0.2)).shape == (2, 3)


# --- bad input --------------------------------------------------------------------------------------
def test_verify_rejects_bad_inputs():
    tree = DraftTree.from_lists([0, 1, 2], [-1, 0, 0])
    with pytest.raises(ValueError, match="target_logits must have shape"):
        verify(tree, torch.randn(2, 5), SamplingSpec())
    with pytest.raises(ValueError, match="outside the target vocabulary"):
        verify(tree, torch.randn(3, 2), SamplingSpec())
    tree.proposals = Proposals(parent=torch.tensor([0]), child=torch.tensor([1]), q=torch.full((1, 4), 0.25))
    with pytest.raises(ValueError, match="proposal q has 4 columns"):
        verify(tree, torch.randn(3, 5), SamplingSpec(1.0))


ROOT_SPECS = [SamplingSpec(), SamplingSpec(1.0), SamplingSpec(0.7, top_k=5), SamplingSpec(1.3, top_p=0.8)]


@FAST
@given(vocab=st.integers(1, 60), root=st.integers(0, 59), ties=st.booleans(), spec=st.sampled_from(ROOT_SPECS),
       seed=st.integers(0, 2**16))
def test_a_root_alone_verifies_as_the_tree_path_does(vocab, root, ties, spec, seed):
    """A plain step takes verify's shortcut: the same path, tokens and bonus (greedy: the first
    maximum on ties; sampled: the same draw) as the tree machinery gives, and the generator left
    in the same state."""
    tree = DraftTree.from_lists([root % vocab], [-1])
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(seed))
    if ties:
        logits = logits.round()  # several maxima
    g_fast, g_slow = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    fast = verify(tree, logits, spec, g_fast)
    slow = verify_batch(TreeBatch.from_trees([tree]), logits, spec, g_slow)[0]
    assert torch.equal(fast.path, slow.path) and torch.equal(fast.tokens, slow.tokens) and fast.bonus == slow.bonus
    assert torch.equal(torch.rand(3, generator=g_fast), torch.rand(3, generator=g_slow))


@FAST
@given(st.data())
def test_a_greedy_tree_walk_verifies_as_the_batch_machinery_does(data):
    """verify's greedy walk over one tree (Python lists) gives verify_batch's path, tokens and
    bonus, duplicate siblings and tied maxima included; past GREEDY_WALK_NODES verify runs the
    batch machinery."""
    from trees import verifying

    vocab = data.draw(st.integers(2, 6))
    tree = data.draw(random_trees(vocab, distinct_siblings=data.draw(st.booleans())))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    logits = torch.randn(len(tree), vocab, generator=g)
    if data.draw(st.booleans()):
        logits = logits.round()  # several maxima
    for node in range(len(tree)):
        children = tree.children(node)
        if children and data.draw(st.booleans()):
            logits[node, tree.tokens[data.draw(st.sampled_from(children))]] += 10.0
    slow = verify_batch(TreeBatch.from_trees([tree]), logits, SamplingSpec())[0]
    for walk_limit in (verifying.GREEDY_WALK_NODES, 0):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(verifying, "GREEDY_WALK_NODES", walk_limit)
            fast = verify(tree, logits, SamplingSpec())
        assert torch.equal(fast.path, slow.path) and torch.equal(fast.tokens, slow.tokens) and fast.bonus == slow.bonus


def test_the_greedy_walk_refuses_what_the_batch_machinery_refuses():
    for tokens, parents, depths, match in [
        ([0, 1, 2], [-1, 0, 2], None, "every parent must precede its child"),
        ([0, 1, 2], [-1, 0, -1], None, "node 0 must be the only root"),
        ([0, 1, 2], [-1, 0, 1], [0, 1, 1], "depths do not equal"),
    ]:
        tree = DraftTree.from_lists(tokens, parents)
        if depths is not None:
            tree.depths = torch.tensor(depths)
        for walk in (True, False):
            with pytest.raises(ValueError, match=match):
                if walk:
                    verify(tree, torch.randn(3, 5), SamplingSpec())
                else:
                    verify_batch(TreeBatch.from_trees([tree]), torch.randn(3, 5), SamplingSpec())
    tree = DraftTree.from_lists([0, 1, 2], [-1, 0, 1])
    logits = torch.randn(3, 5)
    logits[1, 2] = float("nan")
    with pytest.raises(trees.NonFiniteLogitsError, match="target's verify forward"):
        verify(tree, logits, SamplingSpec())


def test_a_root_alone_is_checked_too():
    tree = DraftTree.from_lists([3], [-1])
    with pytest.raises(ValueError, match="target_logits must have shape"):
        verify(tree, torch.randn(2, 5), SamplingSpec())
    with pytest.raises(ValueError, match="outside the target vocabulary"):
        verify(tree, torch.randn(1, 3), SamplingSpec())
    for bad in (float("nan"), float("-inf")):
        logits = torch.zeros(1, 5)
        logits[0, 1 if bad != bad else slice(None)] = bad
        for spec in ROOT_SPECS:
            with pytest.raises(trees.NonFiniteLogitsError, match="target's verify forward"):
                verify(tree, logits, spec, torch.Generator().manual_seed(0))


def test_sampling_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="temperature"):
        SamplingSpec(temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        SamplingSpec(top_k=-2)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSpec(top_p=0.0)


# --- malformed trees, proposal rows and non-finite logits are refused, not verified ------------------
def sampled_tree(parent, child, q) -> DraftTree:
    tree = DraftTree.from_lists([0, 1, 2, 3], [-1, 0, 1, 0])
    tree.proposals = Proposals(parent=torch.tensor(parent), child=torch.tensor(child), q=torch.tensor(q))
    return tree


@pytest.mark.parametrize("tree, message", [
    # q gives the drawn token probability 0: without the check it is accepted with probability 1
    (sampled_tree([0], [1], [[0.5, 0.0, 0.25, 0.25]]), "probability 0"),
    # a row at the root pointing at a grandchild: token 2 would be emitted unverified at depth 1
    (sampled_tree([0], [2], [[0.25] * 4]), "not a child of it"),
    (sampled_tree([0], [0], [[0.25] * 4]), "child of their parent"),
    (sampled_tree([0], [9], [[0.25] * 4]), "child of their parent"),
    (sampled_tree([0], [1], [[0.25, float("nan"), 0.25, 0.25]]), "probability nan"),
])
def test_verify_rejects_malformed_proposal_rows(tree, message):
    logits = torch.zeros(4, 4)
    with pytest.raises(ValueError, match=message):
        verify(tree, logits, SamplingSpec(1.0), torch.Generator().manual_seed(0))


def test_verify_checks_proposal_values_in_debug_mode():
    tree = sampled_tree([0], [1], [[0.5, 0.5, 0.5, 0.0]])  # does not sum to 1
    previous = trees.debug_checks()
    try:
        trees.debug_checks(False)
        verify(tree, torch.zeros(4, 4), SamplingSpec(1.0), torch.Generator().manual_seed(0))  # cheap checks only
        trees.debug_checks(True)
        with pytest.raises(ValueError, match="sum to 1"):
            verify(tree, torch.zeros(4, 4), SamplingSpec(1.0), torch.Generator().manual_seed(0))
    finally:
        trees.debug_checks(previous)


def test_the_suite_runs_in_debug_mode():
    assert trees.debug_checks()


@pytest.mark.parametrize("tokens, parents, depths, message", [
    ([0, 1, 2], [-1, 2, 0], None, "parent must precede"),
    ([0, 1, 2], [-1, 0, -1], None, "only root"),
    ([0, 1, 2], [-1, 0, 1], [0, 1, 1], "depths"),
    ([0, 1, -2], [-1, 0, 1], None, "outside the target vocabulary"),
])
def test_verify_rejects_malformed_trees(tokens, parents, depths, message):
    tree = DraftTree(torch.tensor(tokens), torch.tensor(parents), torch.zeros(3), torch.ones(3, dtype=torch.long),
                     depths=torch.tensor(depths) if depths else None)
    for spec in (SamplingSpec(), SamplingSpec(1.0)):
        with pytest.raises(ValueError, match=message):
            verify(tree, torch.zeros(3, 4), spec, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("spec", [SamplingSpec(), SamplingSpec(1.0), SamplingSpec(0.7, top_p=0.9)])
def test_verify_refuses_non_finite_target_logits(bad, spec):
    tree = DraftTree.from_lists([0, 1, 2], [-1, 0, 1])
    logits = torch.zeros(3, 5)
    logits[1, 3] = bad
    with pytest.raises(trees.NonFiniteLogitsError, match="target's verify forward.*row 1"):
        verify(tree, logits, spec, torch.Generator().manual_seed(0))
    logits[1] = float("-inf")  # nothing finite in the row
    with pytest.raises(trees.NonFiniteLogitsError, match="target's verify forward"):
        verify(tree, logits, spec, torch.Generator().manual_seed(0))


def test_trees_verify_is_the_function_and_the_module_is_verifying():
    import importlib
    from pathlib import Path

    assert callable(trees.verify) and trees.verify is importlib.import_module("trees.verifying").verify
    assert not (Path(trees.__file__).parent / "verify.py").exists()  # no module shadowed by the function
