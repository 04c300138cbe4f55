"""runtime.decoder (the plain-PyTorch forward the target and LM drafters run) against
transformers' own forward, and the static KV cache's compaction."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from runtime.decoder import Decoder
from runtime.kv import KVCache
from runtime.plan import Packed
from tiny_models import tiny_model
from trees import DraftTree, pack_tree


def qwen3_model():
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return Qwen3ForCausalLM(config).eval().requires_grad_(False)


MODELS = {"llama": lambda: tiny_model("llama", layers=3), "qwen2": lambda: tiny_model("qwen2", layers=3, seed=1),
          "llama-eager": lambda: tiny_model("llama", layers=2, attn="eager"), "qwen3": qwen3_model}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_prefill_and_tree_forward_equal_transformers(name):
    model = MODELS[name]()
    decoder = Decoder(model)
    prompt = torch.randint(0, 96, (11,), generator=torch.Generator().manual_seed(2))
    cache = decoder.new_cache(capacity=4)  # grows while prefilling
    n_layers = model.config.num_hidden_layers
    out = decoder.forward(prompt, torch.arange(11), cache, None, hidden_layers=(0, 1, -1, n_layers))
    ref = model(prompt[None], output_hidden_states=True, use_cache=True)
    torch.testing.assert_close(out.logits, ref.logits[0], rtol=1e-4, atol=1e-4)
    for i in (0, 1, -1, n_layers):
        torch.testing.assert_close(out.hidden_states[i], ref.hidden_states[i][0], rtol=1e-4, atol=1e-4)
    for layer in range(n_layers):
        torch.testing.assert_close(cache.keys[layer, :, :, :11], ref.past_key_values.layers[layer].keys, rtol=1e-4, atol=1e-4)
    # a packed tree against the cache: every node's logits are those of its own path
    tree = DraftTree.from_lists([5, 7, 9, 11, 13], [-1, 0, 0, 1, 1])
    packed = pack_tree(tree, 11, decoder.dtype)
    got = decoder.forward(packed.input_ids, packed.position_ids, cache, packed.attention_mask).logits
    for node in range(len(tree)):
        path = tree.tokens[tree.path_to(node)]
        want = model(torch.cat([prompt, path])[None]).logits[0, -1]
        torch.testing.assert_close(got[node], want, rtol=1e-4, atol=1e-4)


def test_causal_chunk_after_a_cache_and_logits_rows():
    model = MODELS["llama"]()
    decoder = Decoder(model)
    ids = torch.randint(0, 96, (9,), generator=torch.Generator().manual_seed(3))
    cache = decoder.new_cache()
    decoder.forward(ids[:5], torch.arange(5), cache, None, logits_rows=slice(0, 0))
    out = decoder.forward(ids[5:], torch.arange(5, 9), cache, None, logits_rows=slice(2, None))
    assert cache.length == 9 and out.logits.shape[0] == 2
    torch.testing.assert_close(out.logits, model(ids[None]).logits[0, 7:], rtol=1e-4, atol=1e-4)


def test_a_mask_of_the_wrong_width_is_refused_before_any_layer_runs():
    """A tree mask made for another cache length (the attention would read past its rows) is
    an error naming both shapes, and the cache is left as it was."""
    decoder = Decoder(MODELS["llama"]())
    cache = decoder.new_cache()
    decoder.forward(torch.arange(5), torch.arange(5), cache, None)
    stale = torch.zeros(3, 3 + 3)  # made for a cache of 3 entries
    with pytest.raises(ValueError, match=r"mask is \(3, 6\), but 3 new rows after 5 cached entries need \[3, 8\]"):
        decoder.forward(torch.arange(3), torch.arange(5, 8), cache, stale)
    assert cache.length == 5


def test_cache_keep_moves_rows_in_place():
    cache = KVCache(layers=2, kv_heads=1, head_dim=1, dtype=torch.float32, capacity=2)
    cache.reserve(6)
    for layer in range(2):
        cache.write(layer, torch.arange(6.0).view(1, 1, 6, 1) + 10 * layer, -torch.arange(6.0).view(1, 1, 6, 1))
    cache.advance(6)
    cache.keep(2, torch.tensor([1, 3]))  # keep positions 0, 1, 3, 5
    assert cache.length == 4
    assert cache.keys[1, 0, 0, :4, 0].tolist() == [10.0, 11.0, 13.0, 15.0]
    assert cache.values[0, 0, 0, :4, 0].tolist() == [0.0, -1.0, -3.0, -5.0]
    with pytest.raises(ValueError, match="cannot keep offset"):
        cache.keep(2, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="cannot crop"):
        cache.crop(5)


def test_unsupported_architecture_is_named():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="model type 'gpt2' is not supported"):
        Decoder(model)


@pytest.mark.parametrize("types", ["all", "hybrid"])
def test_sliding_window_past_the_window_equals_transformers(types):
    """Prefill, single tokens and a causal chunk, past the window (test_sliding_window.py runs trees)."""
    torch.manual_seed(1)
    n_layers = 3
    layer_types = ["sliding_attention" if types == "all" or i % 2 == 0 else "full_attention" for i in range(n_layers)]
    config = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.2, use_sliding_window=True, sliding_window=4, layer_types=layer_types,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = Qwen2ForCausalLM(config).eval().requires_grad_(False)
    ids = torch.randint(0, 96, (16,), generator=torch.Generator().manual_seed(3))
    want = model(ids[None]).logits[0]
    decoder = Decoder(model)
    cache = decoder.new_cache(capacity=4)
    got = [decoder.forward(ids[:6], torch.arange(6), cache, None).logits]
    for i in range(6, 9):
        got.append(decoder.forward(ids[i : i + 1], torch.tensor([i]), cache, None).logits)
    got.append(decoder.forward(ids[9:], torch.arange(9, 16), cache, None).logits)
    torch.testing.assert_close(torch.cat(got), want, rtol=1e-4, atol=1e-4)
    model.config.sliding_window = 64  # the window matters: a wide one changes the logits
    assert not torch.allclose(model(ids[None]).logits[0], want, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plan_norm_and_rotation_are_transformers_to_the_bit(dtype):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from runtime.plan import Norm, rotate, rotation_tables

    model = tiny_model("llama", layers=1).to(dtype)
    g = torch.Generator().manual_seed(5)
    h = (torch.randn(1, 7, 64, generator=g) * 3).to(dtype)
    module = model.model.layers[0].input_layernorm
    with torch.inference_mode():
        assert torch.equal(Norm(module.weight, module.variance_epsilon)(h[0], 7), module(h)[0])
        cos, sin = model.model.rotary_emb(h, torch.arange(40, 47)[None])
        q, k = (torch.randn(1, heads, 7, 16, generator=g).to(dtype) for heads in (4, 2))
        want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
        qk = torch.cat([q[0].transpose(0, 1), k[0].transpose(0, 1)], dim=1)  # [n, heads, hd] side by side
        got = rotate(qk, *rotation_tables(cos, sin))
        assert torch.equal(got[:, :4], want_q[0].transpose(0, 1)) and torch.equal(got[:, 4:], want_k[0].transpose(0, 1))


def test_the_plan_follows_the_model():
    """The packed plan is rebuilt when a module is swapped, a hook registered or a weight edited in
    place, and the forward then gives what the changed model gives."""
    model = tiny_model("llama", layers=2)
    decoder = Decoder(model)
    ids, pos = torch.tensor([3, 5, 7]), torch.arange(3)

    def logits():
        with torch.inference_mode():
            return decoder.forward(ids, pos, decoder.new_cache(), None).logits

    def plan():
        with torch.inference_mode():  # the packed plan (gradients on: the modules' own forwards)
            return decoder.plan()

    before = logits()
    first = plan()
    assert isinstance(first.layers[1].mlp.gate_up, Packed) and plan() is first  # unchanged model: the same plan
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(1.5)
    edited = logits()
    assert not torch.equal(edited, before) and plan() is not first
    handle = model.lm_head.register_forward_hook(lambda module, inputs, output: output + 1.0)
    torch.testing.assert_close(logits(), edited + 1.0)
    handle.remove()
    model.lm_head = torch.nn.Linear(64, model.config.vocab_size, bias=False)
    with torch.inference_mode():
        swapped = logits()
        want = model.lm_head(decoder.forward(ids, pos, decoder.new_cache(), None, hidden_layers=[-1]).hidden_states[-1])
    torch.testing.assert_close(swapped, want.float(), rtol=1e-5, atol=1e-5)


def test_a_decoder_with_a_plan_can_be_deep_copied():
    """Packed weights cannot be copied: a copy builds its own plan over its own model."""
    import copy

    decoder = Decoder(tiny_model("llama", layers=1))
    ids, pos = torch.tensor([3, 5]), torch.arange(2)
    with torch.inference_mode():
        want = decoder.forward(ids, pos, decoder.new_cache(), None).logits
        twin = copy.deepcopy(decoder)
        assert twin.model is not decoder.model
        assert torch.equal(twin.forward(ids, pos, twin.new_cache(), None).logits, want)


@pytest.mark.parametrize("rope", [None, {"rope_type": "linear", "factor": 2.0},
                                  {"rope_type": "dynamic", "factor": 2.0}])
@pytest.mark.parametrize("head_dim", [16, 24, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_rotary_table_gives_the_modules_bits_at_any_positions(rope, head_dim, dtype):
    """runtime.plan.RotaryTable: a forward's gathered rows are the bits the rotary module gives
    when called at those positions (any count, order, growth past the table); dynamic rope types
    (rescaled with the length) are not tabled."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from runtime.plan import RotaryTable, rotation_tables

    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim, rope_theta=100000.0,
                         max_position_embeddings=512, rope_scaling=rope)
    rotary = LlamaRotaryEmbedding(config)
    if rope is not None and rope["rope_type"] == "dynamic":
        assert not RotaryTable.fits(rotary)
        return
    assert RotaryTable.fits(rotary)
    table = RotaryTable(rotary, dtype)
    g = torch.Generator().manual_seed(head_dim)
    for rows, top in [(1, 5), (7, 300), (3, 40), (1, 1000), (33, 2000), (2, 1)]:
        positions = torch.randint(0, top, (rows,), generator=g)
        h = torch.zeros(1, rows, 4 * head_dim, dtype=dtype)
        got = table(h, positions)
        want = rotation_tables(*rotary(h, positions.view(1, rows)))
        assert all(a.dtype == dtype and torch.equal(a, b) for a, b in zip(got, want))
    assert table.key != "off" and table.cos.shape[0] == 2048  # grown by doubling, never abandoned
