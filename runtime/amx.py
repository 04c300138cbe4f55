"""bf16 linears on Intel AMX (runtime/linear_kernel.c; docs/design.md "Exact bf16").

Where the CPU has AMX, runtime.prepacked runs every bf16 linear at inference on this kernel
instead of oneDNN's: each output row is a function of its own input row alone at any row count
(oneDNN's is too, but only up to 32 rows a call), and it reads the weights near the memory's
rate at the row counts decoding runs (1 token, trees of up to ~32 nodes), where oneDNN's kernel
ran at 0.6-0.9 of it. The weight is packed once, in the order the kernel reads it.

`linear_kernel()` is None (and oneDNN runs the bf16 linears, as before) on a CPU without AMX,
where no C compiler exists, or with SPECMUX_AMX_LINEAR=0. Built and cached like the attention
kernel (runtime/native.py).
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from .native import _cpu_flags, load_library

SOURCE = Path(__file__).with_name("linear_kernel.c")
SWITCH = "SPECMUX_AMX_LINEAR"  # "0": bf16 linears on oneDNN's kernel
BLOCK_N, CHUNK_K = 64, 32  # outputs per packed block, k values per tile multiply (linear_kernel.c)


def cpu_has_amx() -> bool:
    flags = set(_cpu_flags().split())
    return {"amx_tile", "amx_bf16", "avx512_bf16"} <= flags


@functools.lru_cache(maxsize=None)
def linear_kernel() -> ctypes.CDLL | None:
    """The compiled AMX linear (built on first use), or None where it does not apply here (no
    AMX, no C compiler, switched off, the OS refuses the tile registers). A compiler that fails
    raises runtime.native.KernelBuildError."""
    if os.environ.get(SWITCH, "1") == "0" or not cpu_has_amx():
        return None
    lib = load_library(SOURCE)
    if lib is None:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.amx_linear.argtypes = [ptr, i64, i64, i64, ptr, i64, ptr, ptr, ctypes.c_int]
    lib.amx_linear.restype = ctypes.c_int
    lib.amx_linear_ready.restype = ctypes.c_int
    return lib if lib.amx_linear_ready() == 1 else None


class AmxWeight:
    """A bf16 weight [out, in] packed for linear_kernel.c: [out/64][in/32][4][16][16][2], zero padded."""

    __slots__ = ("data", "shape", "dtype", "__weakref__")

    def __init__(self, weight: torch.Tensor):
        if weight.dtype != torch.bfloat16 or weight.dim() != 2:
            raise ValueError(f"the AMX linear packs a 2-d bf16 weight, got {weight.dtype} {tuple(weight.shape)}")
        n, k = weight.shape
        n_pad, k_pad = -(-n // BLOCK_N) * BLOCK_N, -(-k // CHUNK_K) * CHUNK_K
        padded = weight.detach().new_zeros(n_pad, k_pad)
        padded[:n, :k] = weight.detach()
        # w[64 b + 16 t + j, 32 c + 2 r + e] -> [b][c][t][r][j][e]
        self.data = padded.view(n_pad // 64, 4, 16, k_pad // 32, 16, 2).permute(0, 3, 1, 4, 2, 5).contiguous()
        self.shape = torch.Size((n, k))
        self.dtype = torch.bfloat16


def linear(rows: torch.Tensor, packed: AmxWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """rows [m, in] bf16 -> [m, out] bf16 = rows @ w.T + bias, by the AMX kernel."""
    lib = linear_kernel()
    if lib is None:
        raise RuntimeError("the AMX linear kernel is not available here (runtime.amx.linear_kernel)")
    n, k = packed.shape
    if rows.dim() != 2 or rows.shape[1] != k or rows.dtype != torch.bfloat16:
        raise ValueError(f"the AMX linear takes bf16 rows [m, {k}], got {rows.dtype} {tuple(rows.shape)}")
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    m = rows.shape[0]
    out = torch.empty(m, n, dtype=torch.bfloat16)
    if m == 0:
        return out
    bias32 = None if bias is None else bias.detach().to(torch.float32).contiguous()
    status = lib.amx_linear(rows.data_ptr(), m, k, rows.stride(0), packed.data.data_ptr(), n,
                            None if bias32 is None else bias32.data_ptr(), out.data_ptr(), torch.get_num_threads())
    if status != 0:
        raise MemoryError(f"the AMX linear could not allocate its {m}-row input buffer") if status == -1 else \
            RuntimeError(f"the AMX linear failed (status {status})")
    return out
