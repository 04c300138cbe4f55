"""Sampling through the engine has the target's law, for every strategy (merged_tree in
test_composition.py). The tree-level law tests (test_trees_law.py on verify, and
test_strategies_law.py on every strategy's choice of the verified tree with sampled drafter
trees) carry the full power (>= 0.99 at TV 0.02); these end-to-end tests check the engine around
them (drafting, packing, cache compaction, bonus tokens, per-turn routing state) with the power
their sample size buys, stated and asserted. The `slow` variants draw 8x more samples."""
from __future__ import annotations

import copy

import pytest
import torch

from compose import Composer
from routing import DomainRouter
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from trees import SamplingSpec
from law import chi_square_power, chi_square_pvalue, exact_law
from tiny_models import tiny_model

SMALL = tiny_model("qwen2", vocab=4, layers=2, seed=5, init_std=0.1)
FAST_N, SLOW_N = 1200, 9600
# power >= 0.99 at these total variations for up to 64 cells (4 tokens, 3 positions)
FAST_TV, SLOW_TV = 0.14, 0.05

CASES = [
    ("self", False, 1.0, 0, 1.0),
    ("early-exit", True, 0.8, 3, 1.0),
    ("lm", True, 1.2, 0, 0.9),
]


def run_law_check(composer: Composer, strategy: str, n: int, tv: float, sampling: SamplingSpec, tree: dict):
    prompt = [3, 1, 2]
    law = exact_law(composer.target.model, prompt, 3, sampling)
    samples = [
        tuple(composer.generate(prompt, strategy=strategy, max_new_tokens=3, temperature=sampling.temperature,
                                top_k=sampling.top_k, top_p=sampling.top_p, seed=i, tree=tree).token_ids)
        for i in range(n)
    ]
    pvalue, cells = chi_square_pvalue(samples, law)
    assert chi_square_power(n, cells, tv=tv, alpha=1e-3) >= 0.99, "sample size too small for the stated power"
    assert pvalue > 1e-3, f"{strategy} sampling law differs from the target's (p={pvalue:.2e}, n={n})"


def make(kind):
    return {
        "self": lambda: CausalLMDrafter(copy.deepcopy(SMALL), 4, name="self"),
        "early-exit": lambda: EarlyExitDrafter(SMALL, 1),
        "lm": lambda: CausalLMDrafter(tiny_model("qwen2", vocab=4, layers=1, seed=6, init_std=0.1), 4),
    }[kind]()


@pytest.mark.parametrize(
    "n, tv, case",
    [(FAST_N, FAST_TV, c) for c in CASES[:2]] + [pytest.param(SLOW_N, SLOW_TV, c, marks=pytest.mark.slow) for c in CASES],
)
def test_single_sampling_law_matches_plain_sampling(n, tv, case):
    kind, sampled, temperature, top_k, top_p = case
    composer = Composer(SMALL, drafters={"d": make(kind)})
    run_law_check(composer, "single", n, tv, SamplingSpec(temperature, top_k, top_p),
                  dict(depth=3, top_k=2, budget=5, sampled=sampled))


def routed_drafters(strategy: str) -> dict:
    """Two drafters of different quality (one architecture for `averaged`)."""
    lm = lambda seed: CausalLMDrafter(tiny_model("qwen2", vocab=4, layers=1, seed=seed, init_std=0.1), 4)
    if strategy == "averaged":
        return {"a": lm(6), "b": lm(7)}
    return {"ee": EarlyExitDrafter(SMALL, 1), "lm": lm(6)}


ROUTED = ["confidence", "entropy", "online", "averaged", "domain"]


@pytest.mark.parametrize(
    "n, tv, strategy",
    [(FAST_N, FAST_TV, s) for s in ROUTED[:3]] + [pytest.param(FAST_N, FAST_TV, s, marks=pytest.mark.slow) for s in ROUTED[3:]]
    + [pytest.param(SLOW_N, SLOW_TV, s, marks=pytest.mark.slow) for s in ROUTED],
)
def test_routed_sampling_law_with_sampled_trees(n, tv, strategy):
    """Routing strategies over sampled drafter trees (their choices look at drawn values)."""
    drafters = routed_drafters(strategy)
    router = DomainRouter(list(drafters), torch.tensor([[1.0] * 64, [-1.0] * 64]), torch.zeros(2), torch.zeros(64),
                          torch.ones(64))  # picks by the sign of the prompt's mean final hidden state
    composer = Composer(SMALL, drafters=drafters, domain_router=router)
    run_law_check(composer, strategy, n, tv, SamplingSpec(1.0, 0, 0.95), dict(depth=3, top_k=2, budget=5, sampled=True))
