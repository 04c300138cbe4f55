"""Batch invariance of the float32 forward on the CPU (docs/design.md "Exact float32"): the
compiled float32 attention (runtime/layer_f32.c `f32_attention`) gives a row the same bits
whatever the rows beside it and wherever masked keys sit between its visible ones, it is close
to float64 attention, and a tree forward's logits equal plain decoding's to the bit, with the
layers op by op and compiled."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import native_layer
from runtime.decoder import Decoder
from runtime.invariant import invariant_attention
from test_invariant import _attention_case, _check_attention_rows, _check_tree_against_plain
from test_native_layer import check_one_call_layer, clear_layer_kernels
from tiny_models import tiny_model
from trees import attention_mask

pytestmark = pytest.mark.skipif(native_layer.f32_layer_kernel() is None, reason=(
    "the compiled float32 attention is not built here (no C compiler: runtime/native.py; or SPECMUX_NATIVE_LAYER=0)"))
F32 = torch.float32
SETTINGS = settings(derandomize=True, deadline=None, max_examples=25)


@SETTINGS
@given(n=st.integers(1, 40), prefix=st.integers(1, 400), seed=st.integers(0, 2**16))
def test_attention_row_equals_its_visible_keys_packed_alone(n, prefix, seed):
    _check_attention_rows(prefix, n, seed, dtype=F32)


@settings(derandomize=True, deadline=None, max_examples=6)
@given(prefix=st.sampled_from([300, 1000, 2040]), n=st.integers(16, 64), seed=st.integers(0, 2**16))
def test_attention_rows_invariant_at_the_default_targets_shape(prefix, n, seed):
    """9 heads, 3 kv heads, head dim 64; enough (row, head, key) triples to run on several threads."""
    _check_attention_rows(prefix, n, seed, heads=9, kv=3, hd=64, dtype=F32)


@SETTINGS
@given(kv=st.sampled_from([1, 2, 3]), group=st.sampled_from([1, 3, 4]), hd=st.sampled_from([8, 16, 48, 64, 128, 256]),
       n=st.integers(1, 20), extra=st.integers(0, 60), seed=st.integers(0, 2**16))
def test_close_to_float64_attention(kv, group, hd, n, extra, seed):
    g = torch.Generator().manual_seed(seed)
    heads, s = kv * group, n + extra
    q, keys, values = (torch.randn(1, h, r, hd, generator=g) for h, r in ((heads, n), (kv, s), (kv, s)))
    allowed = torch.rand(n, s, generator=g) < 0.6
    allowed[:, 0] = True
    mask = torch.zeros(n, s).masked_fill(~allowed, torch.finfo(F32).min)
    out = invariant_attention(q, keys, values, mask, hd ** -0.5)
    rep = lambda t: t.double().repeat_interleave(group, dim=1)  # noqa: E731
    scores = (q.double() @ rep(keys).transpose(-1, -2)) * hd ** -0.5 + mask.double().clamp(min=-1e300)
    scores = scores.masked_fill(~allowed, float("-inf"))
    want = torch.softmax(scores, dim=-1) @ rep(values)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_threads_change_nothing():
    q, keys, values, anc, _ = _attention_case(300, 40, 1, 9, 3, 64, dtype=F32)
    mask = attention_mask(anc, 300, F32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = invariant_attention(q, keys, values, mask, 0.125)
        torch.set_num_threads(2)
        two = invariant_attention(q, keys, values, mask, 0.125)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_clear_errors():
    q, keys, values = torch.randn(1, 2, 3, 16), torch.randn(1, 1, 5, 16), torch.randn(1, 1, 5, 16)
    hidden = torch.full((3, 5), torch.finfo(F32).min)
    with pytest.raises(ValueError, match="sees no key"):
        invariant_attention(q, keys, values, hidden, 0.25)
    with pytest.raises(ValueError, match="head dim 12"):
        invariant_attention(q[..., :12], keys[..., :12], values[..., :12], None, 0.25)
    with pytest.raises(ValueError, match="bf16 or float32"):
        invariant_attention(q.double(), keys.double(), values.double(), None, 0.25)


def test_the_float32_decoder_takes_it_by_default(monkeypatch):
    assert Decoder(tiny_model("llama", vocab=96, layers=2, hidden=64).float()).invariant
    monkeypatch.setenv(native_layer.SWITCH, "0")  # the compiled float32 layer and attention off: SDPA
    clear_layer_kernels()
    try:
        assert not Decoder(tiny_model("llama", vocab=96, layers=2, hidden=64).float()).invariant
    finally:
        monkeypatch.undo()
        clear_layer_kernels()


@pytest.fixture(scope="module", params=[64, 128], ids=["op-by-op", "compiled-layer"])
def tiny_f32(request):
    """Head dim 16: the layers op by op around the float32 attention; 128 wide (head dim 32): the
    compiled float32 layer, the attention inside it."""
    model = tiny_model("llama", vocab=96, layers=2, hidden=request.param)
    model.config.max_position_embeddings = 4096
    decoder = Decoder(model.float())
    with torch.inference_mode():  # the plan a forward at inference runs
        assert decoder.plan().fused == (request.param == 128)
    assert decoder.invariant
    return decoder


@SETTINGS
@given(prefix=st.integers(1, 200), n=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_tree_forward_logits_equal_plain_decoding(tiny_f32, prefix, n, seed):
    with torch.inference_mode():
        _check_tree_against_plain(tiny_f32, prefix, n, seed)


def test_one_call_layer_equals_the_layer_around_the_attention(monkeypatch):
    """The whole-layer call (cache write and attention inside) computes the same bits as pre, the
    decoder's attention and post (what a batch of requests runs: serve/batch.py)."""
    check_one_call_layer(Decoder(tiny_model("llama", vocab=96, layers=2, hidden=128).float()), monkeypatch)
