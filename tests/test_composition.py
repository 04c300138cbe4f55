"""Every composition strategy is lossless, and the routing and merge rules do what they say."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compose import Composer
from compose.strategies import average_drafters
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from routing import ConfidenceRouter, EntropyRouter
from trees import DraftTree, SamplingSpec
from tiny_models import tiny_model

TARGET = tiny_model("llama", layers=3, seed=3)
QWEN = tiny_model("qwen2", layers=3, seed=4)


def drafter_pool(target, n: int) -> dict:
    """n drafters of mixed kinds and quality for one target."""
    vocab = target.config.vocab_size
    kinds = [
        lambda i: EarlyExitDrafter(target, 1, name=f"ee{i}"),
        lambda i: CausalLMDrafter(copy.deepcopy(target), vocab, name=f"self{i}"),
        lambda i: CausalLMDrafter(tiny_model(target.config.model_type, vocab=vocab, layers=1, seed=20 + i), vocab, name=f"lm{i}"),
        lambda i: EarlyExitDrafter(target, 2, name=f"ee2-{i}"),
    ]
    return {f"d{i}": kinds[i % len(kinds)](i) for i in range(n)}


def plain_greedy(model, prompt, n):
    return model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(prompt):].tolist()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    strategy=st.sampled_from(["confidence", "entropy", "merged_tree", "merged_tree_equal"]),
    model=st.sampled_from(["llama", "qwen2"]),
    n=st.integers(2, 4),
    prompt=st.lists(st.integers(0, 95), min_size=1, max_size=10),
    depth=st.integers(1, 4),
    top_k=st.integers(1, 4),
    budget=st.integers(1, 12),
)
def test_composing_strategies_are_greedy_lossless(strategy, model, n, prompt, depth, top_k, budget):
    target = TARGET if model == "llama" else QWEN
    composer = Composer(target, drafters=drafter_pool(target, n))
    tree = dict(depth=depth, top_k=top_k, budget=budget)
    if strategy == "merged_tree_equal":
        strategy, tree["merge_budget"] = "merged_tree", "equal"
    result = composer.generate(prompt, strategy=strategy, max_new_tokens=16, tree=tree)
    assert result.token_ids == plain_greedy(target, prompt, 16)
    if strategy == "confidence":
        assert len(result.stats.routing) == result.stats.n_steps
    if strategy == "entropy":
        assert len(result.stats.routing) == 1 and set(s.drafter for s in result.stats.steps) == set(result.stats.routing)


def test_averaged_is_greedy_lossless_and_averages():
    vocab = TARGET.config.vocab_size
    a = CausalLMDrafter(tiny_model("llama", layers=1, seed=30), vocab, name="a")
    b = CausalLMDrafter(tiny_model("llama", layers=1, seed=31), vocab, name="b")
    composer = Composer(TARGET, drafters={"a": a, "b": b})
    result = composer.generate([4, 5, 6], strategy="averaged", max_new_tokens=16, weights=[1.0, 3.0])
    assert result.token_ids == plain_greedy(TARGET, [4, 5, 6], 16)
    avg = average_drafters({"a": a, "b": b}, [1.0, 3.0])  # normalised: 1/4 and 3/4
    for name, w in avg.model.state_dict().items():
        torch.testing.assert_close(w, 0.25 * a.model.state_dict()[name] + 0.75 * b.model.state_dict()[name])


def test_averaged_of_one_drafter_is_that_drafter():
    a = CausalLMDrafter(tiny_model("llama", layers=1, seed=30), TARGET.config.vocab_size, name="a")
    avg = average_drafters({"a": a})
    for name, w in a.model.state_dict().items():
        assert torch.equal(avg.model.state_dict()[name], w)
    one = Composer(TARGET, drafters={"a": a})
    tree = dict(depth=3, top_k=2, budget=5)  # fixed: tree="auto" would size each strategy's trees by its own timings
    r_single = one.generate([7, 8], strategy="single", max_new_tokens=12, tree=tree)
    r_avg = one.generate([7, 8], strategy="averaged", max_new_tokens=12, tree=tree)
    assert r_avg.token_ids == r_single.token_ids
    assert [s.accepted for s in r_avg.stats.steps] == [s.accepted for s in r_single.stats.steps]


@pytest.mark.parametrize("mode", ["sum", "equal"])
@pytest.mark.parametrize("copies", [2, 3])
def test_merged_copies_of_one_drafter_equal_single(mode, copies):
    drafter = EarlyExitDrafter(TARGET, 2, name="ee")
    single = Composer(TARGET, drafters={"ee": drafter})
    merged = Composer(TARGET, drafters={f"c{i}": EarlyExitDrafter(TARGET, 2, name=f"c{i}") for i in range(copies)})
    tree = dict(depth=4, top_k=3, budget=8, merge_budget=mode)
    r1 = single.generate([9, 8, 7], strategy="single", max_new_tokens=24, tree=tree)
    r2 = merged.generate([9, 8, 7], strategy="merged_tree", max_new_tokens=24, tree=tree)
    assert r2.token_ids == r1.token_ids
    assert [(s.accepted, s.tree_size) for s in r2.stats.steps] == [(s.accepted, s.tree_size) for s in r1.stats.steps]
    assert r2.stats.tau == r1.stats.tau
    # every accepted token was proposed by every copy
    assert all(names == [f"c{i}" for i in range(copies)] for s in r2.stats.steps for names in s.accepted_by)


def test_equal_budget_verifies_exactly_the_budget_and_sum_the_union():
    drafters = drafter_pool(TARGET, 3)
    composer = Composer(TARGET, drafters=drafters)
    budget = 6
    eq = composer.generate([1, 2, 3], strategy="merged_tree", max_new_tokens=12,
                           tree=dict(depth=3, top_k=3, budget=budget, merge_budget="equal"))
    assert all(s.tree_size == budget + 1 for s in eq.stats.steps)
    sm = composer.generate([1, 2, 3], strategy="merged_tree", max_new_tokens=12,
                           tree=dict(depth=3, top_k=3, budget=budget, merge_budget="sum"))
    sizes = [s.tree_size for s in sm.stats.steps]
    assert all(budget + 1 <= n <= 3 * budget + 1 for n in sizes) and max(sizes) > budget + 1


def _tree(scores, entropies=None, name="x"):
    n = len(scores) + 1
    t = DraftTree.from_lists(list(range(n)), [-1] + [0] * (n - 1), [0.0] + scores, drafter_names=(name,))
    if entropies is not None:
        t.entropies = torch.tensor([float("nan")] * (n - len(entropies)) + entropies) if len(entropies) < n else torch.tensor(entropies)
    return t


def test_confidence_router_picks_the_highest_mean_path_probability():
    import math

    trees = {
        "a": _tree([math.log(0.5), math.log(0.5)]),  # mean 0.5
        "b": _tree([math.log(0.9), math.log(0.2), math.log(0.2)]),  # mean 0.433
        "c": _tree([math.log(0.45)]),
    }
    assert ConfidenceRouter().choose(trees) == "a"
    assert ConfidenceRouter().scores(trees)["b"] == pytest.approx((0.9 + 0.2 + 0.2) / 3)


def test_entropy_router_picks_the_lowest_mean_entropy():
    trees = {"a": _tree([-1.0], [2.0, 1.0]), "b": _tree([-1.0], [0.5, 1.0]), "c": _tree([-1.0], [0.7, 0.9])}
    assert EntropyRouter().choose(trees) == "b"
    # ties go to the first drafter, so routing is deterministic
    assert EntropyRouter().choose({"x": _tree([-1.0], [1.0, 1.0]), "y": _tree([-1.0], [1.0, 1.0])}) == "x"


# the sampling law of merged_tree (and every other strategy): tests/test_e2e_law.py


# --- bad input ------------------------------------------------------------------------------------
def test_composition_errors():
    one = Composer(TARGET, drafters={"a": EarlyExitDrafter(TARGET, 1)})
    for strategy in ("confidence", "entropy", "merged_tree"):
        with pytest.raises(ValueError, match="at least 2 drafter"):
            one.generate([1, 2], strategy=strategy)
    two = Composer(TARGET, drafters=drafter_pool(TARGET, 2))
    with pytest.raises(ValueError, match="unknown drafter 'zzz'"):
        two.generate([1, 2], strategy="single", drafter="zzz")
    with pytest.raises(ValueError, match="one architecture"):
        two.generate([1, 2], strategy="averaged")
    other = tiny_model("llama", vocab=50)
    with pytest.raises(ValueError, match="another target"):
        two.add_drafter("foreign", CausalLMDrafter(other, 50))


def test_built_trees_record_the_drafter_entropy_of_expanded_nodes():
    from routing import tree_entropy
    from trees import TreeSpec, build_tree

    torch.manual_seed(0)
    peaked = torch.tensor([[8.0, 0.0, 0.0, 0.0]])
    flat = torch.zeros(1, 4)
    for logits, expected in ((peaked, None), (flat, float(torch.log(torch.tensor(4.0))))):
        tree = build_tree(0, lambda t, f, lg=logits: lg.expand(f.numel(), 4), TreeSpec(depth=2, top_k=2, budget=4))
        ent = tree.entropies
        assert ent.shape == (len(tree),) and torch.isnan(ent[tree.depths == 2]).all()
        if expected is not None:
            assert tree_entropy(tree) == pytest.approx(expected, rel=1e-5)
    assert tree_entropy(build_tree(0, lambda t, f: peaked.expand(f.numel(), 4), TreeSpec(depth=2, top_k=2, budget=4))) < 0.1
