"""The linears of the CPU inference path on kernels of our own (runtime/linear_kernel.c;
docs/design.md "Exact bf16").

runtime.prepacked runs every linear at inference here where it can: bf16 on Intel AMX
(`AmxWeight`), float32 on vector FMAs (`F32Weight`, any CPU the C compiler targets). In both,
each output row is a function of its own input row alone at any row count (oneDNN's kernels are
too, but only up to 32 rows a call), and they read the weights faster than oneDNN's at the row
counts decoding runs (one token, trees of up to ~32 nodes): decoding is bound by reading the
weights, and the weight is packed once in the order the kernel reads it.

`linear_kernel()` is None, and oneDNN runs the linears as before, where no C compiler exists or
with SPECMUX_NATIVE_LINEAR=0; `amx_ready()` is False on a CPU without AMX (bf16 then runs on
oneDNN). Built and cached like the attention kernel (runtime/native.py).
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from .native import _cpu_flags, load_library
from . import weight_formats

SOURCE = Path(__file__).with_name("linear_kernel.c")
SWITCH = "SPECMUX_NATIVE_LINEAR"  # "0": every linear on oneDNN's kernels
BLOCK_N, CHUNK_K = 64, 32  # outputs per packed block; k values per AMX tile multiply (linear_kernel.c)


def cpu_has_amx() -> bool:
    flags = set(_cpu_flags().split())
    return {"amx_tile", "amx_bf16", "avx512_bf16"} <= flags


@functools.lru_cache(maxsize=None)
def linear_kernel() -> ctypes.CDLL | None:
    """The compiled linears (built on first use), or None where switched off or no C compiler
    exists. A compiler that fails raises runtime.native.KernelBuildError."""
    if os.environ.get(SWITCH, "1") == "0":
        return None
    lib = load_library(SOURCE)
    if lib is None:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for fn in (lib.amx_linear, lib.f32_linear):
        fn.argtypes = [ptr, i64, i64, i64, ptr, i64, ptr, ptr, ctypes.c_int]
        fn.restype = ctypes.c_int
    lib.amx_linear_ready.restype = ctypes.c_int
    return lib


@functools.lru_cache(maxsize=None)
def amx_ready() -> bool:
    """The bf16 kernel runs here: the library is built, the CPU has AMX, the OS grants the tiles."""
    lib = linear_kernel()
    return lib is not None and cpu_has_amx() and lib.amx_linear_ready() == 1


def native_dtype(dtype: torch.dtype) -> bool:
    """Linears of this dtype run on a kernel of ours here."""
    if dtype == torch.bfloat16:
        return amx_ready()
    return dtype == torch.float32 and linear_kernel() is not None


class NativeWeight:
    """A weight [out, in] of `dtype`, zero padded to [out_pad, in_pad] and laid out by `_layout`."""

    __slots__ = ("data", "shape", "dtype", "__weakref__")
    kind, dtype_needed, in_multiple = "", torch.float32, 1

    def __init__(self, weight: torch.Tensor):
        if weight.dtype != self.dtype_needed or weight.dim() != 2:
            raise ValueError(f"the {self.kind} linear packs a 2-d {str(self.dtype_needed)[6:].replace('bfloat16', 'bf16')} "
                             f"weight, got {weight.dtype} {tuple(weight.shape)}")
        n, k = weight.shape
        self.shape = torch.Size((n, k))
        self.dtype = self.dtype_needed
        self.data = self._packed(weight.detach(), -(-n // BLOCK_N) * BLOCK_N, -(-k // self.in_multiple) * self.in_multiple)

    def _packed(self, weight: torch.Tensor, n_pad: int, k_pad: int) -> torch.Tensor:
        """The weight zero padded to [n_pad, k_pad] and laid out by `_layout`."""
        padded = weight.new_zeros(n_pad, k_pad)
        padded[: weight.shape[0], : weight.shape[1]] = weight
        return self._layout(padded).contiguous()

    @property
    def pointer(self) -> int:
        """What the C calls take for this weight."""
        return self.data.data_ptr()


class AmxWeight(NativeWeight):
    """A bf16 weight packed for amx_linear: [out/64][in/32][4][16][16][2]."""

    __slots__ = ()
    kind, dtype_needed, in_multiple = "AMX", torch.bfloat16, CHUNK_K

    @staticmethod
    def _layout(w: torch.Tensor) -> torch.Tensor:  # w[64 b + 16 t + j, 32 c + 2 r + e] -> [b][c][t][r][j][e]
        return w.view(w.shape[0] // 64, 4, 16, w.shape[1] // 32, 16, 2).permute(0, 3, 1, 4, 2, 5)


class F32Weight(NativeWeight):
    """A float32 weight packed for f32_linear: [out/64][in][64] float32, or stored exactly in fewer
    bits where its values allow (runtime/weight_formats.py: `format` bf16, grid8, grid4; the
    kernel rebuilds the float32 values). `pointer`: the f32_weight descriptor the C calls take."""

    __slots__ = ("format", "scales", "descriptor")
    kind, dtype_needed = "float32", torch.float32

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight)  # checks the weight, packs it (`_packed`)
        self.descriptor = F32WeightDescriptor(weight_formats.FORMATS[self.format], self.data.data_ptr(),
                                              None if self.scales is None else self.scales.data_ptr())

    def _packed(self, weight: torch.Tensor, n_pad: int, k_pad: int) -> torch.Tensor:
        """The float32 layout, or the stored form (no float32 copy made for it)."""
        enc = weight_formats.encode(weight)
        self.format, self.scales = enc.format, None
        if enc.format == "float32":
            return super()._packed(weight, n_pad, k_pad)
        if enc.d is not None:  # [n_pad/64][k/32][2][64]: d, then m
            dm = torch.zeros(n_pad, k_pad // weight_formats.GROUP, 2)
            dm[: weight.shape[0], :, 0], dm[: weight.shape[0], :, 1] = enc.d, enc.m
            self.scales = dm.view(n_pad // BLOCK_N, BLOCK_N, -1, 2).permute(0, 2, 3, 1).contiguous()
        return _stored_layout(enc, n_pad, k_pad)

    @property
    def pointer(self) -> int:
        return ctypes.addressof(self.descriptor)

    @property
    def nbytes(self) -> int:
        """Bytes the kernel reads per call."""
        return self.data.numel() * self.data.element_size() + (0 if self.scales is None else 4 * self.scales.numel())

    @staticmethod
    def _layout(w: torch.Tensor) -> torch.Tensor:  # w[64 b + j, i] -> [b][i][j]
        return w.view(w.shape[0] // 64, 64, w.shape[1]).transpose(1, 2)


class F32WeightDescriptor(ctypes.Structure):
    """linear_kernel.c's f32_weight."""

    _fields_ = [("format", ctypes.c_int64), ("data", ctypes.c_void_p), ("scales", ctypes.c_void_p)]


def _stored_layout(enc: weight_formats.Encoded, n_pad: int, k: int) -> torch.Tensor:
    """The values of an exactly re-encoded weight in the kernel's block order (linear_kernel.c)."""
    values = enc.values.new_zeros(n_pad, k)
    values[: enc.values.shape[0]] = enc.values
    blocked = values.view(n_pad // BLOCK_N, BLOCK_N, k).transpose(1, 2)  # [b][i][j]
    if enc.format == "bf16":
        return blocked.contiguous().view(torch.int16)
    if enc.format == "grid8":
        return blocked.contiguous()
    # grid4: vector pairs of L = f32_lanes() outputs, the first's q in the low nibbles
    lanes = linear_kernel().f32_lanes()
    pairs = blocked.reshape(*blocked.shape[:2], BLOCK_N // (2 * lanes), 2, lanes)
    return (pairs[..., 0, :] | (pairs[..., 1, :] << 4)).reshape(*blocked.shape[:2], BLOCK_N // 2).contiguous()


def pack(weight: torch.Tensor) -> AmxWeight | F32Weight:
    return AmxWeight(weight) if weight.dtype == torch.bfloat16 else F32Weight(weight)


def linear(rows: torch.Tensor, packed: AmxWeight | F32Weight, bias: torch.Tensor | None) -> torch.Tensor:
    """rows [m, in] -> [m, out] = rows @ w.T + bias, by the kernel `packed` is for."""
    lib = linear_kernel()
    amx = isinstance(packed, AmxWeight)
    if lib is None or (amx and not amx_ready()):
        raise RuntimeError("the native linear kernel is not available here (runtime.native_linear)")
    n, k = packed.shape
    if rows.dim() != 2 or rows.shape[1] != k or rows.dtype != packed.dtype:
        raise ValueError(f"this linear takes {packed.dtype} rows [m, {k}], got {rows.dtype} {tuple(rows.shape)}")
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    m = rows.shape[0]
    out = torch.empty(m, n, dtype=packed.dtype)
    if m == 0:
        return out
    bias32 = None if bias is None else bias.detach().to(torch.float32).contiguous()
    fn = lib.amx_linear if amx else lib.f32_linear
    status = fn(rows.data_ptr(), m, k, rows.stride(0), packed.pointer, n,
                None if bias32 is None else bias32.data_ptr(), out.data_ptr(), torch.get_num_threads())
    if status == -1:
        raise MemoryError(f"the native linear could not allocate its buffers ({m} rows: the AMX input tiles, "
                          "or a stored weight's blocks rebuilt in float32)")
    if status == -3:
        raise RuntimeError(f"the native linear does not know weight format {packed.format!r} (a stale kernel build?)")
    if status != 0:
        raise RuntimeError(f"the native linear failed (status {status})")
    return out
