"""Float32 weights stored in fewer bits, exactly (docs/design.md "Weights in fewer bits, exactly").

A float32 target or drafter on a CPU without native bf16 decodes at the speed its weights are
read. Many float32 weights carry fewer bits than 32: a model shipped in bf16 and run in float32
holds bf16 values; a model made from a GGUF file holds its quantizer's grid, q * d + m per 32
values (Q4_1: 4-bit q; Q8_0: 8-bit q, m = 0; d and m fp16). Such a weight is stored in its own
bits and rebuilt in the kernel (runtime/linear_kernel.c `f32_weight`), so the float32 weights
the multiply-adds see are the very values of the float32 tensor, bit for bit, and the linear's
output is the float32 kernel's to the bit.

`encode(weight)` finds the smallest exact form: a 4-bit grid, an 8-bit grid, bf16, else none.
A grid is only taken when rebuilding every value gives its float32 bits back: q * d is exact
(d is an fp16 value: 11 significant bits, q at most 8), so q * d + m is one rounding, the same
fused or not. The search tries d = fp16(span / levels) and its fp16 neighbours per group.
"""
from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

GROUP = 32  # values of k per (d, m): a GGUF block
SWITCH = "SPECMUX_WEIGHT_FORMATS"  # "0": every float32 weight stored as float32
FORMATS = {"float32": 0, "bf16": 1, "grid8": 2, "grid4": 3}  # linear_kernel.c's W_*
NEIGHBOURS = 2  # fp16 steps either side of the first guess of d
SAMPLE_ROWS = 4  # rows tried before a whole weight is searched for a grid


@dataclass
class Encoded:
    """A weight [n, k] in `format`: values ([n, k] uint8 q for grid4 / int8 q for grid8 / bf16)
    and, for grids, d and m [n, k / GROUP] float32."""

    format: str
    values: torch.Tensor
    d: torch.Tensor | None = None
    m: torch.Tensor | None = None


def enabled() -> bool:
    return os.environ.get(SWITCH, "1") != "0"


def encode(weight: torch.Tensor) -> Encoded:
    """The smallest exact storage of a float32 weight [n, k] (k a multiple of GROUP for grids)."""
    if weight.dtype != torch.float32 or weight.dim() != 2:
        raise ValueError(f"encode takes a 2-d float32 weight, got {weight.dtype} {tuple(weight.shape)}")
    w = weight.detach().contiguous()
    if enabled():
        if w.shape[1] % GROUP == 0 and w.numel():
            for bits in (4, 8):
                # a few rows first: a weight off the grid (most float32 and bf16 weights) is told
                # in microseconds, not in a search over all its groups
                grid = _grid(w[:SAMPLE_ROWS], bits) is not None and _grid(w, bits)
                if grid:
                    return grid
        as_bf16 = w.to(torch.bfloat16)
        if torch.equal(as_bf16.to(torch.float32).view(torch.int32), w.view(torch.int32)):
            return Encoded("bf16", as_bf16)
    return Encoded("float32", w)


def decode(enc: Encoded) -> torch.Tensor:
    """The float32 weight back (what the kernel rebuilds)."""
    if enc.format == "float32":
        return enc.values
    if enc.format == "bf16":
        return enc.values.to(torch.float32)
    n, k = enc.values.shape
    q = enc.values.to(torch.float32).view(n, k // GROUP, GROUP)
    return (q * enc.d[..., None] + enc.m[..., None]).view(n, k)


CHUNK_VALUES = 1 << 16  # values a pass of the reference search takes at a time (256 KB of float32: in L2)
SEARCH_SOURCE = Path(__file__).with_name("grid_search.c")


@functools.lru_cache(maxsize=None)
def search_library() -> ctypes.CDLL | None:
    """runtime/grid_search.c compiled for this CPU, or None where no C compiler exists (the torch
    reference then searches: the same result, ~10x slower)."""
    from .native import load_library

    lib = load_library(SEARCH_SOURCE)
    if lib is not None:
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.grid_search.argtypes = [ptr, i64, i64, ctypes.c_int, ptr, ptr, ptr, ctypes.c_int]
        lib.grid_search.restype = ctypes.c_int
    return lib


def _grid(w: torch.Tensor, bits: int) -> Encoded | None:
    """q * d + m per group of GROUP values with q in [0, 15] (bits 4, m the group's least value) or
    [-128, 127] (bits 8, m = 0), rebuilding every value's bits; None where some group has none.
    By runtime/grid_search.c where it is built (one pass: the default target's 211 weights in
    ~0.3 s against the reference's 2.9-4.1 on the AMD's two threads), else by `_grid_reference`."""
    lib = search_library()
    if lib is None:
        return _grid_reference(w, bits)
    n, k = w.shape
    w = w.contiguous()
    values = torch.empty(n, k, dtype=torch.uint8 if bits == 4 else torch.int8)
    d, m = torch.empty(n, k // GROUP), torch.empty(n, k // GROUP)
    if lib.grid_search(w.data_ptr(), n, k, bits, values.data_ptr(), d.data_ptr(), m.data_ptr(), torch.get_num_threads()):
        return None
    return Encoded(f"grid{bits}", values, d, m)


def _grid_reference(w: torch.Tensor, bits: int) -> Encoded | None:
    """`_grid` in torch, a few rows at a time (what grid_search.c must equal, bit for bit). A pass
    over the whole weight allocated a weight-sized temporary an operation (the default target's
    head: 113 MB each) and streamed it from memory."""
    n, k = w.shape
    step = max(1, CHUNK_VALUES // k)
    parts = []
    for r in range(0, n, step):
        part = _grid_rows(w[r : r + step], bits)
        if part is None:
            return None
        parts.append(part)
    q, d, m = (torch.cat([p[i] for p in parts]) for i in range(3))
    values = q.to(torch.uint8) if bits == 4 else q.to(torch.int8)
    return Encoded(f"grid{bits}", values, d, m.contiguous())


def _grid_rows(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`_grid_reference` over some rows: (q [rows, k] float32, d, m [rows, k / GROUP]), or None."""
    n, k = w.shape
    groups = w.view(n, k // GROUP, GROUP)
    if bits == 4:  # the least value has q = 0, the largest q = 15
        lo, hi = groups.aminmax(dim=-1)
        m, spans, q_lo, q_hi = lo, [(hi - lo) / 15], 0, 15
    else:  # the largest magnitude has q = +-127 (Q8_0), or q = -128
        absmax = groups.abs().amax(-1)
        m, spans, q_lo, q_hi = torch.zeros_like(groups[..., 0]), [absmax / 127, absmax / 128], -128, 127
    if not bool(torch.isfinite(spans[0]).all()) or not bool(torch.isfinite(m).all()):
        return None
    q = torch.zeros(groups.shape, dtype=torch.float32)
    d = torch.zeros_like(m)
    todo = torch.ones(m.shape, dtype=torch.bool)
    steps = [0] + [s for j in range(1, NEIGHBOURS + 1) for s in (j, -j)]
    for guess, step in ((g.to(torch.float16).view(torch.int16).to(torch.int32), s) for g in spans for s in steps):
        rows = todo.nonzero(as_tuple=True)
        if rows[0].numel() == 0:
            break
        bits16 = (guess[rows] + step).clamp(0, 0x7BFF)  # non-negative finite fp16 values
        cand = bits16.to(torch.int16).view(torch.float16).to(torch.float32)
        g, mm = groups[rows], m[rows]
        qq = torch.where(cand[:, None] > 0, torch.round((g - mm[:, None]) / cand.clamp(min=1e-30)[:, None]),
                         torch.zeros_like(g)).clamp(q_lo, q_hi)
        rebuilt = qq * cand[:, None] + mm[:, None]
        good = (rebuilt.view(torch.int32) == g.view(torch.int32)).all(-1)
        hit = tuple(r[good] for r in rows)
        q[hit], d[hit] = qq[good], cand[good]
        todo[hit] = False
    if bool(todo.any()):
        return None
    return q.view(n, k), d, m
