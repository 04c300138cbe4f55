"""The compiled bf16 decoder layer (runtime/layer_kernel.c, runtime/native_layer.py): the plan
takes it where it fits, it computes what the layer's ops compute (to bf16 rounding), each row is
the same bits at any row count, a tree forward on it equals plain decoding, and the switch
turns it off."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import native_layer
from runtime.decoder import Decoder
from runtime.native_linear import amx_ready
from tiny_models import tiny_model
from trees import attention_mask

pytestmark = pytest.mark.skipif(not amx_ready(), reason="the compiled bf16 layer runs the AMX linears: this CPU has no AMX")
BF16 = torch.bfloat16
SETTINGS = settings(derandomize=True, deadline=None, max_examples=20)


def _decoder(arch: str = "llama", hidden: int = 128, dtype: torch.dtype = BF16) -> Decoder:
    """A 2-layer tiny model in `dtype` (also the float32 layer's: tests/test_native_layer_f32.py)."""
    model = tiny_model(arch, vocab=96, layers=2, hidden=hidden)  # 4 heads: head dim 32 at 128
    model.config.max_position_embeddings = 2048
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms initialise to ones, which hides their roundings
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    return Decoder(model.to(dtype))


def clear_layer_kernels() -> None:
    """Forget the loaded compiled layers (bf16 and float32), so the switch is read again."""
    native_layer.layer_kernel.cache_clear()
    native_layer.f32_layer_kernel.cache_clear()


@pytest.fixture
def op_by_op(monkeypatch):
    """Layers op by op (SPECMUX_NATIVE_LAYER=0) for the test's duration."""
    monkeypatch.setenv(native_layer.SWITCH, "0")
    clear_layer_kernels()
    yield
    monkeypatch.undo()
    clear_layer_kernels()


def _fused(decoder: Decoder) -> bool:
    with torch.inference_mode():  # the plan a forward at inference runs
        return decoder.plan().fused


def _forward(decoder: Decoder, ids: torch.Tensor):
    cache = decoder.new_cache(ids.numel() + 8)
    with torch.inference_mode():
        return decoder.forward(ids, torch.arange(ids.numel()), cache, None, hidden_layers=[1, -1])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q|k|v with a bias
def test_plan_takes_the_compiled_layer_where_it_fits(arch):
    assert _fused(_decoder(arch))
    assert not _fused(_decoder(arch, hidden=64))  # head dim 16: op by op


def test_switch_turns_it_off(op_by_op):
    assert native_layer.layer_kernel() is None
    assert not _fused(_decoder())


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
    # the same roundings op for op; only the norm's float32 sum and silu's exp are summed or
    # approximated differently, which moves a bf16 result at a rounding boundary by one step
    for a, b in [(compiled.hidden_states[1], ops.hidden_states[1]), (compiled.hidden_states[-1], ops.hidden_states[-1]),
                 (compiled.logits, ops.logits)]:
        torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -6, atol=2 ** -6 * float(b.float().abs().max()))


@SETTINGS
@given(n=st.integers(1, 48), prefix=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_rows_do_not_depend_on_the_row_count(n, prefix, seed):
    decoder = _decoder()
    assert _fused(decoder)
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, 96, (prefix,), generator=g)
    rows = torch.randint(0, 96, (n,), generator=g)
    with torch.inference_mode():
        cache = decoder.new_cache(prefix + n)
        decoder.forward(prompt, torch.arange(prefix), cache, None)
        full = decoder.forward(rows, torch.arange(prefix, prefix + n), cache, None, hidden_layers=[1])
        cache.crop(prefix)
        last = decoder.forward(rows, torch.arange(prefix, prefix + n), cache, None, hidden_layers=[1])
        for i in sorted({0, n // 2, n - 1}):
            # row i alone after the rows before it (causal): the same bits as beside all n
            cache.crop(prefix)
            if i:
                decoder.forward(rows[:i], torch.arange(prefix, prefix + i), cache, None)
            alone = decoder.forward(rows[i : i + 1], torch.tensor([prefix + i]), cache, None, hidden_layers=[1])
            assert torch.equal(alone.logits[0], full.logits[i]), (n, prefix, i)
            assert torch.equal(alone.hidden_states[1][0], full.hidden_states[1][i])
    assert torch.equal(full.logits, last.logits)


def test_one_call_layer_equals_the_layer_around_the_attention(monkeypatch):
    """The whole-layer call (cache write and attention inside) computes the same bits as pre,
    the decoder's attention and post (what a batch of requests runs: serve/batch.py)."""
    check_one_call_layer(_decoder(), monkeypatch)


def check_one_call_layer(decoder: Decoder, monkeypatch) -> None:
    """A prompt, then a random tree's rows: the same logits, hidden states and cache entries with
    the whole-layer call as with the decoder's attention between pre and post (also the float32
    layer's: tests/test_invariant_f32.py)."""
    g = torch.Generator().manual_seed(3)
    prompt, tree = torch.randint(0, 96, (50,), generator=g), torch.randint(0, 96, (9,), generator=g)
    allowed = (torch.rand(9, 9, generator=g) < 0.5).tril(-1) | torch.eye(9, dtype=torch.bool)  # a random tree's rows
    mask = attention_mask(allowed, 50, decoder.dtype)
    runs, direct_calls = [], []
    direct = Decoder._direct
    monkeypatch.setattr(Decoder, "_direct", lambda *a: direct_calls.append(direct(*a)) or direct_calls[-1])
    for whole in (True, False):
        if not whole:
            monkeypatch.setattr(Decoder, "_direct", lambda self, cache, inputs, rows: None)
        with torch.inference_mode():
            cache = decoder.new_cache(64)
            first = decoder.forward(prompt, torch.arange(50), cache, None, hidden_layers=[1, -1])
            second = decoder.forward(tree, torch.arange(50, 59), cache, mask, hidden_layers=[1, -1])
        runs.append((first, second, cache))
    assert direct_calls[-1] is not None and not direct_calls[-1].skip  # the tree's rows ran the whole-layer calls
    for a, b in zip(runs[0][:2], runs[1][:2]):
        assert torch.equal(a.logits, b.logits)
        assert all(torch.equal(a.hidden_states[i], b.hidden_states[i]) for i in (1, -1))
    assert torch.equal(runs[0][2].keys[:, :, :, :59], runs[1][2].keys[:, :, :, :59])
    assert torch.equal(runs[0][2].values[:, :, :, :59], runs[1][2].values[:, :, :, :59])
