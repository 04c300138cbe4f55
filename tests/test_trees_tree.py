"""The tree type: validation messages, sub-tree selection, networkx export."""
from __future__ import annotations

import networkx as nx
import pytest
import torch

from trees import DraftTree, Proposals
from trees.tree import check_ancestor_closed


def tree(tokens=(5, 1, 2, 3), parents=(-1, 0, 0, 1), **kw) -> DraftTree:
    return DraftTree.from_lists(list(tokens), list(parents), **kw)


@pytest.mark.parametrize("build, message", [
    (lambda: tree(parents=(-1, 2, 0, 1)), "parents must precede children"),  # forward parent
    (lambda: tree(parents=(-1, 0, 3, 2)), "parents must precede children"),  # cycle 2 <-> 3
    (lambda: tree(parents=(-1, 1, 0, 1)), "parents must precede children"),  # self-parent
    (lambda: tree(parents=(-1, -1, 0, 1)), "several roots"),
    (lambda: tree(parents=(0, 0, 0, 1)), "node 0 must be the root"),
    (lambda: tree(tokens=(5, 1, 200, 3)), "outside the vocabulary"),
    (lambda: tree(tokens=(5, -1, 2, 3)), "outside the vocabulary"),
    (lambda: tree(scores=[0, -1, float("nan"), -2]), "non-finite scores"),
    (lambda: tree(scores=[0, -1, float("-inf"), -2]), "non-finite scores"),
    (lambda: DraftTree(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0),
                       torch.zeros(0, dtype=torch.long)), "empty"),
    (lambda: DraftTree(torch.tensor([1, 2]), torch.tensor([-1, 0]), torch.zeros(3), torch.ones(2, dtype=torch.long)),
     "shape"),
    (lambda: DraftTree(torch.tensor([1, 2]), torch.tensor([-1, 0]), torch.zeros(2), torch.ones(2, dtype=torch.long),
                       depths=torch.tensor([0, 2])), "depths"),
    (lambda: tree(drafter_names=("a", "a")), "distinct"),
    (lambda: tree(proposers=[1, 1, 4, 1]), "proposers"),
])
def test_validation_names_the_problem(build, message):
    with pytest.raises(ValueError, match=message):
        build().validate(vocab_size=100)


def with_rows(parent, child, q) -> DraftTree:
    t = tree(tokens=(0, 1, 2, 3))
    t.proposals = Proposals(parent=torch.tensor(parent), child=torch.tensor(child), q=torch.tensor(q))
    return t


@pytest.mark.parametrize("build, message", [
    (lambda: with_rows([0], [3], [[0.25] * 4]), "child of their parent"),
    (lambda: with_rows([0], [0], [[0.25] * 4]), "child of their parent"),
    (lambda: with_rows([0], [1], [[0.5, 0.0, 0.25, 0.25]]), "probability 0"),
    (lambda: with_rows([0], [1], [[0.5, 0.5, 0.5, 0.0]]), "sum to 1"),
    (lambda: with_rows([0], [1], [[1.5, 0.5, -1.0, 0.0]]), "non-negative"),
    (lambda: with_rows([0, 0], [1], [[0.25] * 4]), "inconsistent shapes"),
])
def test_proposal_table_validation(build, message):
    with pytest.raises(ValueError, match=message):
        build().validate(vocab_size=4)


def test_ancestor_open_node_sets_are_rejected():
    t = tree()
    with pytest.raises(ValueError, match="node 3 is kept without its parent 1"):
        t.select(torch.tensor([True, False, True, True]))
    with pytest.raises(ValueError, match="root"):
        check_ancestor_closed(t.parents, torch.tensor([False, True, False, False]))


def test_select_renumbers_and_drops_the_proposal_table():
    t = with_rows([0, 0], [1, 2], [[0.25] * 4, [0.25] * 4])
    sub = t.select(torch.tensor([0, 2])).validate(4)
    assert sub.tokens.tolist() == [0, 2] and sub.parents.tolist() == [-1, 0] and sub.proposals is None
    sub = t.select(torch.tensor([True, True, False, True])).validate(4)
    assert sub.tokens.tolist() == [0, 1, 3] and sub.parents.tolist() == [-1, 0, 1] and sub.depths.tolist() == [0, 1, 2]


def test_to_networkx():
    t = tree(scores=[0.0, -0.5, -1.0, -2.0], drafter_names=("math", "chat"), proposers=[3, 1, 2, 3])
    g = t.to_networkx()
    assert nx.is_arborescence(g) and set(g.edges) == {(0, 1), (0, 2), (1, 3)}
    assert g.nodes[3] == {"token": 3, "depth": 2, "score": -2.0, "proposers": ["chat", "math"]}
    assert t.proposers_of(2) == {"chat"}


def test_queries():
    t = tree()
    assert len(t) == 4 and t.root_token == 5
    assert t.children(0) == [1, 2] and t.path_to(3) == [0, 1, 3]
    assert t.depths.tolist() == [0, 1, 1, 2]
    assert DraftTree.root_only(7, ("a", "b")).validate().proposers.tolist() == [3]
