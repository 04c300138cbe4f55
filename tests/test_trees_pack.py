"""Packing a tree into X, P, M: structure, and exactness against real transformers models."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from trees import DraftTree, kept_cache_positions, pack_tree

VOCAB = 101


def small_model(arch: str, attn: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1, attn_implementation=attn,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    cls, config = (LlamaForCausalLM, LlamaConfig) if arch == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    return cls(config(**common)).eval().requires_grad_(False)


def random_tree(n: int, seed: int, max_children: int = 3) -> DraftTree:
    g = torch.Generator().manual_seed(seed)
    parents = [-1]
    for i in range(1, n):
        parents.append(int(torch.randint(0, i, (1,), generator=g)))
    tokens = torch.randint(0, VOCAB, (n,), generator=g).tolist()
    return DraftTree.from_lists(tokens, parents).validate(VOCAB)


def prefix_cache(model, prefix: torch.Tensor) -> DynamicCache:
    cache = DynamicCache()
    model(input_ids=prefix[None], past_key_values=cache, use_cache=True)
    return cache


def last_logits(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_one_tree_forward_equals_sequential_decoding(arch, attn):
    """One forward over the packed tree against a cache of the prefix gives, at every node, the
    logits of running the model on prefix + root-to-node path."""
    model = small_model(arch, attn)
    prefix = torch.randint(0, VOCAB, (9,), generator=torch.Generator().manual_seed(1))
    tree = random_tree(14, seed=2)
    packed = pack_tree(tree, prefix_len=prefix.numel(), dtype=torch.float32)
    out = model(
        input_ids=packed.input_ids[None], position_ids=packed.position_ids[None],
        attention_mask=packed.attention_mask[None, None], past_key_values=prefix_cache(model, prefix), use_cache=True,
    ).logits[0]
    for node in range(len(tree)):
        expected = last_logits(model, prefix.tolist() + tree.tokens[tree.path_to(node)].tolist())
        torch.testing.assert_close(out[node], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_compacted_cache_continues_like_sequential_decoding(arch):
    """Keep prefix + accepted path (kept_cache_positions, selected per layer), feed the bonus
    token: same logits as decoding prefix + path + bonus from scratch."""
    model = small_model(arch, "sdpa", seed=3)
    prefix = torch.randint(0, VOCAB, (6,), generator=torch.Generator().manual_seed(4))
    tree = random_tree(12, seed=5)
    cache = prefix_cache(model, prefix)
    packed = pack_tree(tree, prefix_len=prefix.numel())
    model(input_ids=packed.input_ids[None], position_ids=packed.position_ids[None],
          attention_mask=packed.attention_mask[None, None], past_key_values=cache, use_cache=True)
    leaf = int(tree.depths.argmax())
    path = torch.tensor(tree.path_to(leaf))
    keep = kept_cache_positions(prefix.numel(), path)
    for layer in cache.layers:  # DynamicCache.crop cannot keep arbitrary positions
        layer.keys, layer.values = layer.keys[:, :, keep], layer.values[:, :, keep]
    assert cache.get_seq_length() == prefix.numel() + path.numel()
    bonus = 17
    step = model(input_ids=torch.tensor([[bonus]]), position_ids=torch.tensor([[prefix.numel() + path.numel()]]),
                 past_key_values=cache, use_cache=True).logits[0, -1]
    expected = last_logits(model, prefix.tolist() + tree.tokens[path].tolist() + [bonus])
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-5)


@settings(max_examples=40, derandomize=True, deadline=None, database=None)
@given(st.integers(1, 40), st.integers(0, 20), st.integers(0, 10**6),
       st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_packing_structure(n, prefix_len, seed, dtype):
    tree = random_tree(n, seed)
    packed = pack_tree(tree, prefix_len, dtype)
    assert torch.equal(packed.input_ids, tree.tokens)
    assert torch.equal(packed.position_ids, prefix_len + tree.depths)
    mask = packed.attention_mask
    assert mask.shape == (n, prefix_len + n) and mask.dtype == dtype
    assert (mask[:, :prefix_len] == 0).all()  # every node sees the whole prefix
    for i in range(n):
        ancestors = set(tree.path_to(i))
        assert {j for j in range(n) if packed.ancestors[i, j]} == ancestors
        row = mask[i, prefix_len:]
        assert all((row[j] == 0) == (j in ancestors) for j in range(n))
    assert set(mask.unique().tolist()) <= {0.0, torch.finfo(dtype).min}


def test_kept_cache_positions():
    assert kept_cache_positions(4, torch.tensor([0, 2, 5])).tolist() == [0, 1, 2, 3, 4, 6, 9]
    assert kept_cache_positions(0, torch.tensor([0])).tolist() == [0]
    with pytest.raises(ValueError, match="prefix_len"):
        pack_tree(DraftTree.root_only(1), -1)
