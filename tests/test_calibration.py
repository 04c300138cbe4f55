"""Calibrated routing signals: per-drafter fits of the gain each signal predicts, learnt online
from verified outcomes, that make an over-confident drafter's signal comparable."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from compose import Composer
from drafters.lm import CausalLMDrafter
from routing import Calibration, ConfidenceRouter, domain_evidence
from routing.calibration import LinearFit, signal_feature
from trees import DraftTree
from tiny_models import tiny_model

TARGET = tiny_model("llama", layers=3, seed=3)
VOCAB = TARGET.config.vocab_size


def test_linear_fit_starts_at_the_prior_and_converges_to_least_squares():
    fit = LinearFit(a0=0.0, b0=2.0, strength=4.0)
    assert fit.predict(0.5) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    xs = rng.random(5000)
    for x in xs:
        fit.add(float(x), float(0.5 + 3.0 * x + rng.normal(0, 0.1)))
    a, b, c = fit.coefficients()
    assert a == pytest.approx(0.5, abs=0.02) and b == pytest.approx(3.0, abs=0.03) and c == 0.0


def chain(probs: list[float], name: str) -> DraftTree:
    scores = np.cumsum(np.log(probs)).tolist()
    tree = DraftTree.from_lists(list(range(len(probs) + 1)), list(range(-1, len(probs))), [0.0] + scores,
                                drafter_names=(name,))
    tree.entropies = torch.tensor([0.1] * len(probs) + [float("nan")])
    return tree


def test_unfitted_calibration_ranks_as_the_raw_signal_and_learns_over_confidence():
    trees = {"sharp": chain([0.95, 0.9, 0.9], "sharp"), "humble": chain([0.5, 0.4, 0.4], "humble")}
    calibration = Calibration()
    assert ConfidenceRouter().choose(trees) == ConfidenceRouter(calibration).choose(trees) == "sharp"
    for _ in range(20):  # the sharp drafter's trees get nothing accepted, the humble one's everything
        calibration.update("sharp", trees["sharp"], 0.0)
        calibration.update("humble", trees["humble"], 3.0)
    assert ConfidenceRouter(calibration).choose(trees) == "humble"
    assert calibration.observations("confidence") == {"sharp": 20, "humble": 20}
    assert signal_feature("entropy", trees["sharp"]) == pytest.approx(math.exp(-0.1))


def test_calibration_round_trips_through_a_file(tmp_path):
    calibration = Calibration()
    calibration.update("a", chain([0.5], "a"), 1.0)
    loaded = Calibration.load(calibration.save(tmp_path / "calibration.json"))
    assert loaded.to_dict() == calibration.to_dict()
    with pytest.raises(ValueError, match="not a routing calibration"):
        Calibration.from_dict({"strength": 4})
    with pytest.raises(ValueError, match="unknown routing signal"):
        calibration.fit("vibes", "a")


class Scaled(CausalLMDrafter):
    """A drafter whose logits are multiplied by `factor` (> 1: over-confident, < 1: humble)."""

    def __init__(self, model, factor: float, name: str):
        super().__init__(model, VOCAB, name=name)
        self.factor = factor

    def _step(self, tree, frontier):
        return super()._step(tree, frontier) * self.factor


def drafters():
    return {
        "sharp": Scaled(tiny_model("llama", layers=1, seed=21), 6.0, "sharp"),  # confident and wrong
        "humble": Scaled(copy.deepcopy(TARGET), 0.05, "humble"),  # the target's argmax, flattened
    }


@pytest.mark.parametrize("strategy, warm_up", [("confidence", 1), ("entropy", 2)])
def test_calibrated_routing_picks_the_drafter_that_gets_accepted(strategy, warm_up):
    """Confidence learns from every drafter every step; entropy picks once per turn, so it
    needs a turn or two of outcomes (the Composer keeps the calibration across turns)."""
    composer = Composer(TARGET, drafters=drafters())
    tree = dict(depth=3, top_k=2, budget=6)
    raw = composer.generate([3, 1, 4], strategy=strategy, max_new_tokens=24, calibrated=False, tree=tree)
    assert set(raw.stats.routing) == {"sharp"}  # the raw signal prefers the over-confident drafter
    prompts = [[3, 1, 4], [2, 7, 1, 8], [1, 6, 1], [5, 9]]
    routed = [composer.generate(p, strategy=strategy, max_new_tokens=24, tree=tree) for p in prompts]
    late = [name for r in routed[warm_up:] for name in r.stats.routing]
    assert late.count("humble") >= 0.9 * len(late)
    assert routed[-1].stats.tau > raw.stats.tau


def test_composer_starts_from_a_stored_calibration_and_saves_what_it_learnt(tmp_path):
    composer = Composer(TARGET, drafters=drafters())
    tree = dict(depth=3, top_k=2, budget=6)
    for prompt in ([3, 1, 4], [2, 7, 1, 8]):
        composer.generate(prompt, strategy="confidence", max_new_tokens=16, tree=tree)
    path = composer.save_calibration(tmp_path / "calibration.json")
    warm = Composer(TARGET, drafters=drafters(), calibration=path)  # a fresh composer, the learnt fits
    first = warm.generate([5, 9], strategy="confidence", max_new_tokens=8, tree=tree)
    assert first.stats.routing[0] == "humble"
    cold = Composer(TARGET, drafters=drafters()).generate([5, 9], strategy="confidence", max_new_tokens=8, tree=tree)
    assert cold.stats.routing[0] == "sharp"


def test_turn_bias_finds_out_a_drafter_the_stored_fit_over_rates_within_the_turn():
    """A calibration that predicts 2 tokens for `sharp` whatever its signal (a fit from another
    domain) keeps confidence on it all turn; turn_bias corrects each drafter by this turn's
    residuals and moves to the drafter that gets accepted."""
    stuck = Calibration({"confidence": {"sharp": LinearFit(a0=2.0, b0=0.0, strength=1e9)}})
    tree = dict(depth=3, top_k=2, budget=6)
    plain = Composer(TARGET, drafters=drafters(), calibration=copy.deepcopy(stuck)).generate(
        [3, 1, 4], strategy="confidence", max_new_tokens=24, tree=tree)
    assert set(plain.stats.routing) == {"sharp"}
    biased = Composer(TARGET, drafters=drafters(), calibration=copy.deepcopy(stuck)).generate(
        [3, 1, 4], strategy="confidence", turn_bias=True, max_new_tokens=24, tree=tree)
    assert biased.stats.routing[0] == "sharp" and set(biased.stats.routing[4:]) == {"humble"}
    assert biased.stats.tau > plain.stats.tau
    assert biased.token_ids == plain.token_ids  # greedy: the choice never changes the output


def test_linear_fit_learns_the_domain_coefficient_and_without_it_is_the_two_feature_fit():
    rng = np.random.default_rng(1)
    fit = LinearFit(a0=0.0, b0=1.0, strength=4.0)
    for _ in range(5000):
        x, z = float(rng.random()), float(rng.choice([-0.5, 0.5]))
        fit.add(x, 1.0 + 2.0 * x + 3.0 * z + float(rng.normal(0, 0.1)), z)
    a, b, c = fit.coefficients()
    assert (a, b, c) == (pytest.approx(1.0, abs=0.03), pytest.approx(2.0, abs=0.05), pytest.approx(3.0, abs=0.02))
    # a fit stored before the domain feature (no z statistics) solves the two-feature ridge exactly
    old = {"a0": 0.5, "b0": 2.0, "strength": 4.0, "n": 7.0, "sx": 3.1, "sy": 9.0, "sxx": 1.9, "sxy": 5.2}
    lam = old["strength"]
    m = np.array([[lam + old["n"], old["sx"]], [old["sx"], lam + old["sxx"]]])
    r = np.array([lam * old["a0"] + old["sy"], lam * old["b0"] + old["sxy"]])
    assert LinearFit(**old).coefficients() == pytest.approx((*np.linalg.solve(m, r), 0.0))


def test_domain_evidence_lets_the_calibration_tell_a_specialist_off_its_domain():
    """The math drafter is as confident on chat turns as on math turns but gets nothing accepted
    there: a signal-only fit cannot tell the turns apart, a fit with the domain evidence can."""
    trees = {"math": chain([0.9, 0.8, 0.8], "math"), "chat": chain([0.6, 0.5, 0.5], "chat")}
    with_domain, signal_only = Calibration(), Calibration()
    for _ in range(30):
        for turn, math_gain, chat_gain in (("math", 3.0, 0.5), ("chat", 0.2, 1.5)):
            z = domain_evidence({"math": 1.0 if turn == "math" else 0.0, "chat": 1.0 if turn == "chat" else 0.0},
                                ["math", "chat"])
            for name, gain in (("math", math_gain), ("chat", chat_gain)):
                with_domain.update(name, trees[name], gain, z[name])
                signal_only.update(name, trees[name], gain)
    on_chat = domain_evidence({"math": 0.05, "chat": 0.95}, ["math", "chat"])
    on_math = domain_evidence({"math": 0.95, "chat": 0.05}, ["math", "chat"])
    assert ConfidenceRouter(with_domain).choose(trees, on_chat) == "chat"
    assert ConfidenceRouter(with_domain).choose(trees, on_math) == "math"
    assert ConfidenceRouter(signal_only).choose(trees, on_chat) == "math"  # pooled: math's mean gain is higher
    assert with_domain.uses_domain() and not signal_only.uses_domain()
    assert domain_evidence({"math": 0.7, "chat": 0.3}, ["math", "other"]) == {}  # the router does not cover `other`


@pytest.mark.parametrize("use", [True, False])
def test_confidence_reads_the_turns_domain_evidence_from_the_prefill(use):
    from drafters.lm import EarlyExitDrafter
    from routing import fit_domain_router
    from routing.domain import prompt_features

    low = [torch.randint(0, 20, (n,), generator=torch.Generator().manual_seed(i)) for i, n in enumerate([4, 6, 8] * 4)]
    high = [torch.randint(70, 96, (n,), generator=torch.Generator().manual_seed(50 + i)) for i, n in enumerate([4, 6, 8] * 4)]
    router = fit_domain_router({"low": prompt_features(TARGET, low), "high": prompt_features(TARGET, high)})
    drafters = {"low": EarlyExitDrafter(TARGET, 1, name="low"), "high": EarlyExitDrafter(TARGET, 2, name="high")}
    composer = Composer(TARGET, drafters=drafters, domain_router=router)
    prompt = [3, 5, 1, 7, 2]
    result = composer.generate(prompt, strategy="confidence", domain_evidence=use, max_new_tokens=12,
                               tree=dict(depth=3, top_k=2, budget=5))
    plain = TARGET.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert result.token_ids == plain[0, len(prompt):].tolist()
    p = router.probabilities(prompt_features(TARGET, [torch.tensor(prompt)])[0])
    fit = composer.calibration.fit("confidence", "low")
    assert fit.n == len(result.stats.steps)
    if use:
        assert fit.sz / fit.n == pytest.approx(p["low"] - 0.5, abs=1e-5) and abs(p["low"] - 0.5) > 0.1
    else:
        assert fit.sz == fit.szz == 0.0


def test_the_shipped_calibration_holds_the_fits_of_the_shipped_drafters_given_as_shipped():
    import os

    from compose.defaults import default_drafters, shipped_calibration

    name = "smollm2-135m-instruct"
    specs = default_drafters(name)
    assert {"math", "chat"} <= set(specs)
    full = shipped_calibration(name, specs)
    assert set(full.observations("confidence")) == {"math", "chat"} and min(full.observations("confidence").values()) > 100
    assert full.uses_domain()  # fitted with the domain router's evidence (docs/design.md)
    relative = {"chat": "eagle:" + os.path.relpath(specs["chat"].partition(":")[2])}
    assert set(shipped_calibration(name, relative).observations("confidence")) == {"chat"}
    # another drafter under a shipped name, or a drafter object: the shipped fit says nothing about it
    other = {"math": "early-exit:6", "chat": EarlyExitDrafterStandIn()}
    assert shipped_calibration(name, other).observations("confidence") == {}
    assert shipped_calibration("some/local/folder", specs).observations("confidence") == {}


class EarlyExitDrafterStandIn:
    """Any drafter object (not a spec string)."""
