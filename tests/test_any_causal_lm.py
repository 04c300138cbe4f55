"""Any transformers causal LM (docs/design.md "The fast decoder and the general path"): tiny
random models of eleven families, the four the fast decoder knows and seven on the general path
(the model's own forward and cache), among them sliding-window layers only (gemma3_text) and
hybrids of sliding and full layers (gemma2, cohere2; qwen2 on the fast path). Every strategy is
greedy-equal to transformers' plain decoding, with deep accepted paths; the general path forced
onto the fast families too. Six more families on the general path with two strategies (learned
absolute positions, a sliding model without layer_types, another hybrid). The general path
computes what the fast decoder does; its kept cache equals a fresh prefill. Refused by name: a
model that is not a causal LM, one whose forward cannot verify a tree (MPT, BLOOM: ALiBi; Mamba:
recurrent layers), an attention implementation that does not take a 4D mask as given."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, BertConfig, BertForMaskedLM, BertModel

import compose.target
import drafters.lm
from compose import Composer
from compose.registry import STRATEGIES
from runtime.decoder import Decoder
from runtime.hf_decoder import GeneralDecoder, make_decoder
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from routing import DomainRouter
from trees import DraftTree, pack_tree

VOCAB, HIDDEN, WINDOW, PROMPT, NEW = 96, 64, 4, 10, 14
TREE = dict(depth=3, top_k=2, budget=6)  # a fixed tree: no cost profile is measured

SLIDING, FULL = "sliding_attention", "full_attention"
# model type -> (config overrides, attention implementation, the path make_decoder must pick)
FAMILIES = {
    "llama": ({}, "sdpa", "fast"),
    "mistral": (dict(sliding_window=WINDOW), "sdpa", "fast"),  # every layer slides
    "qwen2": (dict(use_sliding_window=True, sliding_window=WINDOW, layer_types=[SLIDING, FULL, SLIDING]), "sdpa", "fast"),
    "qwen3": ({}, "sdpa", "fast"),
    "gemma3_text": (dict(head_dim=16, sliding_window=WINDOW, layer_types=[SLIDING] * 3), "sdpa", "general"),
    "gemma2": (dict(head_dim=16, sliding_window=WINDOW, layer_types=[SLIDING, FULL, SLIDING]), "eager", "general"),
    "cohere2": (dict(sliding_window=WINDOW, layer_types=[SLIDING, SLIDING, FULL]), "sdpa", "general"),
    "phi3": ({}, "sdpa", "general"),
    "gpt_neox": (dict(rotary_pct=0.5), "sdpa", "general"),
    "olmo2": ({}, "sdpa", "general"),
    "granite": (dict(embedding_multiplier=2.0, logits_scaling=4.0, attention_multiplier=0.2), "sdpa", "general"),
}
WINDOWED = {"mistral": [WINDOW] * 3, "qwen2": [WINDOW, None, WINDOW], "gemma3_text": [WINDOW] * 3,
            "gemma2": [WINDOW, None, WINDOW], "cohere2": [WINDOW, WINDOW, None]}


def tiny(model_type: str, layers: int = 3, seed: int = 0, **extra):
    overrides, attn, _ = FAMILIES[model_type]
    config = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
                  tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    config.update(overrides, **extra)
    if "layer_types" in config:
        config["layer_types"] = config["layer_types"][:layers]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config), attn_implementation=attn)
    return model.eval().requires_grad_(False)


TARGETS: dict = {}


def target_of(model_type: str):
    if model_type not in TARGETS:
        TARGETS[model_type] = tiny(model_type)
    return TARGETS[model_type]


def prompt(seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (PROMPT,), generator=torch.Generator().manual_seed(seed)).tolist()


def plain_greedy(model, ids: list[int], n: int = NEW) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def every_strategy(target) -> dict[str, list[int]]:
    """Tokens of every registered strategy (merged_tree with both budget modes) on prompt(1):
    an early-exit drafter, the target itself as an LM drafter (`single` drafts with it), and two
    independent LMs of the target's family (the same shape, so `averaged` can average them)."""
    model_type = target.config.model_type
    pool = {"ee": EarlyExitDrafter(target, 1, name="ee"),
            "self": CausalLMDrafter(copy.deepcopy(target), VOCAB, name="self"),  # always right: deep paths
            "lm": CausalLMDrafter(tiny(model_type, layers=1, seed=3), VOCAB, name="lm"),
            "lm2": CausalLMDrafter(tiny(model_type, layers=1, seed=4), VOCAB, name="lm2")}
    router = DomainRouter(list(pool), torch.randn(4, HIDDEN), torch.zeros(4), torch.zeros(HIDDEN), torch.ones(HIDDEN))
    composer = Composer(target, drafters=pool, domain_router=router)
    averaged = Composer(target, drafters={n: pool[n] for n in ("lm", "lm2")})
    tokens, deepest = {}, 0
    for strategy in STRATEGIES:
        for merge_budget in ("sum", "equal") if strategy == "merged_tree" else ("sum",):
            options = {"drafter": "self"} if strategy == "single" else {}
            result = (averaged if strategy == "averaged" else composer).generate(
                prompt(1), strategy=strategy, max_new_tokens=NEW, tree=dict(TREE, merge_budget=merge_budget), **options)
            tokens[f"{strategy}/{merge_budget}"] = result.token_ids
            deepest = max([deepest, *(s.accepted for s in result.stats.steps)])
    assert deepest >= 2  # drafts were accepted, past the first level
    return tokens


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_strategy_is_greedy_equal_to_plain_decoding(model_type):
    target = target_of(model_type)
    decoder = make_decoder(target)
    assert decoder.kind == FAMILIES[model_type][2]
    if isinstance(decoder, GeneralDecoder):
        assert decoder.windows == WINDOWED.get(model_type, [None] * 3)
    want = plain_greedy(target, prompt(1))
    for name, tokens in every_strategy(target).items():
        assert tokens == want, (model_type, name)


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "llama"])
def test_the_general_path_on_the_fast_families(model_type, monkeypatch):
    """The general path forced onto families the fast decoder runs (every layer sliding, a
    hybrid, none): every strategy is still greedy-equal to plain decoding."""
    general = lambda model, **options: GeneralDecoder(model)  # noqa: E731 (float32 models: nothing to refuse)
    monkeypatch.setattr(compose.target, "make_decoder", general)
    monkeypatch.setattr(drafters.lm, "make_decoder", general)
    target = target_of(model_type)
    assert Composer(target).target.decoder.kind == "general"
    want = plain_greedy(target, prompt(1))
    for name, tokens in every_strategy(target).items():
        assert tokens == want, (model_type, name)


@pytest.mark.parametrize("model_type", WINDOWED)
def test_the_windows_matter(model_type):
    """Sanity of the fixtures: with a window 10x wider, transformers' own output changes, so the
    tests above see the windows at work."""
    wide = tiny(model_type, sliding_window=10 * WINDOW)
    assert plain_greedy(target_of(model_type), prompt(1)) != plain_greedy(wide, prompt(1))


@pytest.mark.parametrize("model_type", ["qwen2", "mistral"])
def test_the_general_path_computes_what_the_fast_decoder_does(model_type):
    """Logits and hidden states (every index, -1 included) of a prefill and of a tree forward,
    and the cache after keeping a path that skips a node, agree between the two paths."""
    target = target_of(model_type)
    fast, general = Decoder(target), GeneralDecoder(target)
    ids = torch.tensor(prompt(2))
    tree = DraftTree.from_lists([5, 6, 7, 8, 9], [-1, 0, 0, 2, 2])
    layers = [0, 1, 2, 3, -1]
    caches = {}
    outs = {}
    for name, decoder in (("fast", fast), ("general", general)):
        cache = caches[name] = decoder.new_cache()
        first = decoder.forward(ids, torch.arange(PROMPT), cache, None, layers)
        packed = pack_tree(tree, PROMPT, decoder.dtype)
        second = decoder.forward(packed.input_ids, packed.position_ids, cache, packed.attention_mask, layers)
        cache.keep(PROMPT, torch.tensor([0, 2, 4]))
        third = decoder.forward(torch.tensor([11]), torch.tensor([PROMPT + 3]), cache, None, layers)
        outs[name] = (first, second, third)
    for a, b in zip(outs["fast"], outs["general"]):
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
        for i in layers:
            torch.testing.assert_close(a.hidden_states[i], b.hidden_states[i], rtol=1e-4, atol=1e-4)
    assert caches["general"].positions.tolist() == list(range(PROMPT + 4))


def test_the_kept_cache_equals_a_fresh_prefill():
    """After a tree forward and keeping a path with a gap, every layer of a hybrid model's cache
    holds what a fresh forward of prefix + path puts there."""
    target = target_of("gemma2")
    decoder = GeneralDecoder(target)
    ids = prompt(3)
    tree = DraftTree.from_lists([5, 6, 7, 8, 9, 10], [-1, 0, 0, 1, 2, 4])
    cache = decoder.new_cache()
    decoder.forward(torch.tensor(ids), torch.arange(PROMPT), cache, None)
    packed = pack_tree(tree, PROMPT, decoder.dtype)
    decoder.forward(packed.input_ids, packed.position_ids, cache, packed.attention_mask)
    cache.keep(PROMPT, torch.tensor([0, 2, 4, 5]))
    fresh = decoder.new_cache()
    decoder.forward(torch.tensor(ids + [5, 7, 9, 10]), torch.arange(PROMPT + 4), fresh, None)
    assert len(cache.hf.layers) == len(fresh.hf.layers) == 3
    for kept, want in zip(cache.hf.layers, fresh.hf.layers):
        torch.testing.assert_close(kept.keys, want.keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(kept.values, want.values, rtol=1e-4, atol=1e-5)
    cache.crop(PROMPT)
    assert cache.length == PROMPT and all(layer.keys.shape[-2] == PROMPT for layer in cache.hf.layers)


# more families on the general path, a lighter check: learned absolute positions (gpt2, opt,
# gpt_bigcode), every layer sliding without layer_types (starcoder2), a hybrid (olmo3), falcon
MORE = {"gpt2": {}, "opt": {}, "gpt_bigcode": {}, "falcon": {}, "starcoder2": dict(sliding_window=WINDOW),
        "olmo3": dict(sliding_window=WINDOW, layer_types=[SLIDING, FULL, SLIDING])}

MORE_WINDOWS = {"starcoder2": [WINDOW] * 3, "olmo3": [WINDOW, None, WINDOW]}


def tiny_other(model_type: str, layers: int = 3, seed: int = 0, **extra):
    config = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
                  tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None, **extra)
    if "layer_types" in config:
        config["layer_types"] = config["layer_types"][:layers]
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config)).eval().requires_grad_(False)


@pytest.mark.parametrize("model_type", MORE)
def test_more_families_on_the_general_path(model_type):
    target = tiny_other(model_type, **MORE[model_type])
    pool = {"ee": EarlyExitDrafter(target, 1, name="ee"),
            "lm": CausalLMDrafter(tiny_other(model_type, layers=1, seed=3, **MORE[model_type]), VOCAB, name="lm")}
    composer = Composer(target, drafters=pool)
    assert composer.target.decoder.kind == "general"
    assert composer.target.decoder.windows == MORE_WINDOWS.get(model_type, [None] * 3)
    want = plain_greedy(target, prompt(1))
    for strategy in ("single", "merged_tree"):
        result = composer.generate(prompt(1), strategy=strategy, max_new_tokens=NEW, tree=TREE,
                                   **({"drafter": "ee"} if strategy == "single" else {}))
        assert result.token_ids == want, (model_type, strategy)


@pytest.mark.parametrize("model_type, message", [
    ("mpt", "does not give the logits of plain decoding"),  # ALiBi by cache slot: would be silently lossy
    ("bloom", "cannot run a draft tree"),  # ALiBi built from a 2D padding mask
    ("mamba", "layer 0 is 'linear_attention'"),  # a recurrent state, no per-token keys and values
])
def test_a_causal_lm_whose_forward_cannot_verify_trees_is_refused(model_type, message):
    with pytest.raises(ValueError, match=message):
        make_decoder(tiny_other(model_type))


@pytest.mark.parametrize("model", [
    BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)),
    BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)),
    tiny("llama").model,  # the decoder body without its head, of a family the fast decoder runs
], ids=["encoder", "masked-lm", "llama-without-head"])
def test_a_model_that_is_not_a_causal_lm_is_refused(model):
    with pytest.raises(ValueError, match="is not a causal LM"):
        Composer(model.eval())


def test_an_attention_implementation_without_4d_masks_is_refused():
    model = tiny("olmo2")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'.*'sdpa' or 'eager'"):
        make_decoder(model)


def test_a_batch_invariant_forward_is_not_offered_on_the_general_path():
    with pytest.raises(ValueError, match="batch-invariant forward exists for model types llama"):
        make_decoder(target_of("olmo2"), invariant=True)
    assert make_decoder(target_of("llama"), invariant=True).invariant


def test_a_16_bit_target_on_the_general_path_is_refused():
    """The general path is not batch-invariant: a bf16 target there could flip near-ties, so it is
    refused (a drafter's forward need not be exact: a bf16 LM drafter runs)."""
    model = tiny("olmo2").to(torch.bfloat16)
    with pytest.raises(ValueError, match="in torch.bfloat16 as the target.*load it in float32"):
        make_decoder(model, target=True)
    assert make_decoder(model).kind == "general"


def test_auto_dtype_is_float32_for_a_family_without_an_exact_bf16_forward(tmp_path):
    """A folder of another family under dtype="auto": float32 (the general path has no
    batch-invariant bf16 forward), where a fast family's folder gets bf16 on a bf16 machine."""
    from runtime.target_dtype import bf16_unavailable
    from eval_helpers import char_tokenizer

    for model_type in ("phi3", "llama"):
        folder = tmp_path / model_type
        tiny(model_type).save_pretrained(folder)
        char_tokenizer().save_pretrained(folder)
        composer = Composer(str(folder))
        fast_bf16 = model_type == "llama" and bf16_unavailable() is None
        assert composer.target.dtype == (torch.bfloat16 if fast_bf16 else torch.float32), model_type
    with pytest.raises(ValueError, match="float32"):
        Composer(str(tmp_path / "phi3"), dtype="bfloat16")
