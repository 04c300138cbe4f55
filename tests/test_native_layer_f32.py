"""The compiled float32 decoder layer (runtime/layer_f32.c, runtime/native_layer.py), the path of
CPUs without native bf16: the plan takes it where it fits, it computes what the layer's ops
compute (to float32 rounding), `pre` and `post` give each row the same bits at any row count, a
tree forward on it keeps greedy decoding's tokens, and the switch turns it off."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import native_layer
from runtime.decoder import Decoder
from test_native_layer import _decoder as _any_decoder
from test_native_layer import _forward, clear_layer_kernels

pytestmark = pytest.mark.skipif(native_layer.f32_layer_kernel() is None, reason=(
    "the compiled float32 layer is not built here (no C compiler: runtime/native.py; or SPECMUX_NATIVE_LAYER=0)"))
SETTINGS = settings(derandomize=True, deadline=None, max_examples=20)


def _decoder(arch: str = "llama", hidden: int = 128) -> Decoder:
    return _any_decoder(arch, hidden, torch.float32)


@pytest.fixture
def op_by_op(monkeypatch):
    """Layers op by op (SPECMUX_NATIVE_LAYER=0) for the test's duration."""
    monkeypatch.setenv(native_layer.SWITCH, "0")
    clear_layer_kernels()
    yield
    monkeypatch.undo()
    clear_layer_kernels()


def _plan(decoder: Decoder):
    with torch.inference_mode():  # the plan a forward at inference runs
        return decoder.plan()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q|k|v with a bias
def test_plan_takes_the_compiled_layer_where_it_fits(arch):
    plan = _plan(_decoder(arch))
    assert plan.fused and all(layer.fused.dtype == torch.float32 for layer in plan.layers)
    assert not _plan(_decoder(arch, hidden=64)).fused  # head dim 16: op by op


def test_switch_turns_it_off(op_by_op):
    assert native_layer.f32_layer_kernel() is None
    assert not _plan(_decoder()).fused


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_compiled_layer_computes_the_layer(arch, monkeypatch):
    torch.manual_seed(1)
    ids = torch.randint(0, 96, (40,))
    compiled = _forward(_decoder(arch), ids)
    monkeypatch.setenv(native_layer.SWITCH, "0")
    clear_layer_kernels()
    try:
        ops = _forward(_decoder(arch), ids)
    finally:
        monkeypatch.undo()
        clear_layer_kernels()
    # float32 both: only the norm's sum order, 1 / sqrt, silu's exp and fused multiply-adds
    # differ (~1e-7 relative); a wrong piece moves these by far more
    for a, b in [(compiled.hidden_states[1], ops.hidden_states[1]), (compiled.hidden_states[-1], ops.hidden_states[-1]),
                 (compiled.logits, ops.logits)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@SETTINGS
@given(n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_pre_and_post_rows_do_not_depend_on_the_row_count(n, seed):
    """Each row of `pre` (norm, q|k|v, rotation) and `post` (o, residual, norm, MLP, residual) is
    the same bits computed beside n - 1 others as alone."""
    layer = _plan(_decoder()).layers[1].fused
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, layer.d, generator=g)
    angles = torch.rand(n, layer.hd // 2, generator=g) * 6.0
    cos = torch.cat([angles.cos()] * 2, dim=-1).contiguous()
    ssin = torch.cat([-angles.sin(), angles.sin()], dim=-1).contiguous()
    attn = torch.randn(n, layer.width, generator=g)
    with torch.inference_mode():
        qkv = layer.pre(h, cos, ssin)
        after = h.clone()
        layer.post(after, attn)
        for i in sorted({0, n // 2, n - 1}):
            one = layer.pre(h[i : i + 1].clone(), cos[i : i + 1].clone(), ssin[i : i + 1].clone())
            assert torch.equal(one[0], qkv[i]), (n, i)
            alone = h[i : i + 1].clone()
            layer.post(alone, attn[i : i + 1].clone())
            assert torch.equal(alone[0], after[i]), (n, i)


def test_greedy_tree_forward_keeps_plain_decodings_tokens():
    """A chain fed in one forward on the compiled layer gives the tokens feeding it one by one gives."""
    decoder = _decoder()
    g = torch.Generator().manual_seed(4)
    prompt, chain = torch.randint(0, 96, (30,), generator=g), torch.randint(0, 96, (8,), generator=g)
    with torch.inference_mode():
        cache = decoder.new_cache(48)
        decoder.forward(prompt, torch.arange(30), cache, None)
        together = decoder.forward(chain, torch.arange(30, 38), cache, None).logits
        cache.crop(30)
        alone = torch.cat([decoder.forward(chain[i : i + 1], torch.tensor([30 + i]), cache, None).logits for i in range(8)])
    assert torch.equal(together.argmax(-1), alone.argmax(-1))
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
