"""A decoder layer around its attention in two compiled calls: bf16 on AMX (runtime/layer_kernel.c;
docs/design.md "Exact bf16") and float32 on our float32 linears (runtime/layer_f32.c, the CPUs
without native bf16).

runtime/plan.py runs a layer this way where every piece around the attention is a plain one
(RMSNorm, packed q|k|v, o and gate|up / down on AMX weights, SiLU, no per-head q/k norm) and the
model runs bf16 on AMX: `pre` (input norm, q|k|v, rotation) and `post` (o and the residual,
post norm, gated MLP and the residual), with the decoder's attention between them; or, where the
rows attend one cache with the exact kernel (every forward of runtime/decoder.py on a bf16
target), `forward`: the whole layer, cache write and attention included, in one call. Each row
is computed from its own row alone by one code path at any row count, so the forward stays
row-invariant (greedy speculative output equals plain decoding). A float32 target takes the
same calls (runtime/layer_f32.c, whose attention is batch-invariant too: docs/design.md "Exact
float32"; prompt feeds attend with SDPA between `pre` and `post`); the drafters
(drafters/compiled.py) run either dtype's whole-layer call.

SPECMUX_NATIVE_LAYER=0 runs these layers op by op again (transformers' ops on the same kernels),
and a float32 target's attention on SDPA.
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from . import native_linear
from .native import PARALLEL_WORK, kernel_inputs, load_library

SOURCE = Path(__file__).with_name("layer_kernel.c")
SWITCH = "SPECMUX_NATIVE_LAYER"  # "0": layers op by op (runtime/plan.py)


@functools.lru_cache(maxsize=None)
def layer_kernel() -> ctypes.CDLL | None:
    """The compiled layer (built on first use), or None where switched off, no C compiler exists
    or the bf16 linears do not run on AMX here. A compiler that fails raises KernelBuildError."""
    if os.environ.get(SWITCH, "1") == "0" or not native_linear.amx_ready():
        return None
    lib = load_library(SOURCE)
    if lib is None:
        return None
    i64, i32, ptr, f32 = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_float
    lib.layer_pre.argtypes = [ptr, i64, i64, ptr, f32, ptr, ptr, i32, i32, i32, ptr, ptr, ptr, i32]
    lib.layer_post.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr, f32, ptr, i64, ptr, ptr, i32]
    lib.layer_forward.argtypes = [ptr, ptr, i64, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, ptr, i64, i32, i32]
    lib.norm_linear.argtypes = [ptr, i64, i64, ptr, f32, ptr, i64, ptr, i32]
    lib.layer_pre.restype = lib.layer_post.restype = lib.layer_forward.restype = lib.norm_linear.restype = ctypes.c_int
    return lib


SOURCE_F32 = Path(__file__).with_name("layer_f32.c")


@functools.lru_cache(maxsize=None)
def f32_layer_kernel() -> ctypes.CDLL | None:
    """The compiled float32 layer (runtime/layer_f32.c, built on first use), or None where
    switched off, no C compiler exists or the float32 linears do not run on our kernel."""
    if os.environ.get(SWITCH, "1") == "0" or not native_linear.native_dtype(torch.float32):
        return None
    lib = load_library(SOURCE_F32)
    if lib is None:
        return None
    i64, i32, ptr, f32 = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_float
    lib.f32_layer_pre.argtypes = [ptr, i64, i64, ptr, f32, ptr, ptr, i32, i32, i32, ptr, ptr, ptr, i32]
    lib.f32_layer_post.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr, f32, ptr, i64, ptr, ptr, i32]
    lib.f32_layer_forward.argtypes = [ptr, ptr, i64, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, ptr, i64, i32, i32]
    lib.f32_norm_linear.argtypes = [ptr, i64, i64, ptr, f32, ptr, i64, ptr, i32]
    lib.f32_attention.argtypes = [ptr, i64, i64, ptr, ptr, i64, i64, ptr, i64, ptr, i32, i32, i32, i32, i32, f32, i32]
    for fn in (lib.f32_layer_pre, lib.f32_layer_post, lib.f32_layer_forward, lib.f32_norm_linear, lib.f32_attention):
        fn.restype = ctypes.c_int
    return lib


def f32_attention_fits(head_dim: int) -> bool:
    """Whether the compiled float32 attention runs here for this head dim (a multiple of 8, at
    most 256)."""
    return f32_layer_kernel() is not None and head_dim % 8 == 0 and 8 <= head_dim <= 256


def f32_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                  scale: float) -> torch.Tensor:
    """q [1, H, n, hd], keys / values [1, KV, S, hd] (float32 on the CPU), mask additive [n, S] or
    None -> [n, H, hd] float32 (contiguous): runtime/layer_f32.c's attention, each row a function of
    its own q and visible keys in slot order alone (runtime/invariant.py)."""
    lib = f32_layer_kernel()
    _, heads, n, hd = q.shape
    kv, s = keys.shape[1], keys.shape[2]
    q, keys, values, mask = kernel_inputs(q, keys, values, mask, torch.float32)
    out = torch.empty(n, heads, hd, dtype=torch.float32)
    status = lib.f32_attention(
        q.data_ptr(), q.stride(1), q.stride(2), keys.data_ptr(), values.data_ptr(), keys.stride(1), keys.stride(2),
        None if mask is None else mask.data_ptr(), 0 if mask is None else mask.stride(0), out.data_ptr(),
        heads, kv, n, s, hd, scale, torch.get_num_threads() if n * heads * s >= PARALLEL_WORK else 1)
    if status == -1:
        raise ValueError("a query row of the float32 attention sees no key (its mask hides every key)")
    if status == -2:
        raise ValueError(f"head dim {hd} is not one the compiled float32 attention takes (a multiple of 8, at most 256)")
    if status == -4:
        raise MemoryError("the compiled float32 attention could not allocate its buffers")
    return out


def kernel_for(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The compiled layer for a model of this dtype here (bf16 on AMX, float32 on our float32
    linears), or None."""
    if dtype == torch.bfloat16:
        return layer_kernel()
    return f32_layer_kernel() if dtype == torch.float32 else None


class LayerWeights(ctypes.Structure):
    """layer_kernel.c's layer_weights."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("norm1", "qkv_w", "o_w", "norm2", "gu_w", "down_w",
                                                      "qkv_b", "o_b", "down_b")] + [
        ("eps1", ctypes.c_float), ("eps2", ctypes.c_float), ("scale", ctypes.c_float),
        ("d", ctypes.c_int64), ("inter", ctypes.c_int64),
        ("heads", ctypes.c_int), ("kv_heads", ctypes.c_int), ("hd", ctypes.c_int), ("norm_emb", ctypes.c_void_p)]


def _bias32(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().to(torch.float32).contiguous()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class FusedLayer:
    """One layer's weights as the compiled calls take them (the packed weights, the norms'
    weights in the model's dtype, float32 biases), resolved once per plan."""

    __slots__ = ("lib", "dtype", "d", "heads", "kv_heads", "hd", "inter", "keep", "args_pre", "args_post", "width",
                 "weights", "_pre", "_post", "_forward")

    def __init__(self, input_norm, qkv, o, post_norm, gate_up, down, heads: int, kv_heads: int, head_dim: int,
                 scale: float):
        self.dtype = input_norm.weight.dtype
        self.lib = kernel_for(self.dtype)
        f32 = self.dtype == torch.float32
        self._pre, self._post, self._forward = (
            (self.lib.f32_layer_pre, self.lib.f32_layer_post, self.lib.f32_layer_forward) if f32
            else (self.lib.layer_pre, self.lib.layer_post, self.lib.layer_forward))
        self.heads, self.kv_heads, self.hd = heads, kv_heads, head_dim
        self.d = int(input_norm.weight.shape[0])
        self.inter = int(down.weight.shape[1])
        self.width = int(o.weight.shape[1])
        norms = [n.weight.detach().contiguous() for n in (input_norm, post_norm)]
        biases = [_bias32(p.bias) for p in (qkv, o, down)]
        self.keep = (norms, biases, qkv.weight, o.weight, gate_up.weight, down.weight)  # alive while pointed to
        self.args_pre = (_ptr(norms[0]), float(input_norm.eps), qkv.weight.pointer, _ptr(biases[0]),
                         heads, kv_heads, head_dim)
        self.args_post = (o.weight.pointer, _ptr(biases[1]), _ptr(norms[1]), float(post_norm.eps),
                          gate_up.weight.pointer, self.inter, down.weight.pointer, _ptr(biases[2]))
        self.weights = ctypes.byref(LayerWeights(
            _ptr(norms[0]), qkv.weight.pointer, o.weight.pointer, _ptr(norms[1]),
            gate_up.weight.pointer, down.weight.pointer, *(_ptr(b) for b in biases),
            float(input_norm.eps), float(post_norm.eps), float(scale), self.d, self.inter, heads, kv_heads, head_dim))

    @staticmethod
    def fits(input_norm, qkv, o, post_norm, gate_up, down, heads: int, kv_heads: int, head_dim: int) -> bool:
        """Whether these parts are what the compiled layer computes (the caller checked their kinds)."""
        dtype = input_norm.weight.dtype
        if kernel_for(dtype) is None:
            return False
        packed = [p.weight for p in (qkv, o, gate_up, down)]
        kind = native_linear.AmxWeight if dtype == torch.bfloat16 else native_linear.F32Weight
        if not all(isinstance(w, kind) for w in packed):
            return False
        d, inter = int(input_norm.weight.shape[0]), int(down.weight.shape[1])
        return (head_dim % 32 == 0 and head_dim <= 256 and d % 32 == 0 and inter % 16 == 0
                and all(n.weight.dtype == dtype and tuple(n.weight.shape) == (d,) for n in (input_norm, post_norm))
                and tuple(qkv.weight.shape) == ((heads + 2 * kv_heads) * head_dim, d)
                and tuple(o.weight.shape) == (d, heads * head_dim)
                and tuple(gate_up.weight.shape) == (2 * inter, d) and tuple(down.weight.shape) == (d, inter))

    def pre(self, h: torch.Tensor, cos: torch.Tensor, ssin: torch.Tensor) -> torch.Tensor:
        """h [P, d] (contiguous), cos / ssin [P, hd] (contiguous) -> qkv [P, heads + 2 kv, hd],
        q and k rotated."""
        rows = h.shape[0]
        qkv = torch.empty(rows, self.heads + 2 * self.kv_heads, self.hd, dtype=self.dtype)
        status = self._pre(h.data_ptr(), rows, self.d, *self.args_pre, cos.data_ptr(), ssin.data_ptr(),
                                    qkv.data_ptr(), torch.get_num_threads())
        _check(status)
        return qkv

    def post(self, h: torch.Tensor, attn: torch.Tensor) -> None:
        """h [P, d] += o(attn) then += mlp(norm(h)), in place; attn [P, heads * hd] (unit column stride)."""
        if attn.stride(1) != 1:
            attn = attn.contiguous()
        status = self._post(h.data_ptr(), h.shape[0], self.d, attn.data_ptr(), self.width, attn.stride(0),
                                     *self.args_post, torch.get_num_threads())
        _check(status)


    def forward(self, h: torch.Tensor, cos: torch.Tensor, ssin: torch.Tensor, cache: "DirectCache", layer: int) -> None:
        """The whole layer over h [P, d] (in place; contiguous, as cos / ssin [P, hd]) after
        `cache.length` entries of layer `layer`'s keys / values in `cache` (the rows' entries
        written after them), under its mask."""
        status = self._forward(h.data_ptr(), None, h.shape[0], self.weights, cos.data_ptr(), ssin.data_ptr(),
                               cache.keys + layer * cache.layer_bytes, cache.values + layer * cache.layer_bytes,
                               *cache.shared)
        if status == -2:
            raise ValueError("a row of the attention sees no key (its mask hides every key)")
        _check(status)


class DirectCache:
    """What every compiled whole-layer call of one forward shares, read once per forward (30
    calls a token: reading tensor views, strides and the thread count per call cost ~3% of a
    one-token forward on 4-bit weights): a cache [layers, 1, kv, capacity, hd] (one sequence),
    its length, the additive mask [P, length + P] (unit column stride) or None, the rows P.
    `skip`: the layers that attend otherwise (a sliding window of their own)."""

    __slots__ = ("keys", "values", "layer_bytes", "shared", "skip", "_tensors")

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int, mask: torch.Tensor | None, rows: int,
                 heads: int, skip: frozenset = frozenset()):
        if keys.shape[1] != 1 or keys.stride() != values.stride() or keys.stride(-1) != 1:
            raise ValueError("DirectCache takes one sequence's keys and values laid out alike")
        if mask is not None and (mask.stride(1) != 1 or tuple(mask.shape) != (rows, length + rows)):
            raise ValueError(f"the mask must be [{rows}, {length + rows}] with unit column stride")
        self._tensors = (keys, values, mask)  # alive while pointed to
        self.keys, self.values = keys.data_ptr(), values.data_ptr()
        self.layer_bytes = keys.stride(0) * keys.element_size()
        threads = torch.get_num_threads()
        self.shared = (keys.stride(2), keys.stride(3), length, None if mask is None else mask.data_ptr(),
                       0 if mask is None else mask.stride(0), threads,
                       threads if rows * heads * (length + rows) >= PARALLEL_WORK else 1)
        self.skip = skip


def _check(status: int) -> None:
    if status == -1:
        raise MemoryError("the compiled layer could not allocate its buffers")
    if status != 0:
        raise RuntimeError(f"the compiled layer failed (status {status})")
