"""bf16 linears on Intel AMX (runtime/linear_kernel.c, runtime/amx.py): close to the float64
product, every row bit-identical whatever the rows beside it (1..80 rows, both row-tile paths),
the threads and the input's strides; packed.matmul takes it for bf16 only; clear errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import runtime.amx as amx
import runtime.native as native
from runtime import prepacked

BF16 = torch.bfloat16
SETTINGS = settings(derandomize=True, deadline=None, max_examples=25)


def _why_not() -> str | None:
    if not amx.cpu_has_amx():
        return "this CPU has no AMX (bf16 linears run on oneDNN's kernel here)"
    if native._compiler() is None:
        return "no C compiler here: the AMX kernel cannot be built"
    if amx.linear_kernel() is None:
        return "AMX kernel switched off (SPECMUX_AMX_LINEAR=0) or the OS refuses the tile registers"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


def _case(seed: int, n: int, k: int, m: int, bias: bool):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(BF16)
    x = (torch.randn(m, k, generator=g) * 2).to(BF16)
    b = torch.randn(n, generator=g).to(BF16) if bias else None
    return w, x, b


@SETTINGS
@given(n=st.integers(1, 200), k=st.integers(1, 300), m=st.integers(1, 70), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_close_to_the_float64_product(n, k, m, bias, seed):
    w, x, b = _case(seed, n, k, m, bias)
    out = amx.linear(x, amx.AmxWeight(w), b).double()
    ref = x.double() @ w.double().T + (0 if b is None else b.double())
    # bf16 output rounding (2^-9 relative) plus float32 sums over k products
    bound = ref.abs() * 2.0 ** -8 + 1e-5 * k * (x.double().abs().max() * w.double().abs().max())
    assert out.shape == (m, n)
    assert (out - ref).abs().le(bound).all(), float((out - ref).abs().max())


@SETTINGS
@given(n=st.sampled_from([16, 64, 100, 192, 960]), k=st.sampled_from([32, 70, 576]),
       m=st.integers(2, 80), seed=st.integers(0, 2**16))
def test_a_row_is_the_same_bits_at_any_row_count(n, k, m, seed):
    """Rows 1..16 run one row tile, more run pairs of tiles: a row computed alone equals it
    computed beside m - 1 others, wherever it sits."""
    w, x, b = _case(seed, n, k, m, True)
    packed = amx.AmxWeight(w)
    together = amx.linear(x, packed, b)
    alone = torch.cat([amx.linear(x[i : i + 1], packed, b) for i in range(m)])
    assert torch.equal(together, alone)
    assert torch.equal(amx.linear(x[m // 2 :], packed, b), together[m // 2 :])


def test_threads_and_strided_rows_change_no_bit():
    w, x, b = _case(3, 300, 576, 40, True)
    packed = amx.AmxWeight(w)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = amx.linear(x, packed, b)
        torch.set_num_threads(2)
        two = amx.linear(x, packed, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    wide = torch.zeros(40, 700, dtype=BF16)
    wide[:, 50:626] = x
    strided = wide[:, 50:626]  # rows 700 apart
    assert strided.stride() == (700, 1)
    assert torch.equal(amx.linear(strided, packed, b), one)


def test_prepacked_matmul_runs_bf16_on_amx_and_float32_on_onednn():
    w, x, b = _case(5, 96, 64, 7, True)
    with torch.inference_mode():
        got = prepacked.matmul(x, w, b)
        assert isinstance(prepacked._packed(w, True), amx.AmxWeight)
        assert torch.equal(got, amx.linear(x, amx.AmxWeight(w), b))
        w32 = w.float()
        prepacked.matmul(x.float(), w32)
        assert isinstance(prepacked._packed(w32), torch.Tensor)  # oneDNN's packed tensor


def test_clear_errors():
    w, x, _ = _case(7, 32, 64, 3, False)
    packed = amx.AmxWeight(w)
    with pytest.raises(ValueError, match=r"bf16 rows \[m, 64\]"):
        amx.linear(x.float(), packed, None)
    with pytest.raises(ValueError, match=r"bf16 rows \[m, 64\]"):
        amx.linear(x[:, :32], packed, None)
    with pytest.raises(ValueError, match="2-d bf16 weight"):
        amx.AmxWeight(w.float())
    assert amx.linear(x[:0], packed, None).shape == (0, 32)


def test_switched_off_means_no_kernel(monkeypatch):
    monkeypatch.setenv(amx.SWITCH, "0")
    amx.linear_kernel.cache_clear()
    try:
        assert amx.linear_kernel() is None
    finally:
        monkeypatch.delenv(amx.SWITCH)
        amx.linear_kernel.cache_clear()
    assert amx.linear_kernel() is not None
