"""Sampling through the engine (single strategy) has the target's law."""
from __future__ import annotations

import copy

import pytest

from compose import Composer
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from trees import SamplingSpec
from law import chi_square_power, chi_square_pvalue, exact_law
from tiny_models import tiny_model

SMALL = tiny_model("qwen2", vocab=4, layers=2, seed=5, init_std=0.1)


@pytest.mark.parametrize("kind, sampled, temperature, top_k, top_p", [
    ("self", False, 1.0, 0, 1.0),
    ("early-exit", True, 0.8, 3, 1.0),
    ("lm", True, 1.2, 0, 0.9),
])
def test_single_sampling_law_matches_plain_sampling(kind, sampled, temperature, top_k, top_p):
    sampling = SamplingSpec(temperature=temperature, top_k=top_k, top_p=top_p)
    prompt = [3, 1, 2]
    law = exact_law(SMALL, prompt, 3, sampling)
    drafter = {
        "self": lambda: CausalLMDrafter(copy.deepcopy(SMALL), 4, name="self"),
        "early-exit": lambda: EarlyExitDrafter(SMALL, 1),
        "lm": lambda: CausalLMDrafter(tiny_model("qwen2", vocab=4, layers=1, seed=6, init_std=0.1), 4),
    }[kind]()
    composer = Composer(SMALL, drafters={"d": drafter})
    n = 2500
    samples = [
        tuple(composer.generate(prompt, max_new_tokens=3, temperature=temperature, top_k=top_k, top_p=top_p, seed=i,
                                tree=dict(depth=3, top_k=2, budget=5, sampled=sampled)).token_ids)
        for i in range(n)
    ]
    pvalue, cells = chi_square_pvalue(samples, law)
    assert chi_square_power(n, cells, tv=0.09, alpha=1e-3) >= 0.99  # the power this sample size buys
    assert pvalue > 1e-3, f"engine sampling law differs from the target's (p={pvalue:.2e})"
