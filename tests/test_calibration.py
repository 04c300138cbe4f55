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
from routing import Calibration, ConfidenceRouter
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
    a, b = fit.coefficients()
    assert a == pytest.approx(0.5, abs=0.02) and b == pytest.approx(3.0, abs=0.03)


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
