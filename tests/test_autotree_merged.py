"""tree="auto" for merged trees (merged_tree, `sum`): each drafter's acceptance learnt on its own
nodes of the verified tree, the tree valued as its best drafter's, its cost that of every
drafter's nodes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compose import Composer
from compose.autotree import DEPTHS, MAX_NODES, TOP_KS, AutoTree, MergedAcceptance, PositionalAcceptance
from compose.costs import CostProfile
from compose.tree_policy import StepTimes
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from tiny_models import tiny_model
from trees import DraftTree, TreeSpec, merge_trees

# the default pair's profile on the 2-core dev machine (bf16 target, the math + chat lockstep group)
DEV_PROFILE = CostProfile(forward_ms={1: 22.3, 4: 22.5, 6: 23.7, 7: 25.7, 8: 25.8, 12: 29.6, 16: 32.9, 24: 40.5,
                                      32: 48.2, 48: 61.6, 64: 76.0},
                          level_ms={1: 2.2, 4: 2.2, 8: 3.1}, root_ms=2.9)


def chain(name: str, tokens: list[int], first_score: float = -0.1) -> DraftTree:
    """One drafter's chain under the root (token 1)."""
    n = len(tokens)
    return DraftTree.from_lists([1] + tokens, list(range(-1, n)), scores=[0.0] + [first_score * (i + 1) for i in range(n)],
                                drafter_names=(name,))


def merged_step(depth: int, accepted: int, chat_score: float = -0.05) -> tuple[DraftTree, torch.Tensor]:
    """math's and chat's chains of `depth` (disjoint tokens; chat always wrong, its scores
    `chat_score` per level) merged as a trie; the target accepts the first `accepted` tokens of
    math's chain."""
    math = chain("math", list(range(10, 10 + depth)))
    chat = chain("chat", list(range(40, 40 + depth)), first_score=chat_score)
    tree = merge_trees([math, chat])
    path = [0]
    for token in range(10, 10 + accepted):
        path.append(int(((tree.tokens == token) & (tree.parents == path[-1])).nonzero()))
    return tree, torch.tensor(path)


def test_each_drafter_learns_on_its_own_nodes():
    tree, path = merged_step(depth=3, accepted=2)
    model = MergedAcceptance(["math", "chat"])
    for m in model.models.values():
        m.hits.zero_(), m.trials.zero_()
        m.decay = 1.0
    model.observe(tree, path)
    math, chat = model.models["math"], model.models["chat"]
    # math: its own child is rank 1 at the root (chat's higher-scored child is not math's), hit;
    # then one deeper hit and the last accepted node's child a miss
    assert math.trials[:, 0].tolist() == [1.0, 2.0] and math.hits[:, 0].tolist() == [1.0, 1.0]
    assert math.trials[:, 1].sum() == 0  # no rank-2 trial: the root has one math child
    # chat: its child at the root missed, nothing deeper reached
    assert chat.trials[:, 0].tolist() == [1.0, 0.0] and chat.hits.sum() == 0


def test_a_drafter_that_proposes_nothing_misses_at_the_root():
    model = PositionalAcceptance(prior=(0.0,) * 8, weight=1e-9, decay=1.0)
    model.observe(DraftTree.root_only(1), torch.tensor([0]))
    assert model.trials[0, 0] == pytest.approx(1.0) and model.hits[0, 0] == pytest.approx(0.0)


def test_merged_tree_is_valued_as_its_best_drafters_tree():
    model = MergedAcceptance(["good", "poor"])
    model.models["good"] = PositionalAcceptance(prior=(0.8,) + (0.02,) * 7, weight=100.0)
    model.models["poor"] = PositionalAcceptance(prior=(0.3,) + (0.1,) * 7, weight=100.0)
    for depth, top_k in ((1, 1), (4, 1), (3, 3)):
        good = model.models["good"].expected_accepted(depth, top_k)
        poor = model.models["poor"].expected_accepted(depth, top_k)
        assert torch.equal(model.expected_accepted(depth, top_k), torch.maximum(good, poor))


@pytest.mark.parametrize("chat_score", [-0.2, -0.05])  # chat less / more confident than math
def test_a_deep_merged_acceptance_stream_gets_deep_uncut_chains(chat_score):
    """math accepts about 0.8 per token along its chain, chat nothing: the merged tree is worth
    math's chain. The pooled model (one tree of 2 x top-k children and 2 x budget nodes, ranks
    over both drafters' children) chose depth 4 cut to budget 2 per drafter when chat was the
    less confident (each drafter's tree a depth-2 chain, two draft levels paid and dropped, as
    in the measured runs), and depth 7, top-k 4, budget 31 per drafter (62 nodes) when chat was
    the more confident (its rank-2 children at the root looked accepted). Now: a deep chain,
    every drafted level kept."""
    auto = AutoTree(DEV_PROFILE, width=2, drafters=["math", "chat"], draft_units=1)
    lengths = [6, 2, 5, 6, 0, 4, 6, 3, 6, 1]  # accepted of math's depth-6 chain: ~0.8 per token
    for step in range(80):
        tree, path = merged_step(depth=6, accepted=lengths[step % len(lengths)], chat_score=chat_score)
        spec = TreeSpec(depth=6, top_k=1, budget=6)
        auto.observe(spec, tree, path, StepTimes(auto.draft_ms(6, 1) / 1e3, DEV_PROFILE.forward(len(tree)) / 1e3, 0.0))
    choice = auto.choose()
    assert choice is not None and choice.depth >= 4, choice
    assert choice.top_k <= 2 and choice.budget >= choice.depth, choice  # chain-like, no drafted level cut away
    assert auto.node_share == pytest.approx(1.0)  # disjoint chains: no node shared
    math_alone = 1.0 + float(auto.acceptance.models["math"].expected_accepted(choice.depth, choice.top_k)[choice.budget - 1])
    assert auto.expected_tokens(choice) == pytest.approx(math_alone)


def test_merged_strategy_gets_per_drafter_acceptance_and_one_cost_per_drafting_unit():
    target = tiny_model("llama", layers=3, seed=1)
    drafters = {"ee": EarlyExitDrafter(target, 1), "self": CausalLMDrafter(tiny_model("llama", layers=3, seed=1), 96, name="self")}
    composer = Composer(target, drafters=drafters)
    plain = composer.generate([3, 1, 4, 1, 5], strategy="autoregressive", max_new_tokens=24).token_ids
    result = composer.generate([3, 1, 4, 1, 5], strategy="merged_tree", max_new_tokens=24, tree="auto")
    assert result.token_ids == plain
    auto = next(v for k, v in composer.strategy_cache.items() if isinstance(k, tuple) and k[0] == "autotree")
    assert isinstance(auto.acceptance, MergedAcceptance) and sorted(auto.acceptance.models) == ["ee", "self"]
    assert auto.width == 2 and auto.draft_units == 2  # two architectures: two drafting calls
    # "self" is the target itself: its top-ranked children are learnt to be accepted
    assert auto.acceptance.models["self"].p[0, 0] > auto.acceptance.models["ee"].p[0, 0]


def _grid_search(auto: AutoTree) -> tuple[float, TreeSpec]:
    """The choice by an explicit loop over (top-k, depth, budget), each budget's step costed alone
    (a forward over the root and the draft nodes)."""
    best_rate, best = 0.0, None
    for top_k in TOP_KS:
        by_depth = auto.acceptance.expected_by_depth(top_k, DEPTHS)
        for depth in DEPTHS:
            for budget in range(1, min(by_depth[depth].numel(), MAX_NODES // auto.width) + 1):
                nodes = min(MAX_NODES, max(1, round(auto.node_share * auto.width * budget)))
                step = (auto.forward_scale * auto.costs.forward(1 + nodes) + auto.draft_scale * auto.draft_ms(depth, top_k)
                        + auto.overhead_ms)
                rate = 1e3 * (1.0 + float(by_depth[depth][budget - 1])) / step
                if rate > best_rate * (1 + 1e-9):
                    best_rate, best = rate, TreeSpec(depth=depth, top_k=top_k, budget=budget)
    return best_rate, best


@settings(derandomize=True, deadline=None, max_examples=40)
@given(width=st.sampled_from([1, 2, 3]), share=st.floats(0.3, 1.0), scale=st.floats(0.5, 3.0),
       first=st.lists(st.floats(0.0, 1.0), min_size=8, max_size=8), deeper=st.lists(st.floats(0.0, 1.0), min_size=8, max_size=8),
       knee=st.integers(2, 40), seed=st.integers(0, 2**16))
def test_the_vectorised_choice_is_the_grid_search(width, share, scale, first, deeper, knee, seed):
    """AutoTree._decide reads every (depth, budget) of a top-k as one table: its expected tokens
    are expected_by_depth's to the bit, and it picks the tree an explicit search over the grid
    picks (or one within 1e-9 of its rate)."""
    g = torch.Generator().manual_seed(seed)
    names = [f"d{i}" for i in range(width)]
    profile = CostProfile(forward_ms={1: 20.0, knee: 20.0 + knee * 0.1, 64: 20.0 + knee * 0.1 + (64 - knee) * 1.5},
                          level_ms={1: 2.0, 8: 3.5}, root_ms=2.5)
    auto = AutoTree(profile, width=width, drafters=names)
    models = auto.acceptance.models.values() if width > 1 else [auto.acceptance]
    for m in models:
        m.hits[0] = 50 * torch.tensor(first, dtype=torch.float64) * torch.rand(8, generator=g, dtype=torch.float64)
        m.hits[1] = 50 * torch.tensor(deeper, dtype=torch.float64)
        m.trials[:] = 50.0
    auto._shares.append(share)
    auto.forward_scale, auto.overhead_ms = scale, 1.5
    for top_k in TOP_KS:
        table = torch.from_numpy(auto.acceptance.expected_table(top_k, DEPTHS, MAX_NODES))
        for i, (depth, column) in enumerate(auto.acceptance.expected_by_depth(top_k, DEPTHS).items()):
            n = min(column.numel(), MAX_NODES)
            assert torch.equal(table[i, :n], column[:n]) and table[i, n:].isnan().all()
    _, best = auto._decide()
    rate, expected = _grid_search(auto)
    assert best.spec == expected or best.tokens_per_s == pytest.approx(rate, rel=1e-9)


def test_a_budget_is_priced_over_the_spread_of_merged_node_counts():
    """A merged tree's node count varies with how often the drafters agree; past a row tile the
    forward costs a step more (17 rows run the 32-row pass), so the mean cost over recent steps'
    shares is what a budget costs, more than the cost at the mean share."""
    cliff = CostProfile(forward_ms={1: 10.0, 16: 12.0, 17: 20.0, 32: 21.0, 64: 30.0}, level_ms={1: 2.0, 8: 2.5}, root_ms=2.0)
    auto = AutoTree(cliff, width=2, drafters=["a", "b"])
    def star(nodes: int) -> DraftTree:  # the root's children, half from each drafter
        return DraftTree.from_lists(list(range(1 + nodes)), [-1] + [0] * nodes, scores=[0.0] + [-0.1] * nodes,
                                    proposers=[3] + [1] * (nodes // 2) + [2] * (nodes - nodes // 2), drafter_names=("a", "b"))

    spec = TreeSpec(depth=1, top_k=8, budget=16)
    for nodes in (8, 16, 8, 16):  # the drafters' 32 nodes merged into 8, then 16
        auto.observe(spec, star(nodes), torch.tensor([0]), StepTimes(0.004, 0.012, 0.001))
    assert list(auto._shares) == [0.25, 0.5, 0.25, 0.5]
    priced = auto.forward_ms(np.array([16]))[0] / auto.forward_scale  # 1 + 8 or 1 + 16 nodes, alternately
    assert priced == pytest.approx((cliff.forward(9) + cliff.forward(17)) / 2)
    assert priced > cliff.forward(1 + round(0.375 * 32))
