"""tree="auto": the positional acceptance model, the choice against a cost profile, the cached
machine profile, and greedy equality."""
from __future__ import annotations

import json

import pytest
import torch

from compose import Composer
from compose.autotree import MAX_EXPLORE_GAP, PLAIN_REFRESH, PRIOR, AutoTree, PositionalAcceptance
from compose.tree_policy import StepTimes
from compose.costs import CostProfile, cached_json
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from tiny_models import tiny_model
from trees import DraftTree, TreeSpec


def brute_force_expected(p: list[list[float]], depth: int, top_k: int, budget: int) -> float:
    """EAGLE-2 on the positional model, by explicit node lists (ranks as paths); p[0] for the
    root's children, p[1] deeper."""
    value = {(): 1.0}
    frontier, made = [()], []
    for d in range(depth):
        level = [path + (r,) for path in frontier for r in range(top_k)]
        for path in level:
            value[path] = value[path[:-1]] * p[min(d, 1)][path[-1]]
        made += level
        frontier = sorted(level, key=lambda q: -value[q])[:top_k]
    return sum(sorted((value[q] for q in made), reverse=True)[:budget])


@pytest.mark.parametrize("depth, top_k", [(1, 1), (3, 1), (2, 3), (4, 2), (3, 4)])
def test_expected_accepted_is_the_eagle2_build_on_positional_values(depth, top_k):
    model = PositionalAcceptance(prior=(0.7, 0.2, 0.05, 0.02, 0.01, 0.01, 0.01, 0.01), weight=1.0)
    model.hits[1] = 99 * torch.tensor([0.9, 0.05, 0.02, 0.01, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    model.trials[1] = 99.0  # deeper levels accept more than the root's children
    assert model.p[1, 0] == pytest.approx(0.898)
    p = model.p.tolist()
    got = model.expected_accepted(depth, top_k)
    for budget in range(1, got.numel() + 1):
        assert float(got[budget - 1]) == pytest.approx(brute_force_expected(p, depth, top_k, budget))


def test_observe_counts_the_accepted_rank_at_every_reached_node():
    # root -> children 1 (score -0.1), 2 (-0.5); node 2 -> children 3 (-0.7), 4 (-0.6)
    tree = DraftTree.from_lists([0, 5, 6, 7, 8], [-1, 0, 0, 2, 2], scores=[0.0, -0.1, -0.5, -0.7, -0.6])
    model = PositionalAcceptance(prior=(0.0,) * 8, weight=1e-9, decay=1.0)
    model.observe(tree, torch.tensor([0, 2, 3]))  # rank 2 at the root, then rank 2 again (3 scores below 4)
    model.observe(tree, torch.tensor([0, 1]))  # rank 1; node 1 has no children: no trial there
    # the root's children (level 0): two trials of ranks 1 and 2, hits at rank 2 and rank 1
    assert model.trials[0, :3].round().tolist() == [2.0, 2.0, 0.0]
    assert model.hits[0, :3].round().tolist() == [1.0, 1.0, 0.0]
    # deeper (level 1): node 2's children, one trial, the hit at rank 2
    assert model.trials[1, :3].round().tolist() == [1.0, 1.0, 0.0]
    assert model.hits[1, :3].round().tolist() == [0.0, 1.0, 0.0]


def test_prior_yields_to_a_run_of_hits():
    """A near-perfect drafter's first-level estimate reaches its observed rate within tens of
    steps: a prior forgotten only as fast as the counts held it at 0.94 after 39 straight hits."""
    chain = DraftTree.from_lists([0, 5, 6, 7], [-1, 0, 1, 2], scores=[0.0, -0.1, -0.2, -0.3])
    model = PositionalAcceptance()
    for _ in range(39):
        model.observe(chain, torch.tensor([0, 1, 2, 3]))
    assert model.p[0, 0] > 0.98 and model.p[1, 0] > 0.98, model.p
    for _ in range(39):  # and back down as fast when the drafter stops being accepted
        model.observe(chain, torch.tensor([0]))
    assert model.p[0, 0] < 0.5, model.p
    assert model.prior_weight >= 0.5  # a floor: untried ranks keep the prior's value, not 0 / 0
    assert model.p[0, 7] == pytest.approx(PRIOR[7])


def flat_profile(forward_ms: dict[int, float], level_ms: float, root_ms: float) -> CostProfile:
    return CostProfile(forward_ms=forward_ms, level_ms={1: level_ms, 8: level_ms}, root_ms=root_ms)


def test_choice_follows_costs_and_acceptance():
    cheap_wide = flat_profile({1: 10.0, 64: 11.0}, level_ms=0.1, root_ms=0.1)
    good = PositionalAcceptance(prior=(0.9, 0.05, 0.02, 0.01, 0.01, 0.01, 0.01, 0.01), weight=100.0)
    spec = AutoTree(cheap_wide, acceptance=good).choose()
    assert spec is not None and spec.depth >= 6 and spec.budget >= 32  # forward cost flat: a big deep tree
    costly = flat_profile({1: 10.0, 2: 30.0, 64: 200.0}, level_ms=20.0, root_ms=20.0)
    auto = AutoTree(costly, acceptance=PositionalAcceptance(prior=(0.2,) + (0.01,) * 7, weight=100.0), explore_every=4)
    choices = [auto.choose() for _ in range(30)]
    # plain decoding, exploring after 4 plain steps, then 8, then 16 (drafting keeps losing)
    assert [i for i, c in enumerate(choices) if c is not None] == [3, 11, 27]


def test_a_tree_that_loses_by_a_little_backs_off_too():
    """The best tree predicted at ~0.9x plain decoding: explores still come ever rarer (each one
    pays the drafters' catch-up on every token since the last), up to MAX_EXPLORE_GAP."""
    profile = flat_profile({1: 10.0, 2: 16.0, 64: 300.0}, level_ms=0.2, root_ms=0.2)
    auto = AutoTree(profile, acceptance=PositionalAcceptance(prior=(0.5,) + (0.01,) * 7, weight=1e9), explore_every=4)
    plain, best = auto._decide()
    assert plain.spec is None and 0.85 < best.tokens_per_s / plain.tokens_per_s < 1.0
    drafted = [i for i in range(1300) if auto.choose() is not None]
    gaps = [b - a for a, b in zip(drafted, drafted[1:])]
    assert drafted[0] == 3 and gaps[:6] == [8, 16, 32, 64, 128, 256] and set(gaps[6:]) == {MAX_EXPLORE_GAP}


def test_plain_decoding_remakes_its_choice_rarely_until_a_drafted_step_is_seen(monkeypatch):
    """Decoding plainly, the choice is remade every PLAIN_REFRESH steps (only the cost scales
    move); after a drafted step's verification, at the next refresh."""
    profile = flat_profile({1: 10.0, 2: 30.0, 64: 200.0}, level_ms=20.0, root_ms=20.0)
    auto = AutoTree(profile, acceptance=PositionalAcceptance(prior=(0.2,) + (0.01,) * 7, weight=100.0))
    calls = []
    decide = auto._decide
    monkeypatch.setattr(auto, "_decide", lambda: calls.append(auto._steps) or decide())
    for _ in range(PLAIN_REFRESH + 2 * auto.refresh_every):
        auto.choose()
    assert calls == [0, PLAIN_REFRESH]
    spec = TreeSpec(depth=1, top_k=1, budget=1)
    auto.observe(spec, DraftTree.from_lists([1, 2], [-1, 0]), torch.tensor([0]), StepTimes(0.02, 0.03, 0.0))
    for _ in range(auto.refresh_every):
        auto.choose()
    assert calls == [0, PLAIN_REFRESH, PLAIN_REFRESH + 2 * auto.refresh_every]


def test_cached_json_measures_once_and_writes_atomically(tmp_path):
    path = tmp_path / "costs" / "x.json"
    assert cached_json(path, lambda: {"a": 1}) == {"a": 1}
    assert cached_json(path, lambda: pytest.fail("measured twice")) == {"a": 1}
    assert json.loads(path.read_text()) == {"a": 1} and not list(path.parent.glob(".tmp-*"))
    path.write_text("{not json")  # a torn or foreign file is measured again
    assert cached_json(path, lambda: {"b": 2}) == {"b": 2}


def test_a_profile_of_other_kernels_is_not_read(monkeypatch, tmp_path):
    """Profiles are keyed by the kernels' sources and switches: a kernel change or a switched-off
    kernel measures anew instead of reading times of other code (2026-12-06: a profile of the
    spilling float32 kernel kept auto from drafting after the fix)."""
    from compose import costs
    from runtime import native

    monkeypatch.delenv("SPECMUX_NATIVE_LINEAR", raising=False)
    monkeypatch.setenv("SPECMUX_COSTS", str(tmp_path))
    first = costs.profile_path("forward", "t")
    assert costs.profile_path("forward", "t") == first
    monkeypatch.setenv("SPECMUX_NATIVE_LINEAR", "0")
    assert costs.profile_path("forward", "t") != first
    monkeypatch.delenv("SPECMUX_NATIVE_LINEAR")
    monkeypatch.setattr(native, "_sources_digest", lambda: "another kernel")
    assert costs.profile_path("forward", "t") != first


@pytest.mark.parametrize("kind, strategy", [("early-exit", "single"), ("self", "single"), ("mixed", "merged_tree")])
def test_auto_tree_greedy_equals_plain_decoding(kind, strategy):
    """On the injected cost profile (conftest.py), where drafting pays."""
    target = tiny_model("llama", layers=3, seed=1)
    drafters = {"ee": EarlyExitDrafter(target, 1)}
    if kind == "self":
        drafters = {"self": CausalLMDrafter(tiny_model("llama", layers=3, seed=1), 96, name="self")}
    if kind == "mixed":
        drafters["self"] = CausalLMDrafter(tiny_model("llama", layers=3, seed=1), 96, name="self")
    composer = Composer(target, drafters=drafters)
    prompt = [3, 1, 4, 1, 5]
    plain = composer.generate(prompt, strategy="autoregressive", max_new_tokens=48).token_ids
    for _ in range(2):  # the second generation starts from what the first learnt
        result = composer.generate(prompt, strategy=strategy, max_new_tokens=48, tree="auto")
        assert result.token_ids == plain
        assert max(s.tree_size for s in result.stats.steps) > 1  # auto drafted
    if kind == "self":  # a perfect drafter: the top-ranked child is learnt to be always accepted
        auto = next(v for k, v in composer.strategy_cache.items() if isinstance(k, tuple) and k[0] == "autotree")
        assert auto.acceptance.p[:, 0].min() > PRIOR[0] + 0.05, auto.acceptance.p  # learnt upwards from the prior


@pytest.mark.measured_costs
def test_machine_profile_is_measured_once_then_read(tmp_path, monkeypatch):
    """The real measurement (no injected profile): the forward and the drafter profiles are
    written once; a second Composer reads them; an injected profile replaces them."""
    from compose.costs import fixed_profile, machine_profile
    from compose.lockstep import DraftUnit

    monkeypatch.setenv("SPECMUX_COSTS", str(tmp_path / "costs"))
    target = tiny_model("llama", layers=2, seed=1)
    composer = Composer(target, drafters={"ee": EarlyExitDrafter(target, 1)})
    unit = DraftUnit(["ee"], composer.drafters["ee"])
    measured = machine_profile(composer.target, unit)
    files = sorted((tmp_path / "costs").glob("*.json"))
    assert len(files) == 2  # the forward and the drafter profiles
    assert all(b >= a for a, b in zip(list(measured.forward_ms.values()), list(measured.forward_ms.values())[1:]))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert machine_profile(composer.target, unit) == measured  # read back, not measured again
    assert [f.stat().st_mtime_ns for f in files] == stamps
    injected = flat_profile({1: 5.0, 64: 9.0}, level_ms=1.0, root_ms=1.0)
    with fixed_profile(injected):
        assert machine_profile(composer.target, unit) is injected
    assert machine_profile(composer.target, unit) == measured


def test_bad_tree_option_is_named():
    target = tiny_model("llama", layers=2)
    with pytest.raises(ValueError, match="tree must be tree options or \"auto\""):
        Composer(target).generate([1, 2], strategy="autoregressive", tree="big")


@pytest.mark.measured_costs  # observes the times it gives, not the injected profile's
def test_drafting_that_delivers_less_than_predicted_yields_to_plain_decoding():
    """The model predicts drafting wins (its acceptance estimate is stuck high); the drafted
    steps deliver only their bonus token in the predicted time: auto goes back to plain
    decoding on measured throughput (exploring now and then)."""
    profile = flat_profile({1: 10.0, 8: 12.0, 64: 30.0}, level_ms=1.0, root_ms=1.0)
    auto = AutoTree(profile, acceptance=PositionalAcceptance(prior=(0.8,) + (0.05,) * 7, weight=1e9), refresh_every=1)
    spec = auto.choose()
    assert spec is not None
    tree = DraftTree.from_lists([1, 2, 3], [-1, 0, 1], scores=[0.0, -0.1, -0.2])
    for _ in range(40):
        forward_s = profile.forward(1 + spec.budget) / 1e3
        draft_s = (profile.root_ms + (spec.depth - 1) * profile.level(spec.top_k)) / 1e3
        auto.observe(spec, tree, torch.tensor([0]), StepTimes(draft_s, forward_s, 0.0))
    assert auto.reality < 0.6
    assert [auto.choose() is None for _ in range(8)].count(True) >= 7


def test_single_drafters_learn_their_own_acceptance():
    """single:a and single:b keep apart AutoTrees: one drafter's acceptance never sizes the other's trees."""
    target = tiny_model("llama", layers=3, seed=1)
    drafters = {"ee": EarlyExitDrafter(target, 1), "self": CausalLMDrafter(tiny_model("llama", layers=3, seed=1), 96, name="self")}
    composer = Composer(target, drafters=drafters)
    for name in ("ee", "self", "ee"):
        composer.generate([3, 1, 4], strategy="single", drafter=name, max_new_tokens=8, tree="auto")
    autos = {k: v for k, v in composer.strategy_cache.items() if isinstance(k, tuple) and k[0] == "autotree"}
    assert sorted(dict(k[2])["drafter"] for k in autos) == ["ee", "self"]
    assert len({id(v) for v in autos.values()}) == 2


@pytest.mark.measured_costs  # observes the times it gives, not the injected profile's
def test_reality_judges_past_steps_by_the_model_of_now():
    """Drafted steps that delivered what the acceptance model now expects measure reality 1,
    however much the model of their time promised: the start's optimism is lag the model learns
    away (at T = 1 the prior promised twice what the first steps delivered, and counting it again
    locked auto into plain decoding), not evidence against drafting."""
    profile = CostProfile(forward_ms={1: 48.0, 6: 50.0, 7: 57.0, 16: 76.0, 64: 210.0}, level_ms={1: 2.0, 8: 2.3}, root_ms=2.2)
    auto = AutoTree(profile, acceptance=PositionalAcceptance(prior=(0.9,) + (0.05,) * 7, weight=8.0, decay=1.0))
    spec = TreeSpec(depth=1, top_k=1, budget=1)
    tree = DraftTree.from_lists([1, 2], [-1, 0], scores=[0.0, -0.1])
    for step in range(12):  # the drafted child accepted on every other step
        path = torch.tensor([0, 1] if step % 2 else [0])
        auto.observe(spec, tree, path, StepTimes(profile.root_ms / 1e3, profile.forward(2) / 1e3, 0.0))
    prior_weight = 8.0 * 0.9**12  # the prior's weight after 12 verified steps (PRIOR_DECAY)
    assert auto.acceptance.prior_weight == pytest.approx(prior_weight)
    model_now = auto.expected_tokens(spec)  # (0.9 w + 6) / (w + 12) = 0.56 accepted per step
    assert model_now == pytest.approx(1.0 + (0.9 * prior_weight + 6) / (prior_weight + 12))
    assert auto.reality == pytest.approx(1.5 / model_now, rel=1e-6)  # delivered 1.5 per step, on time
    auto.acceptance.hits[0, 0], auto.acceptance.trials[0, 0] = 50.0, 100.0  # the model learns 0.5
    auto.acceptance.prior_weight = 0.0
    assert auto.reality == pytest.approx(1.0, rel=1e-6)




@pytest.mark.measured_costs  # observes the times it gives, not the injected profile's
def test_a_busy_spell_does_not_lock_auto_into_plain_decoding():
    """Drafting truly pays (a near-perfect drafter, a cheap verify), but after 30 quiet steps the
    machine turns busy: every step takes 3x the profile and one step in five 10x (another
    process's bursts). Auto keeps drafting: load slows both sides of its comparison alike, and
    single slow steps move its cost scales by a bounded amount."""
    profile = flat_profile({1: 10.0, 8: 11.0, 64: 14.0}, level_ms=0.5, root_ms=0.5)
    auto = AutoTree(profile, acceptance=PositionalAcceptance(prior=(0.9,) + (0.02,) * 7, weight=50.0), refresh_every=1)
    chain = DraftTree.from_lists(list(range(9)), list(range(-1, 8)), scores=[-0.1 * i for i in range(9)])
    drafted = 0
    for step in range(200):
        spec = auto.choose()
        slow = 1.0 if step < 30 else 3.0 * (10.0 if step % 5 == 4 else 1.0)
        if spec is None:
            auto.observe(None, DraftTree.root_only(1), torch.tensor([0]), StepTimes(0.0, slow * profile.forward(1) / 1e3, 0.0))
            continue
        drafted += 1
        tree = DraftTree.from_lists(chain.tokens[: spec.depth + 1].tolist(), chain.parents[: spec.depth + 1].tolist(),
                                    scores=chain.scores[: spec.depth + 1].tolist())
        path = torch.arange(min(spec.depth, 5) + 1)  # five draft tokens of each chain accepted
        auto.observe(spec, tree, path, StepTimes(slow * auto.draft_ms(spec.depth, spec.top_k) / 1e3,
                                                 slow * profile.forward(len(tree)) / 1e3, 0.0))
    assert drafted >= 190, drafted
    assert 2.0 < auto.forward_scale < 6.0  # the load is followed, the bursts are not
