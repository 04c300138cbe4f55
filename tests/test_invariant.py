"""Batch invariance of the bf16 forward (docs/design.md "Exact bf16"): a row's result is
bit-identical whatever the number of rows beside it and wherever masked keys sit between its
visible ones, op by op and for the whole forward of a tree against plain decoding."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.target_dtype import resolve_dtype
from runtime import native_layer
from runtime.decoder import Decoder
from runtime.plan import Norm, rotate, rotation_tables
from runtime.invariant import check_kernels, invariant_attention
from runtime.prepacked import matmul
from tiny_models import needs_native_bf16, tiny_model
from trees import ancestor_matrix, attention_mask

pytestmark = needs_native_bf16()
BF16 = torch.bfloat16
SETTINGS = settings(derandomize=True, deadline=None, max_examples=25)


def test_kernel_self_check_passes_here():
    assert check_kernels("cpu") is None
    assert resolve_dtype("auto") == BF16 and resolve_dtype("bfloat16") == BF16


@SETTINGS
@given(n=st.one_of(st.integers(1, 64), st.integers(65, 300)), out=st.sampled_from([16, 96, 192, 576, 1536]),
       features=st.sampled_from([64, 576, 1536]), seed=st.integers(0, 2**16))
def test_linear_rows_do_not_depend_on_the_row_count(n, out, features, seed):
    # the default target's widths (576, 1536): on AMX oneDNN changes kernel past 32 rows there
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(out, features, generator=g) / features ** 0.5).to(BF16)
    x = (torch.randn(n, features, generator=g) * 3).to(BF16)
    with torch.inference_mode():
        full = matmul(x, weight)
        for i in {0, n // 2, n - 1}:
            assert torch.equal(full[i], matmul(x[i : i + 1], weight)[0])


@SETTINGS
@given(n=st.integers(1, 48), prefix=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_norm_and_rope_rows_do_not_depend_on_the_row_count(n, prefix, seed):
    model = tiny_model("llama").to(BF16)
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(1, n, 64, generator=g) * 4).to(BF16)
    module = model.model.layers[0].input_layernorm
    norm = Norm(module.weight, module.variance_epsilon)  # what the decoder's plan runs
    with torch.inference_mode():
        assert torch.equal(module(h)[:, -1:], module(h[:, -1:]))
        assert torch.equal(norm(h[0], n)[-1:], norm(h[0, -1:], 1))
        pos = torch.arange(prefix, prefix + n)[None]
        cos, sin = rotation_tables(*model.model.rotary_emb(h, pos))
        x = torch.randn(n, 4, 16, generator=g).to(BF16)
        cos1, sin1 = rotation_tables(*model.model.rotary_emb(h[:, -1:], pos[:, -1:]))
        assert torch.equal(rotate(x, cos, sin)[-1:], rotate(x[-1:], cos1, sin1))


def _attention_case(prefix: int, n: int, seed: int, heads: int, kv: int, hd: int, reach: int | None = 4,
                    dtype: torch.dtype = BF16):
    """Random q/k/v and a random tree of n nodes after `prefix` cached keys: positions are
    prefix + depth, as the engine packs them."""
    g = torch.Generator().manual_seed(seed)
    parents = _random_tree(n, g, reach=reach)
    depths = _depths(parents)
    keys = torch.randn(1, kv, prefix + n, hd, generator=g).to(dtype)
    values = torch.randn(1, kv, prefix + n, hd, generator=g).to(dtype)
    q = (torch.randn(1, heads, n, hd, generator=g) * 2).to(dtype)
    return q, keys, values, ancestor_matrix(parents, depths), torch.cat([torch.arange(prefix), prefix + depths])


def _check_attention_rows(prefix: int, n: int, seed: int, heads: int = 6, kv: int = 2, hd: int = 16,
                          dtype: torch.dtype = BF16) -> None:
    """Every checked row of a tree's attention equals the same query over only its visible keys,
    contiguous at positions 0.., as plain decoding has them (bf16, or float32: test_invariant_f32)."""
    q, keys, values, anc, positions = _attention_case(prefix, n, seed, heads, kv, hd, dtype=dtype)
    out = invariant_attention(q, keys, values, attention_mask(anc, prefix, torch.float32), 0.25)
    for i in sorted({0, n // 2, n - 1}):
        cols = torch.cat([torch.arange(prefix), anc[i].nonzero().flatten() + prefix])
        alone = invariant_attention(q[:, :, i : i + 1], keys[:, :, cols], values[:, :, cols], None, 0.25)
        assert torch.equal(out[:, :, i : i + 1], alone), (prefix, n, i)


@SETTINGS
@given(n=st.integers(1, 40), prefix=st.integers(1, 400), seed=st.integers(0, 2**16))
def test_attention_row_equals_its_visible_keys_packed_alone(n, prefix, seed):
    _check_attention_rows(prefix, n, seed)


@settings(derandomize=True, deadline=None, max_examples=8)
@given(prefix=st.sampled_from([1000, 1020, 1990, 2000, 2040, 4060]), n=st.integers(33, 64), seed=st.integers(0, 2**16))
def test_attention_rows_invariant_on_long_contexts(prefix, n, seed):
    """The default target's attention shape (9 heads, 3 kv heads, head dim 64) with key axes past
    1024 (where the bf16 matmul of the former torch formulation split the key axis)."""
    _check_attention_rows(prefix, n, seed, heads=9, kv=3, hd=64)


def _plain_logits(decoder: Decoder, prompt: torch.Tensor, path: list[int]) -> torch.Tensor:
    """Plain decoding: the prompt, then the path's tokens one forward each; the last one's logits."""
    cache = decoder.new_cache(prompt.numel() + len(path) + 1)
    decoder.forward(prompt, torch.arange(prompt.numel()), cache, None, logits_rows=slice(-1, None))
    for token in path:
        out = decoder.forward(torch.tensor([token]), torch.tensor([cache.length]), cache, None)
    return out.logits[0]


def _random_tree(n: int, g: torch.Generator, reach: int | None = None) -> torch.Tensor:
    """Parents of a random tree in node order (reach: a parent among the `reach` nodes before,
    which makes deep trees)."""
    parents = torch.zeros(n, dtype=torch.long)
    for i in range(1, n):
        low = 0 if reach is None else max(0, i - reach)
        parents[i] = int(torch.randint(low, i, (1,), generator=g))
    return parents


def _depths(parents: torch.Tensor) -> torch.Tensor:
    depths = torch.zeros_like(parents)
    for i in range(1, parents.numel()):
        depths[i] = depths[parents[i]] + 1
    return depths


@pytest.fixture(scope="module", params=[64, 128], ids=["op-by-op", "compiled-layer"])
def tiny_bf16(request):
    """Head dim 16: the layers op by op; 128 wide (head dim 32): the compiled layer where the
    CPU has AMX (runtime/native_layer.py)."""
    model = tiny_model("llama", vocab=96, layers=2, hidden=request.param)
    model.config.max_position_embeddings = 4096
    decoder = Decoder(model.to(BF16))
    with torch.inference_mode():  # the plan a forward at inference runs
        assert decoder.plan().fused == (request.param == 128 and native_layer.layer_kernel() is not None)
    return decoder


def _check_tree_against_plain(decoder, prefix: int, n: int, seed: int, nodes_checked: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, 96, (prefix,), generator=g)
    parents = _random_tree(n, g, reach=4)
    tokens = torch.randint(0, 96, (n,), generator=g)
    depths = _depths(parents)
    anc = ancestor_matrix(parents, depths)
    cache = decoder.new_cache(prefix + n)
    decoder.forward(prompt, torch.arange(prefix), cache, None, logits_rows=slice(-1, None))
    tree = decoder.forward(tokens, depths + prefix, cache, attention_mask(anc, prefix, decoder.dtype))
    for i in sorted({0, n - 1, *torch.randint(0, n, (nodes_checked,), generator=g).tolist()}):
        path = anc[i].nonzero().flatten().tolist()  # ancestors in node order = depth order
        assert torch.equal(tree.logits[i], _plain_logits(decoder, prompt, tokens[path].tolist())), (prefix, n, i)


@SETTINGS
@given(prefix=st.integers(1, 200), n=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_tree_forward_logits_equal_plain_decoding(tiny_bf16, prefix, n, seed):
    with torch.inference_mode():
        _check_tree_against_plain(tiny_bf16, prefix, n, seed)


@settings(derandomize=True, deadline=None, max_examples=6)
@given(offset=st.integers(-40, 8), n=st.integers(8, 48), seed=st.integers(0, 2**16))
def test_tree_forward_equal_plain_decoding_after_a_long_prefix(tiny_bf16, offset, n, seed):
    """Prefixes around 1024 (the whole forward, positions from the cache)."""
    with torch.inference_mode():
        _check_tree_against_plain(tiny_bf16, 1024 + offset, n, seed, nodes_checked=2)
