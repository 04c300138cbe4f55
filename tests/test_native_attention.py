"""The compiled exact bf16 attention (runtime/attention_kernel.c, runtime/native.py): close to
float64 attention, bit-identical rows whatever the rows, strides and masked keys beside them,
clear errors, and a build that is cached whole and refused clearly."""
from __future__ import annotations

import contextlib
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import runtime.invariant as invariant
import runtime.native as native
import runtime.target_dtype as target_dtype

pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C compiler here: the kernel cannot be built "
                                "(bf16 targets then run float32 under dtype='auto')")
BF16 = torch.bfloat16
SETTINGS = settings(derandomize=True, deadline=None, max_examples=30)
# each path of the kernel on its own: the AMX tiles where this CPU has them, and the vector path
# (what a CPU without AMX runs) everywhere
PATHS = pytest.mark.parametrize("path", ["tiles", "vectors"])


@contextlib.contextmanager
def on(path: str):
    if path == "vectors":
        with native.vector_path():
            yield
    elif not native.tile_path():
        pytest.skip("no AMX tile path on this CPU (or the OS does not allow it)")
    else:
        yield


def _case(g, heads, kv, n, s, hd, masked: float):
    q = (torch.randn(1, heads, n, hd, generator=g) * 2).to(BF16)
    keys, values = ((torch.randn(1, kv, s, hd, generator=g) * 2).to(BF16) for _ in range(2))
    allowed = torch.rand(n, s, generator=g) >= masked
    allowed[torch.arange(n), s - n + torch.arange(n)] = True  # every row sees at least its own key
    mask = torch.zeros(n, s).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return q, keys, values, mask, allowed


def _reference(q, keys, values, allowed, scale):
    """float64 softmax attention over the allowed keys: [n, H, hd]."""
    group = q.shape[1] // keys.shape[1]
    k, v = (t[0].double().repeat_interleave(group, 0) for t in (keys, values))
    scores = (q[0].double() @ k.transpose(1, 2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, -1) @ v).transpose(0, 1)


@PATHS
@SETTINGS
@given(kv=st.sampled_from([1, 2, 3]), group=st.sampled_from([1, 3, 4]), hd=st.sampled_from([8, 16, 48, 64, 80, 128, 256]),
       n=st.integers(1, 20), extra=st.integers(0, 300), masked=st.sampled_from([0.0, 0.3, 0.9]),
       seed=st.integers(0, 2**16))
def test_close_to_float64_attention(path, kv, group, hd, n, extra, masked, seed):
    g = torch.Generator().manual_seed(seed)
    q, keys, values, mask, allowed = _case(g, kv * group, kv, n, n + extra, hd, masked)
    scale = hd ** -0.5
    with on(path):
        out = native.native_attention(q, keys, values, mask, scale).double()
    ref = _reference(q, keys, values, allowed, scale)
    # bf16 output rounding (2^-9 relative) plus float32 sums over up to 320 keys
    bound = ref.abs() * 2.0 ** -8 + 1e-4 * values.double().abs().max()
    assert (out - ref).abs().le(bound).all(), float((out - ref).abs().max())


@PATHS
@SETTINGS
@given(n=st.integers(1, 33), extra=st.integers(0, 200), lead=st.sampled_from([0.0, 0.5, 1.0]), seed=st.integers(0, 2**16))
def test_rows_are_bit_identical_alone_with_strided_inputs_and_a_bf16_mask(path, n, extra, lead, seed):
    """As the decoder calls it: q a transposed view, keys and values views of a longer cache,
    the mask in bf16. Each row equals the same query alone over its visible keys packed. `lead`:
    the share of the first `extra` slots every row sees (a tree's prefix: the tile path reads a
    row's visible run from slot 0 in place and gathers the rest)."""
    g = torch.Generator().manual_seed(seed)
    s = n + extra
    q, keys, values, mask, allowed = _case(g, 9, 3, n, s, 64, 0.4)
    allowed[:, : int(lead * extra)] = True
    mask[:, : int(lead * extra)] = 0.0
    cache = torch.zeros(2, 1, 3, s + 17, 64, dtype=BF16)
    cache[0, :, :, :s], cache[1, :, :, :s] = keys, values
    q_view = q[0].transpose(0, 1).contiguous().transpose(0, 1)[None]  # [1, H, n, hd] with the rows outer
    with on(path):
        out = native.native_attention(q_view, cache[0, :, :, :s], cache[1, :, :, :s], mask.to(BF16), 0.125)
        assert torch.equal(out, native.native_attention(q, keys, values, mask, 0.125))
        for i in sorted({0, n // 2, n - 1}):
            cols = allowed[i].nonzero().flatten()
            alone = native.native_attention(q[:, :, i : i + 1], keys[:, :, cols], values[:, :, cols], None, 0.125)
            assert torch.equal(out[i], alone[0]), i


def test_clear_errors():
    q, keys, values, mask, _ = _case(torch.Generator().manual_seed(0), 4, 2, 3, 10, 64, 0.0)
    mask[1] = torch.finfo(torch.float32).min
    with pytest.raises(ValueError, match="sees no key"):
        native.native_attention(q, keys, values, mask, 0.125)
    big = torch.zeros(1, 2, 1, 320, dtype=BF16)
    with pytest.raises(ValueError, match="head dim 320"):
        native.native_attention(big, big[:, :1], big[:, :1], None, 0.125)
    with pytest.raises(ValueError, match="bf16 or float32 on the CPU, q, keys and values of one dtype"):
        invariant.invariant_attention(q.float(), keys, values, None, 0.125)


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """A kernel built from scratch under a temporary SPECMUX_HOME; the caches restored after."""
    monkeypatch.setenv("SPECMUX_HOME", str(tmp_path))
    for cached in (native.attention_kernel, invariant.check_kernels):
        cached.cache_clear()
    yield tmp_path
    for cached in (native.attention_kernel, invariant.check_kernels):
        cached.cache_clear()


def test_the_kernel_is_built_once_into_the_home_whole(fresh_kernel):
    lib = native.attention_kernel()
    built = list((fresh_kernel / "kernels").rglob("*"))
    files = [p for p in built if p.is_file()]
    assert [p.name for p in files] == ["attention_kernel.so"], built  # no temporary left beside it
    stamp = files[0].stat().st_mtime_ns
    native.attention_kernel.cache_clear()
    assert native.attention_kernel() is not None and files[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert lib is not None


def test_a_failing_compiler_is_an_error_naming_it(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", shutil.which("false") or "/bin/false")
    with pytest.raises(native.KernelBuildError, match="compiling attention_kernel.c"):
        native.attention_kernel()
    assert "compiling attention_kernel.c" in invariant.unavailable()
    assert not list((fresh_kernel / "kernels").rglob("*.so"))


def test_switched_off_bf16_is_refused_with_the_reason(fresh_kernel, monkeypatch):
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert native.attention_kernel() is None
    assert "SPECMUX_NATIVE_ATTENTION=0" in invariant.check_kernels("cpu")
    if target_dtype.native_bf16():
        assert target_dtype.resolve_dtype("auto") == torch.float32
        with pytest.raises(ValueError, match="SPECMUX_NATIVE_ATTENTION=0"):
            target_dtype.resolve_dtype("bfloat16")


@PATHS
def test_threads_change_nothing_and_share_torchs_openmp_runtime(path):
    """A tree-sized call runs on torch's threads (one OpenMP runtime in the process) with the
    same bits as on one thread."""
    g = torch.Generator().manual_seed(3)
    q, keys, values, mask, _ = _case(g, 9, 3, 48, 700, 64, 0.3)
    assert 48 * 9 * 700 >= native.PARALLEL_WORK
    before = torch.get_num_threads()
    try:
        with on(path):
            torch.set_num_threads(1)
            one = native.native_attention(q, keys, values, mask, 0.125)
            torch.set_num_threads(2)
            two = native.native_attention(q, keys, values, mask, 0.125)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    runtimes = native.openmp_runtimes()
    assert len(runtimes) <= 1, runtimes


def test_the_tile_path_runs_wherever_the_amx_linears_do():
    """The [tiles] cases above skip only where AMX is missing, never on a CPU that has it."""
    from runtime.native_linear import amx_ready

    assert native.tile_path() == amx_ready()
    with native.vector_path():
        assert not native.tile_path()
    assert native.tile_path() == amx_ready()
