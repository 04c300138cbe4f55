"""Sampling through the batching scheduler keeps the target's law for every request of a batch
(tests/test_engine_law.py's check, on requests decoded together). Every request is submitted to
ONE scheduler, so requests with different prompts, strategies, sampling settings and lengths join
and leave the running batch continuously while their first tokens are drawn; each request's
first 3 tokens are tested against the exact law of its own prompt and settings. The power the
sample size buys is stated and asserted; the `slow` variant draws 8x more samples."""
from __future__ import annotations

import copy

import pytest

from compose import Composer
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from law import chi_square_power, chi_square_pvalue, exact_law
from serve.scheduler import BatchTrees, Scheduler
from serve.slot import new_slot
from tiny_models import tiny_model
from trees import SamplingSpec

SMALL = tiny_model("qwen2", vocab=4, layers=2, seed=5, init_std=0.1)
FAST_N, SLOW_N = 600, 9600
FAST_TV, SLOW_TV = 0.2, 0.05  # power >= 0.99 at these total variations for up to 64 cells
TREE = dict(depth=3, top_k=2, budget=5)

# (prompt, strategy, strategy options, sampling, tree): what each stream of requests asks for
STREAMS = {
    "single-sampled": ([3, 1, 2], "single", {"drafter": "self"}, SamplingSpec(1.0, 0, 1.0), {**TREE, "sampled": True}),
    "merged-topk": ([0, 2], "merged_tree", {}, SamplingSpec(0.8, 3, 1.0), TREE),
    "confidence-sampled": ([1], "confidence", {}, SamplingSpec(1.2, 0, 0.9), {**TREE, "sampled": True}),
    "autoregressive": ([2, 2, 0, 1], "autoregressive", {}, SamplingSpec(1.0, 0, 0.95), TREE),
}


def ignore(event) -> None:
    pass


def run_streams(n: int) -> dict[str, list[tuple[int, ...]]]:
    lm = CausalLMDrafter(tiny_model("qwen2", vocab=4, layers=1, seed=6, init_std=0.1), 4, name="lm")
    composer = Composer(SMALL, drafters={"self": CausalLMDrafter(copy.deepcopy(SMALL), 4, name="self"),
                                         "ee": EarlyExitDrafter(SMALL, 1), "lm": lm})
    # top-k trees are cut to 7, 4, 3 nodes as 2, 3, 4 requests share a step, and not drafted at 5
    scheduler = Scheduler(composer, max_batch=5, max_queue=n * (len(STREAMS) + 1),
                          trees=BatchTrees(draft_max_batch=4, row_budget=16))
    slots: dict[str, list] = {name: [] for name in STREAMS}
    for i in range(n):
        for j, (name, (prompt, strategy, args, sampling, tree)) in enumerate(STREAMS.items()):
            options = dict(max_new_tokens=3, temperature=sampling.temperature, top_k=sampling.top_k,
                           top_p=sampling.top_p, seed=i * 31 + j, tree=tree, **args)
            slots[name].append(new_slot(composer, prompt, strategy, ignore, options))
            scheduler.submit(slots[name][-1])
        # a request of varying length between rounds, so the batch's make-up keeps changing
        scheduler.submit(new_slot(composer, [i % 4], "single", ignore,
                                  dict(drafter="ee", max_new_tokens=1 + i % 7, temperature=1.0, tree=TREE)))
    scheduler.run_until_idle()
    out = {}
    for name, group in slots.items():
        assert all(s.finish == "length" for s in group)
        out[name] = [tuple(s.tokens) for s in group]
    return out


@pytest.mark.parametrize("n, tv", [(FAST_N, FAST_TV), pytest.param(SLOW_N, SLOW_TV, marks=pytest.mark.slow)])
def test_every_request_of_a_batch_keeps_the_target_law(n, tv):
    samples = run_streams(n)
    for name, (prompt, _, _, sampling, _) in STREAMS.items():
        pvalue, cells = chi_square_pvalue(samples[name], exact_law(SMALL, prompt, 3, sampling))
        assert chi_square_power(n, cells, tv=tv, alpha=1e-3) >= 0.99, "sample size too small for the stated power"
        assert pvalue > 1e-3, f"{name}: sampling law in the batch differs from the target's (p={pvalue:.2e}, n={n})"
