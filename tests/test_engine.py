"""The decode engine: greedy token equality with transformers' generate, cache compaction,
and the errors users get for bad input."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compose import Composer
from compose.engine import decode
from compose.registry import make_strategy
from compose.tree_policy import FixedTree
from compose.options import TreeOptions
from compose.types import GenerationStats
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from trees import SamplingSpec
from tiny_models import tiny_model

MODELS = {
    (arch, seed): tiny_model(arch, layers=3, seed=seed)
    for arch in ("llama", "qwen2") for seed in (0, 1)
}


def reference_greedy(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(prompt):].tolist()


def make_drafter(kind: str, target, seed: int):
    if kind == "early-exit":
        return EarlyExitDrafter(target, exit_layer=1 + seed % 2)
    if kind == "self":  # the target itself as an LM drafter: every draft is right, deep paths
        return CausalLMDrafter(copy.deepcopy(target), target.config.vocab_size, name="self")
    return CausalLMDrafter(tiny_model(target.config.model_type, layers=1, seed=seed + 7), target.config.vocab_size, name="lm")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(["llama", "qwen2"]),
    seed=st.sampled_from([0, 1]),
    prompt=st.lists(st.integers(0, 95), min_size=1, max_size=12),
    kind=st.sampled_from(["early-exit", "self", "lm"]),
    depth=st.integers(1, 5),
    top_k=st.integers(1, 4),
    budget=st.integers(1, 16),
)
def test_single_greedy_equals_transformers_generate(arch, seed, prompt, kind, depth, top_k, budget):
    target = MODELS[(arch, seed)]
    composer = Composer(target, drafters={"d": make_drafter(kind, target, seed)})
    n = 20
    result = composer.generate(prompt, strategy="single", max_new_tokens=n,
                               tree=dict(depth=depth, top_k=top_k, budget=budget))
    assert result.token_ids == reference_greedy(target, prompt, n)
    assert result.finish_reason == "length"
    assert sum(s.accepted + 1 for s in result.stats.steps) + 1 >= n
    if kind == "self":  # a perfect drafter's top-1 child always ranks first, so it is kept and accepted
        assert all(s.accepted >= 1 for s in result.stats.steps)


def test_autoregressive_equals_transformers_generate():
    target = MODELS[("qwen2", 0)]
    prompt = [3, 14, 15, 92, 65]
    result = Composer(target).generate(prompt, strategy="autoregressive", max_new_tokens=30)
    assert result.token_ids == reference_greedy(target, prompt, 30)
    assert all(s.accepted == 0 and s.tree_size == 1 for s in result.stats.steps)
    assert result.stats.tau == 1.0


@pytest.mark.parametrize("kind", ["early-exit", "lm", "self"])
def test_compacted_cache_equals_fresh_prefill(kind):
    """After every step the target's (and an LM drafter's) KV cache holds exactly prefix +
    accepted path: compare it with a fresh prefill of the same tokens."""
    target = MODELS[("llama", 1)]
    drafter = make_drafter(kind, target, 1)
    composer = Composer(target, drafters={"d": drafter})
    strategy = make_strategy("single", composer.drafters, TreeOptions())
    prompt = torch.tensor([5, 6, 7, 8, 9, 10])
    emitted: list[int] = []
    steps = decode(composer.target, strategy, prompt, FixedTree(TreeOptions(depth=4, top_k=3, budget=10).spec()),
                   SamplingSpec(), GenerationStats(strategy="single"))
    for i, chunk in zip(range(8), steps):
        emitted += chunk
        committed = torch.cat([prompt, torch.tensor(emitted[:-1], dtype=torch.long)])
        assert_cache_holds(composer.target.cache, composer.target.model, committed)
        # the drafter keeps the KV of the accepted nodes it fed; the others wait in `pending`
        n_cached = drafter.cache.length
        assert n_cached + len(drafter.pending) == committed.numel()
        assert drafter.pending == committed[n_cached:].tolist()
        assert_cache_holds(drafter.cache, drafter.model, committed[:n_cached])
        if kind == "self":  # every draft accepted: only the unfed leaf is re-fed
            assert len(drafter.pending) <= 1
    steps.close()


def assert_cache_holds(cache, model, tokens: torch.Tensor) -> None:
    """The KVCache's live entries equal a fresh transformers prefill of `tokens`."""
    assert cache.length == tokens.numel()
    fresh = model(tokens[None], use_cache=True).past_key_values
    for i, want in enumerate(fresh.layers):
        torch.testing.assert_close(cache.keys[i, :, :, : cache.length], want.keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cache.values[i, :, :, : cache.length], want.values, rtol=1e-4, atol=1e-5)


def test_streaming_yields_the_generated_text():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(96)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    target = MODELS[("llama", 0)]
    composer = Composer(target, drafters={"ee": EarlyExitDrafter(target, 1)}, tokenizer=tokenizer)
    pieces = list(composer.stream("w1 w2 w3", max_new_tokens=12))
    result = composer.last_result
    assert "".join(pieces) == result.text and len(result.token_ids) == 12
    # a stop string cuts the text before it and ends the generation
    stop_word = result.text.split()[3]
    stopped = composer.generate("w1 w2 w3", max_new_tokens=12, stop=[stop_word])
    assert stopped.finish_reason == "stop" and stop_word not in stopped.text
    assert result.text.startswith(stopped.text)


def test_eos_stops_generation_and_is_kept():
    target = copy.deepcopy(MODELS[("llama", 0)])
    prompt = [1, 2, 3]
    ref = reference_greedy(target, prompt, 10)
    target.generation_config.eos_token_id = ref[4]
    result = Composer(target, drafters={"ee": EarlyExitDrafter(target, 1)}).generate(prompt, max_new_tokens=10)
    first = ref.index(ref[4])
    assert result.token_ids == ref[: first + 1] and result.finish_reason == "eos"


# --- bad input ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def composer():
    target = MODELS[("llama", 0)]
    return Composer(target, drafters={"ee": EarlyExitDrafter(target, 1)})


@pytest.mark.parametrize(
    "prompt, options, message",
    [
        ([], {}, "prompt is empty"),
        ([1] * 600, {}, "context"),
        ([1] * 500, {"max_new_tokens": 100}, "exceeds the target's context"),
        ([1, 2], {"strategy": "nope"}, "unknown strategy"),
        ([1, 2], {"tree": {"budget": 0}}, "budget"),
        ([1, 2], {"tree": {"depth": 0}}, "depth"),
        ([1, 2], {"temperature": -1.0}, "temperature"),
        ([1, 2], {"top_p": 0.0}, "top_p"),
        ([1, 2], {"max_new_tokens": 0}, "max_new_tokens"),
        ([1, 200], {}, "outside the target vocabulary"),
        (torch.ones(2, 3, dtype=torch.long), {}, "batch generation is not supported"),
        (["a", "b"], {}, "batch generation is not supported"),
        ([1, 2], {"strategy": "single", "drafter": "missing"}, "unknown drafter"),
    ],
)
def test_bad_input_names_the_problem(composer, prompt, options, message):
    with pytest.raises(ValueError, match=message):
        composer.generate(prompt, **options)


def test_drafter_for_another_target_is_refused():
    target = MODELS[("llama", 0)]
    other = tiny_model("llama", vocab=80)
    with pytest.raises(ValueError, match="vocabulary of 80 tokens"):
        Composer(target, drafters={"other": CausalLMDrafter(other, 80)})


def test_text_prompt_without_tokenizer_is_refused(composer):
    with pytest.raises(ValueError, match="tokenizer"):
        composer.generate("hello")


def test_early_exit_layer_out_of_range():
    with pytest.raises(ValueError, match="early-exit layer"):
        EarlyExitDrafter(MODELS[("llama", 0)], 3)
