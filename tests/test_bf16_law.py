"""Sampling through the engine keeps the target's law in bf16 too (docs/design.md "Exact bf16"):
the reference law is our own plain decoding of the bf16 target, one token per forward, since a
bf16 forward's numbers are only defined by the forward that computes them (transformers' bf16
forward is not batch-invariant)."""
from __future__ import annotations

import copy

import pytest
import torch

from compose import Composer
from runtime.decoder import Decoder
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from law import chi_square_power, chi_square_pvalue
from tiny_models import needs_native_bf16, tiny_model
from trees import SamplingSpec, process_logits

pytestmark = needs_native_bf16()
N, TV = 1200, 0.14  # power >= 0.99 at this total variation for up to 64 cells (4 tokens, 3 positions)


@torch.inference_mode()
def plain_decoding_law(model, prompt: list[int], k: int, sampling: SamplingSpec) -> dict[tuple[int, ...], float]:
    """P(x_1..x_k | prompt) under plain sampling, every distribution from our decoder's forward
    of the sequence so far (the prompt, then one token per forward, as plain decoding runs)."""
    decoder = Decoder(model)
    vocab = model.config.vocab_size
    law = {(): 1.0}
    for _ in range(k):
        nxt = {}
        for seq, p in law.items():
            cache = decoder.new_cache(len(prompt) + k)
            out = decoder.forward(torch.tensor(prompt), torch.arange(len(prompt)), cache, None, logits_rows=slice(-1, None))
            for t in seq:
                out = decoder.forward(torch.tensor([t]), torch.tensor([cache.length]), cache, None)
            probs = process_logits(out.logits[-1:].float(), sampling)[0]
            nxt.update({seq + (v,): p * float(probs[v]) for v in range(vocab)})
        law = nxt
    return {s: p for s, p in law.items() if p > 0}


@pytest.mark.parametrize("strategy, sampled_tree", [("single", True), ("merged_tree", False)])
def test_bf16_sampling_law_matches_bf16_plain_sampling(strategy, sampled_tree):
    target = tiny_model("qwen2", vocab=4, layers=2, seed=5, init_std=0.1).to(torch.bfloat16)
    drafters = {"ee": EarlyExitDrafter(target, 1)}
    if strategy == "merged_tree":
        drafters["lm"] = CausalLMDrafter(copy.deepcopy(tiny_model("qwen2", vocab=4, layers=1, seed=6, init_std=0.1)), 4)
    composer = Composer(target, drafters=drafters)
    assert composer.target.dtype == torch.bfloat16 and composer.target.decoder.invariant
    sampling = SamplingSpec(temperature=0.9, top_k=0, top_p=1.0)
    prompt = [3, 1, 2]
    law = plain_decoding_law(target, prompt, 3, sampling)
    kw = {"drafter": "ee"} if strategy == "single" else {}
    samples = [tuple(composer.generate(prompt, strategy=strategy, max_new_tokens=3, temperature=0.9, seed=i,
                                       tree=dict(depth=3, top_k=2, budget=5, sampled=sampled_tree), **kw).token_ids)
               for i in range(N)]
    pvalue, cells = chi_square_pvalue(samples, law)
    assert chi_square_power(N, cells, tv=TV, alpha=1e-3) >= 0.99, "sample size too small for the stated power"
    assert pvalue > 1e-3, f"{strategy} bf16 sampling law differs from bf16 plain sampling (p={pvalue:.2e}, n={N})"
