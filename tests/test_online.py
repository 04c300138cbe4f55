"""The online router: gains against the verified continuation, exponential weights, probe
rounds, and the `online` strategy end to end (greedy-lossless, follows the better drafter,
drafts about one drafter per step)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compose import Composer
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from routing import OnlineRouter, tree_gain
from trees import DraftTree
from tiny_models import tiny_model

TARGET = tiny_model("llama", layers=3, seed=3)
VOCAB = TARGET.config.vocab_size


def one_hot(tokens, vocab=8):
    return torch.nn.functional.one_hot(torch.tensor(tokens), vocab).float()


# root -> 1 -> 2 -> 3 and root -> 4
TREE = DraftTree.from_lists([0, 1, 2, 3, 4], [-1, 0, 1, 2, 0])


def test_greedy_gain_counts_the_verified_tokens_the_tree_holds():
    assert tree_gain(TREE, torch.tensor([1, 2, 3, 5]), one_hot([1, 2, 3, 5])) == 3  # path + a missed bonus
    assert tree_gain(TREE, torch.tensor([1, 2, 6]), one_hot([1, 2, 6])) == 2
    assert tree_gain(TREE, torch.tensor([4, 7]), one_hot([4, 7])) == 1  # node 4 has no children
    assert tree_gain(TREE, torch.tensor([5]), one_hot([5])) == 0
    assert tree_gain(DraftTree.root_only(0), torch.tensor([1]), one_hot([1])) == 0


def test_sampled_gain_is_the_expected_acceptance_along_the_verified_path():
    probs = torch.full((3, 8), 0.05)
    probs[0, [1, 4]] = torch.tensor([0.4, 0.3])  # root: children 1 and 4 carry 0.7
    probs[1, 2] = 0.5  # node 1: child 2 carries 0.5
    probs[2, 3] = 0.9
    probs /= probs.sum(-1, keepdim=True)
    a0, a1, a2 = (float(probs[0, [1, 4]].sum()), float(probs[1, 2]), float(probs[2, 3]))
    assert tree_gain(TREE, torch.tensor([1, 2, 3]), probs) == pytest.approx(a0 + a0 * a1 + a0 * a1 * a2)
    assert tree_gain(TREE, torch.tensor([4, 0]), probs) == pytest.approx(a0)  # leaves the tree at node 4


def test_router_moves_weight_to_the_better_drafter_and_spaces_probes():
    router = OnlineRouter(["a", "b"], eta=0.5, probe_every=2, max_probe_every=8)
    assert router.leader() == "a" and router.probing()  # ties: the first; a turn starts with a probe
    router.record({"a": 0.0, "b": 3.0})
    assert router.leader() == "b" and router.weights()["b"] == pytest.approx(1 / (1 + math.exp(-1.5)))
    probes = []
    for step in range(1, 40):
        probes.append(router.probing())
        router.record({"a": 0.0, "b": 3.0} if probes[-1] else {"b": 2.0})
    gaps = [j - i for i, j in zip([k for k, p in enumerate(probes) if p], [k for k, p in enumerate(probes) if p][1:])]
    assert probes[:2] == [False, True]  # the lead changed at the first round: back to probe_every
    assert gaps[0] == 4 and max(gaps) == 8 and gaps == sorted(gaps)  # doubling while b leads clearly
    router.record({"a": 50.0})  # a non-probe step's partial gains do not move weights
    assert router.leader() == "b"


def test_router_rejects_bad_settings():
    with pytest.raises(ValueError, match="eta"):
        OnlineRouter(["a"], eta=0)
    with pytest.raises(ValueError, match="unknown drafters"):
        OnlineRouter(["a"], prior={"z": 1.0})


def pool():
    return {
        "weak": CausalLMDrafter(tiny_model("llama", layers=1, seed=21), VOCAB, name="weak"),
        "self": CausalLMDrafter(copy.deepcopy(TARGET), VOCAB, name="self"),  # the target itself: always right
    }


def plain_greedy(prompt, n):
    return TARGET.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(prompt):].tolist()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8), probe_every=st.integers(1, 4),
       probe_tree=st.sampled_from(["leader", "merged"]), depth=st.integers(1, 4), budget=st.integers(1, 8))
def test_online_is_greedy_lossless(prompt, probe_every, probe_tree, depth, budget):
    composer = Composer(TARGET, drafters=pool())
    result = composer.generate(prompt, strategy="online", max_new_tokens=16, probe_every=probe_every,
                               probe_tree=probe_tree, tree=dict(depth=depth, top_k=2, budget=budget))
    assert result.token_ids == plain_greedy(prompt, 16)
    assert len(result.stats.routing) == result.stats.n_steps


@pytest.mark.parametrize("probe_tree", ["leader", "merged"])
def test_online_follows_the_better_drafter_and_drafts_about_one_per_step(probe_tree):
    drafters = pool()
    calls = {n: 0 for n in drafters}
    for name, d in drafters.items():
        original = d.propose

        def counted(*args, _name=name, _original=original, **kw):
            calls[_name] += 1
            return _original(*args, **kw)

        d.propose = counted
    composer = Composer(TARGET, drafters=drafters)
    result = composer.generate([3, 1, 4, 1, 5], strategy="online", max_new_tokens=48, probe_every=4,
                               probe_tree=probe_tree, tree=dict(depth=4, top_k=1, budget=4))
    steps = result.stats.steps
    assert result.stats.routing[1:] == ["self"] * (len(steps) - 1)  # the leader after the first probe round
    verified = [s.drafter for s in steps[1:]]  # merged probe rounds verify no single drafter's tree
    assert set(verified) == ({"self"} if probe_tree == "leader" else {"self", None})
    assert steps[-1].accepted == 4 or len(steps) * 5 >= 48  # the self-drafter has everything accepted
    probes = calls["weak"]
    assert calls["self"] == len(steps) and 1 <= probes <= 1 + len(steps) // 4
    assert sum(calls.values()) <= 1.3 * len(steps) + 1


def test_online_options_are_validated():
    composer = Composer(TARGET, drafters=pool())
    with pytest.raises(ValueError, match="probe_tree"):
        composer.generate([1, 2], strategy="online", probe_tree="all")
    with pytest.raises(ValueError, match="takes no probe_every"):
        composer.generate([1, 2], strategy="merged_tree", probe_every=2)


def test_the_next_turn_starts_from_the_carried_weights():
    composer = Composer(TARGET, drafters=pool())
    tree = dict(depth=3, top_k=1, budget=3)
    first = composer.generate([3, 1, 4], strategy="online", max_new_tokens=12, tree=tree)
    assert first.stats.routing[0] == "weak"  # no information yet: the first drafter leads
    assert composer.generate([2, 7], strategy="online", max_new_tokens=4, tree=tree).stats.routing[0] == "self"
    fresh = composer.generate([2, 7], strategy="online", max_new_tokens=4, tree=tree, carry=0.0)
    assert fresh.stats.routing[0] == "weak"
    with pytest.raises(ValueError, match="carry"):
        composer.generate([2, 7], strategy="online", carry=-1.0)


def test_a_domain_prior_lets_the_prompts_domain_lead_from_the_first_step():
    """prior='domain': the domain router's choice drafts alone from the turn's first step, and
    the first probe round waits probe_every steps; output stays greedy-lossless."""
    from test_domain_router import counted, fitted_router

    low = counted(EarlyExitDrafter(TARGET, 1, name="low"))
    high = counted(CausalLMDrafter(tiny_model("llama", layers=1, seed=9), VOCAB, name="high"))
    composer = Composer(TARGET, drafters={"low": low, "high": high}, domain_router=fitted_router())
    tree = dict(depth=3, top_k=2, budget=5)
    for prompt, expected in (([3, 5, 1, 7, 2], "low"), ([80, 91, 75, 88], "high")):
        other = {"low": high, "high": low}[expected]
        before = other.calls
        result = composer.generate(prompt, strategy="online", prior="domain", probe_every=3, max_new_tokens=16,
                                   tree=tree)
        assert result.token_ids == plain_greedy(prompt, 16)
        assert result.stats.routing[:3] == [expected] * 3
        assert [s.drafter for s in result.stats.steps[:3]] == [expected] * 3
        assert other.calls - before <= 1 + (len(result.stats.steps) - 3) // 3  # probes only from step 3 on
        assert other.calls > before or len(result.stats.steps) <= 3


def test_a_domain_prior_needs_a_domain_router_over_the_drafters():
    composer = Composer(TARGET, drafters=pool())
    with pytest.raises(ValueError, match="domain router"):
        composer.generate([1, 2], strategy="online", prior="domain")
    with pytest.raises(ValueError, match="prior must be"):
        composer.generate([1, 2], strategy="online", prior="nonsense")
    from test_domain_router import fitted_router

    with pytest.raises(ValueError, match="not loaded"):
        Composer(TARGET, drafters=pool(), domain_router=fitted_router()).generate([1, 2], strategy="online",
                                                                                 prior="domain")


def test_probe_rounds_draft_feature_drafters_in_lockstep_and_agree_with_them_alone(monkeypatch):
    """Feature drafters of one architecture draft probe rounds together (one lockstep call) and
    the leader alone otherwise; both runners follow the accepted tokens, so a probe round's trees
    equal what each drafter drafts alone at that point, and the output stays greedy-lossless."""
    import compose.strategies.routed as routed
    from drafter_fixtures import tiny_drafter_model, tiny_target
    from drafters import FeatureDrafter

    target = tiny_target(layers=3, seed=2)
    drafters = {f"f{i}": FeatureDrafter(tiny_drafter_model(target, seed=30 + i), name=f"f{i}") for i in range(2)}
    compared = []
    original = routed.draft_with

    def checked(units, names, root, tree, sampling, generator):
        trees = original(units, names, root, tree, sampling, generator)
        if len(names) > 1:
            alone = {n: d.propose(root, tree, sampling, generator) for n, d in drafters.items()}
            compared.extend(torch.equal(trees[n].tokens, alone[n].tokens) and torch.equal(trees[n].parents, alone[n].parents)
                            for n in names)
        return trees

    monkeypatch.setattr(routed, "draft_with", checked)
    prompt = [5, 9, 2, 7]
    result = Composer(target, drafters=drafters).generate(prompt, strategy="online", probe_every=2, max_new_tokens=24,
                                                          tree=dict(depth=3, top_k=2, budget=5))
    plain = target.generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False)
    assert result.token_ids == plain[0, len(prompt):].tolist()
    groups = [s.draft_groups for s in result.stats.steps]
    assert [["f0", "f1"]] in groups and any(len(g) == 1 and len(g[0]) == 1 for g in groups)
    assert len(compared) >= 4 and all(compared)


def test_the_default_prior_is_the_domain_routers_when_one_covers_the_drafters():
    from test_domain_router import fitted_router

    drafters = {"low": EarlyExitDrafter(TARGET, 1, name="low"),
                "high": CausalLMDrafter(tiny_model("llama", layers=1, seed=9), VOCAB, name="high")}
    composer = Composer(TARGET, drafters=drafters, domain_router=fitted_router())
    tree = dict(depth=3, top_k=2, budget=5)
    default = composer.generate([80, 91, 75, 88], strategy="online", probe_every=3, max_new_tokens=12, tree=tree)
    assert [s.drafter for s in default.stats.steps[:3]] == ["high"] * 3  # no probe round at the turn's start
    carried = composer.generate([80, 91, 75, 88], strategy="online", prior="carry", probe_every=3, max_new_tokens=12,
                                tree=tree)
    assert carried.stats.steps[0].drafter is None  # the turn starts with a (merged) probe round
    assert Composer(TARGET, drafters=pool()).generate([1, 2], strategy="online", max_new_tokens=4,
                                                      tree=tree).stats.steps[0].drafter is None  # no router: carry
