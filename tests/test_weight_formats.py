"""Float32 weights stored in fewer bits, exactly (runtime/weight_formats.py; linear_kernel.c's
f32_weight): a weight made by a GGUF quantizer (Q4_1, Q8_0) or held in bf16 is found in that form,
rebuilt to every bit, and a value off the grid keeps the weight float32; the kernel on the stored
form gives the float32 kernel's bits at every row count; the compiled float32 layer on a model
of such weights computes the same logits as on its float32 copy; the switch turns it off."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from runtime import native_layer, native_linear, weight_formats
from runtime.decoder import Decoder
from test_native_layer import _decoder
from trees import attention_mask

pytestmark = pytest.mark.skipif(native_linear.linear_kernel() is None, reason=(
    "the float32 linear kernel is not built here (no C compiler: runtime/native.py; or SPECMUX_NATIVE_LINEAR=0)"))
SETTINGS = settings(derandomize=True, deadline=None, max_examples=20)


def q4_1(w: torch.Tensor) -> torch.Tensor:
    """w's values after GGUF's Q4_1 (ggml quantize_row_q4_1, then gguf-py's dequantization)."""
    n, k = w.shape
    blocks = w.view(n, k // 32, 32)
    lo, hi = blocks.aminmax(dim=-1)
    d, m = ((hi - lo) / 15).half().float(), lo.half().float()
    q = ((blocks - lo[..., None]) / ((hi - lo) / 15)[..., None] + 0.5).floor().clamp(0, 15)
    return (q * d[..., None] + m[..., None]).view(n, k)


def q8_0(w: torch.Tensor) -> torch.Tensor:
    """w's values after GGUF's Q8_0: d = max |x| / 127 (fp16), q = round(x / d)."""
    n, k = w.shape
    blocks = w.view(n, k // 32, 32)
    d = blocks.abs().amax(-1) / 127
    q = torch.round(blocks / d[..., None]).clamp(-127, 127) + 0.0  # an integer: no -0
    return (q * d.half().float()[..., None]).view(n, k)


MAKERS = {"grid4": q4_1, "grid8": q8_0, "bf16": lambda w: w.bfloat16().float(), "float32": lambda w: w}


def _weight(kind: str, n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MAKERS[kind](torch.randn(n, k, generator=g) / k ** 0.5)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.fixture
def formats_off(monkeypatch):
    monkeypatch.setenv(weight_formats.SWITCH, "0")


def _same_grid(a: weight_formats.Encoded | None, b: weight_formats.Encoded | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (a.format == b.format and a.values.dtype == b.values.dtype and torch.equal(a.values, b.values)
            and torch.equal(_bits(a.d), _bits(b.d)) and torch.equal(_bits(a.m), _bits(b.m)))


@SETTINGS
@given(kind=st.sampled_from(list(MAKERS)), n=st.integers(1, 40), groups=st.integers(1, 6), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1.0, 1e-6, 1e-30, 3e4, 1e7]), edits=st.lists(st.tuples(
           st.integers(0, 10**6), st.sampled_from(["zero", "negative zero", "constant", "ulp", "nan", "inf", "huge"])),
           max_size=3))
# always run, whatever Hypothesis draws: one value an ulp off a 4-bit and an 8-bit grid
@example(kind="grid4", n=8, groups=2, seed=3, scale=1.0, edits=[(37, "ulp")])
@example(kind="grid8", n=8, groups=2, seed=3, scale=1.0, edits=[(37, "ulp")])
def test_the_compiled_search_finds_the_references_grid_to_the_bit(kind, n, groups, seed, scale, edits):
    """runtime/grid_search.c against the torch reference: the same verdict and the same q, d, m,
    on grid weights (fp16 d subnormal at small scales, past fp16's largest value at large ones), weights off
    every grid, and groups edited to zeros, -0.0, one value, one ulp off, NaN, inf or a span over
    float32's range."""
    # built wherever the linear kernel is (the module's skip): without it `_grid` would be the
    # reference, compared with itself
    assert weight_formats.search_library() is not None
    w = _weight(kind, n, 32 * groups, seed) * scale
    w = MAKERS[kind](w) if kind != "float32" else w  # scaled back onto a grid
    for at, edit in edits:
        r, c = divmod(at % w.numel(), w.shape[1])
        group = w[r, c - c % 32 : c - c % 32 + 32]
        if edit == "zero":
            group.zero_()
        elif edit == "negative zero":
            group.fill_(-0.0)
        elif edit == "constant":
            group.fill_(float(group[0]))
        elif edit == "ulp":
            w[r, c] = torch.nextafter(w[r, c], torch.tensor(float("inf")))
        elif edit == "huge":
            group[0], group[1] = -3e38, 3e38
        else:
            w[r, c] = float(edit)
    for bits in (4, 8):
        assert _same_grid(weight_formats._grid(w, bits), weight_formats._grid_reference(w, bits)), (kind, bits)


@pytest.mark.parametrize("kind", list(MAKERS))
@SETTINGS
@given(n=st.integers(1, 150), groups=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_each_kind_is_found_and_rebuilt_to_the_bit(kind, n, groups, seed):
    w = _weight(kind, n, 32 * groups, seed)
    enc = weight_formats.encode(w)
    assert enc.format == kind
    assert torch.equal(_bits(weight_formats.decode(enc)), _bits(w))


@pytest.mark.parametrize("kind", ["grid4", "grid8"])
def test_one_value_off_the_grid_keeps_the_weight_float32(kind):
    w = _weight(kind, 40, 96, 1)
    w[17, 50] = torch.nextafter(w[17, 50], torch.tensor(1.0))  # one ulp: no grid and no bf16 holds it
    enc = weight_formats.encode(w)
    assert enc.format == "float32" and torch.equal(_bits(weight_formats.decode(enc)), _bits(w))


def test_grids_need_whole_groups_and_finite_values():
    cut = _weight("grid4", 8, 64, 0)[:, :48].contiguous()  # grid values, but 48 is no whole number of groups
    assert weight_formats.encode(cut).format == "float32"
    w = _weight("grid4", 8, 64, 0)
    w[3, 5] = float("inf")
    assert weight_formats.encode(w).format == "float32"
    with pytest.raises(ValueError, match="float32 weight"):
        weight_formats.encode(w.double())


@pytest.mark.parametrize("kind", list(MAKERS))
@SETTINGS
@given(n=st.one_of(st.integers(1, 140), st.integers(520, 600)), groups=st.integers(1, 10), short=st.integers(0, 31),
       m=st.one_of(st.integers(1, 8), st.integers(9, 40)), bias=st.booleans(), seed=st.integers(0, 2**16),
       threads=st.sampled_from([1, 2, 3]))
def test_the_kernel_on_the_stored_form_gives_the_float32_kernels_bits(kind, n, groups, short, m, bias, seed, threads):
    """Every row count (up to 24 rows rebuild the weights in the multiply loop, 4-6 rows a group
    in chunks of 32 k; more rebuild each block once), each row alone, and 1-3 threads (blocks that
    do not divide among them are split in halves): the float32 kernel's bits on the float32 copy
    on one thread. bf16 weights need no groups: their k need not be a multiple of 32."""
    k = 32 * groups - (short if kind in ("bf16", "float32") and 32 * groups > short else 0)
    w = _weight(kind, n, k, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(m, w.shape[1], generator=g)
    b = torch.randn(n, generator=g) if bias else None
    stored = native_linear.pack(w)
    assert stored.format == kind
    with pytest.MonkeyPatch.context() as off:
        off.setenv(weight_formats.SWITCH, "0")
        plain = native_linear.pack(w)
    assert plain.format == "float32"
    expected = native_linear.linear(x, plain, b)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = native_linear.linear(x, stored, b)
        rows = [native_linear.linear(x[r : r + 1], stored, b) for r in (0, m - 1)]
    finally:
        torch.set_num_threads(before)
    assert torch.equal(_bits(out), _bits(expected))
    for r, row in zip((0, m - 1), rows):
        assert torch.equal(_bits(row), _bits(out[r : r + 1]))


def test_stored_forms_are_smaller():
    sizes = {kind: native_linear.pack(_weight(kind, 256, 512, 0)).nbytes for kind in MAKERS}
    assert sizes["float32"] == 256 * 512 * 4 and sizes["bf16"] == sizes["float32"] // 2
    assert sizes["grid8"] < sizes["float32"] // 3 and sizes["grid4"] < sizes["float32"] // 5


def test_the_switch_keeps_float32(formats_off):
    assert native_linear.pack(_weight("grid4", 64, 64, 0)).format == "float32"


def _gguf_like(decoder: Decoder) -> Decoder:
    """The decoder with every linear's weight on a Q4_1 grid and the embedding and head on Q8_0's
    (as SmolLM2's GGUF)."""
    with torch.no_grad():
        for name, p in decoder.model.named_parameters():
            if p.dim() == 2:
                p.copy_(q8_0(p) if "embed" in name or "lm_head" in name else q4_1(p))
    return decoder


def _prompt_then_tree(decoder: Decoder) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    prompt, tree = torch.randint(0, 96, (40,), generator=g), torch.randint(0, 96, (7,), generator=g)
    allowed = (torch.rand(7, 7, generator=g) < 0.5).tril(-1) | torch.eye(7, dtype=torch.bool)
    with torch.inference_mode():
        cache = decoder.new_cache(64)
        first = decoder.forward(prompt, torch.arange(40), cache, None)
        second = decoder.forward(tree, torch.arange(40, 47), cache, attention_mask(allowed, 40, decoder.dtype))
    return [first.logits, second.logits]


def _formats(decoder: Decoder) -> set[str]:
    """The stored forms of the plan's packed weights (q|k|v, o, gate|up, down, the head)."""
    with torch.inference_mode():
        plan = decoder.plan()
    assert plan.fused
    packed = [part.weight for layer in plan.layers for part in (layer.qkv, layer.o, layer.mlp.gate_up)] + [
        plan.head.weight]
    return {p.format for p in packed}


@pytest.mark.skipif(native_layer.f32_layer_kernel() is None, reason=(
    "the compiled float32 layer is not built here (no C compiler: runtime/native.py; or SPECMUX_NATIVE_LAYER=0)"))
def test_a_gguf_like_model_computes_the_same_logits_from_its_stored_weights(monkeypatch):
    """The compiled float32 layer and the head on grid4 / grid8 weights: a prompt, a tree after it,
    the same logits to the bit as the same model on float32 weights."""
    stored = _gguf_like(_decoder("llama", 128, torch.float32))
    plain = Decoder(copy.deepcopy(stored.model))
    assert _formats(stored) == {"grid4", "grid8"}
    runs = [_prompt_then_tree(stored)]
    monkeypatch.setenv(weight_formats.SWITCH, "0")
    assert _formats(plain) == {"float32"}
    runs.append(_prompt_then_tree(plain))
    for a, b in zip(*runs):
        assert torch.equal(_bits(a), _bits(b))
