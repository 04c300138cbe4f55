"""Targets with sliding-window attention (Mistral: every layer) or hybrid local / global layers
(a Qwen2 config with `layer_types`, as Gemma 2/3 alternate them): for prompts longer than the
window, plain decoding equals transformers' generate, and every drafter kind and strategy is
greedy-lossless (docs/design.md "Packing": a windowed layer hides keys W or more positions back)."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from compose import Composer
from compose.registry import STRATEGIES
from drafter_fixtures import tiny_drafter_model
from drafters.dvi import DVIDrafter
from drafters.feature import FeatureDrafter
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from routing import DomainRouter

WINDOW, VOCAB, PROMPT, NEW = 5, 96, 14, 24


def windowed_model(kind: str, layers: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  initializer_range=0.2, tie_word_embeddings=False, attn_implementation="sdpa",
                  bos_token_id=None, eos_token_id=None, pad_token_id=None, sliding_window=WINDOW)
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**common))
    else:  # local / global layers alternating, the last one global
        types = ["sliding_attention" if i % 2 == 0 and i < layers - 1 else "full_attention" for i in range(layers)]
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=True, layer_types=types))
    return model.eval().requires_grad_(False)


TARGETS = {kind: windowed_model(kind) for kind in ("mistral", "hybrid")}


def prompt(seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (PROMPT,), generator=torch.Generator().manual_seed(seed)).tolist()


def plain_greedy(model, ids, n=NEW):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def all_drafters(target) -> dict:
    kind = "mistral" if target.config.model_type == "mistral" else "hybrid"
    return {
        "ee": EarlyExitDrafter(target, 1, name="ee"),
        "self": CausalLMDrafter(copy.deepcopy(target), VOCAB, name="self"),  # accepted deep: long windows
        "lm": CausalLMDrafter(windowed_model(kind, layers=1, seed=5), VOCAB, name="lm"),
        "dvi": DVIDrafter(target, 2, name="dvi"),
        "eagle1": FeatureDrafter(tiny_drafter_model(target, seed=2), name="eagle1"),
        "eagle1b": FeatureDrafter(tiny_drafter_model(target, seed=3), name="eagle1b"),
        "eagle3": FeatureDrafter(tiny_drafter_model(target, style="eagle3", head="truncated",
                                                    target_layers=[0, 1, 2], seed=4), name="eagle3"),
    }


def test_the_models_really_slide():
    """Sanity of the fixture: transformers' own output depends on the window."""
    for target in TARGETS.values():
        wide = copy.deepcopy(target)
        wide.config.sliding_window = 10 * WINDOW
        assert plain_greedy(target, prompt(0)) != plain_greedy(wide, prompt(0))


@pytest.mark.parametrize("kind", TARGETS)
def test_plain_decoding_equals_transformers(kind):
    target = TARGETS[kind]
    for seed in range(3):
        result = Composer(target).generate(prompt(seed), strategy="autoregressive", max_new_tokens=NEW)
        assert result.token_ids == plain_greedy(target, prompt(seed))


@pytest.mark.parametrize("kind", TARGETS)
def test_every_drafter_kind_is_greedy_lossless(kind):
    target = TARGETS[kind]
    drafters = all_drafters(target)
    composer = Composer(target, drafters=drafters)
    want = plain_greedy(target, prompt(1))
    for name in drafters:
        result = composer.generate(prompt(1), strategy="single", drafter=name, max_new_tokens=NEW,
                                   tree=dict(depth=4, top_k=3, budget=10))
        assert result.token_ids == want, name
    deep = composer.generate(prompt(1), strategy="single", drafter="self", max_new_tokens=NEW,
                             tree=dict(depth=WINDOW + 2, top_k=1, budget=WINDOW + 2))
    assert deep.token_ids == want
    assert max(s.accepted for s in deep.stats.steps) > WINDOW  # drafted and verified deeper than the window


@pytest.mark.parametrize("kind", TARGETS)
def test_every_strategy_is_greedy_lossless(kind):
    target = TARGETS[kind]
    drafters = all_drafters(target)
    names = ["ee", "lm", "eagle1"]
    router = DomainRouter(names, torch.randn(3, 64), torch.zeros(3), torch.zeros(64), torch.ones(64))
    composer = Composer(target, drafters=drafters, domain_router=router)
    want = plain_greedy(target, prompt(2))
    runs = {name: {} for name in STRATEGIES}
    runs["single"] = {"drafter": "self"}
    runs["averaged"] = {"drafter": None}
    for strategy, options in runs.items():
        chosen = {"averaged": ["eagle1", "eagle1b"], "domain": names}.get(strategy, list(drafters))
        composer_for = composer if strategy not in ("averaged",) else Composer(target, drafters={n: drafters[n] for n in chosen})
        options = {k: v for k, v in options.items() if v is not None}
        for merge_budget in (("sum", "equal") if strategy == "merged_tree" else ("sum",)):
            result = composer_for.generate(prompt(2), strategy=strategy, max_new_tokens=NEW,
                                           tree=dict(depth=3, top_k=2, budget=6, merge_budget=merge_budget), **options)
            assert result.token_ids == want, (strategy, merge_budget)
