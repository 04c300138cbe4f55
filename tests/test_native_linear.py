"""The native linears (runtime/linear_kernel.c, runtime/native_linear.py), bf16 on Intel AMX and
float32 anywhere: close to the float64 product, every row bit-identical whatever the rows beside
it (1..80 rows, every row-tile path), the threads and the input's strides; prepacked.matmul takes
them; clear errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import runtime.native_linear as native_linear
import runtime.native as native
from runtime import prepacked

BF16 = torch.bfloat16
SETTINGS = settings(derandomize=True, deadline=None, max_examples=25)


def _why_not(dtype: torch.dtype) -> str | None:
    if native._compiler() is None:
        return "no C compiler here: the linear kernels cannot be built (linears run on oneDNN)"
    if native_linear.linear_kernel() is None:
        return f"{native_linear.SWITCH}=0 switches the native linears off"
    if dtype == BF16 and not native_linear.amx_ready():
        return "this CPU (or OS) gives no AMX: bf16 linears run on oneDNN's kernel here"
    return None


def _skip_unless(dtype):
    return pytest.mark.skipif(_why_not(dtype) is not None, reason=str(_why_not(dtype)))


DTYPES = [pytest.param(BF16, marks=_skip_unless(BF16), id="bf16-amx"),
          pytest.param(torch.float32, marks=_skip_unless(torch.float32), id="float32")]


def _case(seed: int, n: int, k: int, m: int, bias: bool, dtype=BF16):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(dtype)
    x = (torch.randn(m, k, generator=g) * 2).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    return w, x, b


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(n=st.integers(1, 200), k=st.integers(1, 300), m=st.integers(1, 70), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_close_to_the_float64_product(dtype, n, k, m, bias, seed):
    w, x, b = _case(seed, n, k, m, bias, dtype)
    out = native_linear.linear(x, native_linear.pack(w), b)
    assert out.shape == (m, n) and out.dtype == dtype
    out = out.double()
    ref = x.double() @ w.double().T + (0 if b is None else b.double())
    # output rounding (2^-9 relative in bf16) plus float32 sums over k products
    rel = 2.0 ** -8 if dtype == BF16 else 2.0 ** -20
    bound = ref.abs() * rel + 1e-6 * k * (x.double().abs().max() * w.double().abs().max())
    assert (out - ref).abs().le(bound).all(), float((out - ref).abs().max())


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(n=st.sampled_from([16, 64, 100, 192, 960]), k=st.sampled_from([32, 70, 576]),
       m=st.integers(2, 80), seed=st.integers(0, 2**16))
def test_a_row_is_the_same_bits_at_any_row_count(dtype, n, k, m, seed):
    """bf16: rows 1..16 run one row tile, more run pairs of tiles; float32: rows go 6 at a time,
    each count its own loop. A row computed alone equals it computed beside m - 1 others,
    wherever it sits."""
    w, x, b = _case(seed, n, k, m, True, dtype)
    packed = native_linear.pack(w)
    together = native_linear.linear(x, packed, b)
    alone = torch.cat([native_linear.linear(x[i : i + 1], packed, b) for i in range(m)])
    assert torch.equal(together, alone)
    assert torch.equal(native_linear.linear(x[m // 2 :], packed, b), together[m // 2 :])


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_row_group_shape_gives_the_same_bits(dtype):
    """Rows 1..13: every remainder of the 6-row groups (on AVX2 one row, two rows and three to six
    run passes of different widths: linear_kernel.c `f32_block`) against each row alone."""
    w, x, b = _case(5, 200, 576, 13, True, dtype)
    packed = native_linear.pack(w)
    alone = torch.cat([native_linear.linear(x[i : i + 1], packed, b) for i in range(13)])
    for m in range(1, 14):
        assert torch.equal(native_linear.linear(x[:m], packed, b), alone[:m]), m


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_and_strided_rows_change_no_bit(dtype):
    w, x, b = _case(3, 300, 576, 40, True, dtype)
    packed = native_linear.pack(w)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native_linear.linear(x, packed, b)
        torch.set_num_threads(2)
        two = native_linear.linear(x, packed, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    wide = torch.zeros(40, 700, dtype=dtype)
    wide[:, 50:626] = x
    strided = wide[:, 50:626]  # rows 700 apart
    assert strided.stride() == (700, 1)
    assert torch.equal(native_linear.linear(strided, packed, b), one)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prepacked_matmul_runs_on_the_native_kernel(dtype):
    w, x, b = _case(5, 96, 64, 7, True, dtype)
    with torch.inference_mode():
        got = prepacked.matmul(x, w, b)
        assert isinstance(prepacked._packed(w, True), native_linear.AmxWeight if dtype == BF16 else native_linear.F32Weight)
        assert torch.equal(got, native_linear.linear(x, native_linear.pack(w), b))


@_skip_unless(torch.float32)
def test_clear_errors():
    w, x, _ = _case(7, 32, 64, 3, False, torch.float32)
    packed = native_linear.pack(w)
    with pytest.raises(ValueError, match=r"torch.float32 rows \[m, 64\]"):
        native_linear.linear(x.to(BF16), packed, None)
    with pytest.raises(ValueError, match=r"rows \[m, 64\]"):
        native_linear.linear(x[:, :32], packed, None)
    with pytest.raises(ValueError, match="2-d bf16 weight"):
        native_linear.AmxWeight(w)
    with pytest.raises(ValueError, match="2-d float32 weight"):
        native_linear.F32Weight(w.to(BF16))
    assert native_linear.linear(x[:0], packed, None).shape == (0, 32)


@_skip_unless(torch.float32)
def test_switched_off_means_no_kernel(monkeypatch):
    monkeypatch.setenv(native_linear.SWITCH, "0")
    for cached in (native_linear.linear_kernel, native_linear.amx_ready):
        cached.cache_clear()
    try:
        assert native_linear.linear_kernel() is None and not native_linear.native_dtype(torch.float32)
    finally:
        monkeypatch.delenv(native_linear.SWITCH)
        for cached in (native_linear.linear_kernel, native_linear.amx_ready):
            cached.cache_clear()
    assert native_linear.linear_kernel() is not None
