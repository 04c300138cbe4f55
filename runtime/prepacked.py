"""Linear layers on prepacked weights at inference on the CPU (docs/design.md "The cost of a
step").

torch's `F.linear` hands float32 matmuls with a few rows (a draft tree's nodes, a drafter's
frontier) to a GEMM that repacks the whole weight on every call: on this project's 2-core AMD
machine a 4-row float32 matmul over weights read from memory costs 1.7-2x a 1-row one, and a
bfloat16 linear reorders its weight on every call (half the speed it could have). oneDNN's
linear on a weight reordered once for it (`torch.ops.mkldnn._reorder_linear_weight`, what
torch.compile's CPU backend uses) reads the weight once per call at any row count: 4 rows cost
0.8x of F.linear's 1 row, 16 rows about half of F.linear's 16. Its output row i depends on
input row i alone (bitwise, whatever the row count), so a verify forward's row for a node is
the very number a one-token forward gives.

Where a C compiler exists the packed weight is for our own kernels instead
(runtime/native_linear.py, runtime/linear_kernel.c: float32 everywhere, bf16 on CPUs with AMX):
row-invariant at any row count and faster than oneDNN's at the row counts decoding runs. oneDNN
remains the path for bf16 without AMX and where no compiler exists.

`linear(module, x)` is what the decoder and the feature drafters call. It takes the packed
path for a plain `nn.Linear` on the CPU when gradients are off and the dtypes match, and the
module's own forward otherwise (training, CUDA, a wrapper such as an adapted head, a module
with forward hooks, a torch without the oneDNN ops). Packed weights are made on first use and shared by every caller of the
same weight tensor (the target and an early-exit drafter over its layers); they cost one more
copy of the weights in memory, and are remade when the weight is changed in place.
"""
from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import native_linear

BATCH_HINT = 8  # the row count the layout is tuned for; 1..64 rows all run well on it
# oneDNN takes a slower kernel for 1 or 2 rows than for 3-6 on this layout, so fewer rows are
# padded to this many (docs/design.md "Measurements behind the code")
MIN_ROWS = 4
# the most rows one kernel call takes: more are computed ROW_TILE at a time. On Intel AMX oneDNN
# switches to another kernel (another summation order) past 32 rows on this layout, so the rows of
# a 33-64 node tree differed in the last bit from the same rows computed alone, and greedy bf16
# speculative output left plain decoding's (measured 2026-12-05 on a Xeon with AMX; rows 1..32
# are bit-identical there and on AVX512-BF16). runtime.invariant.check_kernels verifies it.
ROW_TILE = 32
# id(weight) -> (weight, its version when packed, the packed weight or None, used with a bias)
_PACKED: dict[int, tuple[weakref.ref, int, torch.Tensor | None, bool]] = {}
# ids of a group's weights and biases -> (weak refs to them, their versions, packed weight, joint bias)
_GROUPS: dict[tuple[int, ...], tuple[tuple[weakref.ref, ...], tuple[int, ...], torch.Tensor, torch.Tensor | None]] = {}


def enabled() -> bool:
    """Packed linears are on unless $SPECMUX_PREPACK is 0 (e.g. to save the extra copy); read when
    a weight is first packed."""
    return os.environ.get("SPECMUX_PREPACK", "1") != "0" and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)`, on the packed weight where that is possible (a plain nn.Linear without
    hooks: a forward hook, e.g. one that inspects or edits the output, runs as it would)."""
    if type(module) is not nn.Linear or module._forward_hooks or module._forward_pre_hooks or _global_hooks():
        return module(x)
    return matmul(x, module.weight, module.bias)


def matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), on the packed weight where that is possible."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    packed = _packed(weight, bias is not None)
    if packed is None:
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    out = apply(pad_rows(rows), packed, bias)
    return out[:n].view(*x.shape[:-1], out.shape[-1])


def apply(rows: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The packed kernel over `rows` [m, in] (m already `padded_rows(m)`) -> [m, out]: ours in
    one call (runtime.native_linear), oneDNN's at most ROW_TILE rows per kernel call (a short last tile padded to MIN_ROWS), so that every row is
    computed by the kernel that computes it alone."""
    if isinstance(packed, native_linear.NativeWeight):  # row-invariant at any row count: one call
        return native_linear.linear(rows, packed, bias)
    m = rows.shape[0]
    if m <= ROW_TILE:
        return _kernel(rows, packed, bias)
    tiles = [_kernel(pad_rows(rows[i : i + ROW_TILE]), packed, bias) for i in range(0, m, ROW_TILE)]
    return torch.cat(tiles)[:m]


def _kernel(rows: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")


def padded_rows(rows: int, dtype: torch.dtype | None = None) -> int:
    """Rows a packed matmul over `rows` real rows of `dtype` runs: exactly `rows` where our own
    kernels run that dtype (runtime.native_linear: any row count is exact and none is slower for
    its size); on oneDNN's kernels MIN_ROWS at least, then `bucket` (also for dtype None)."""
    if dtype is not None and native_linear.native_dtype(dtype):
        return rows
    return max(MIN_ROWS, bucket(rows))


def pad_rows(rows: torch.Tensor) -> torch.Tensor:
    """rows [n, in] with zero rows appended up to `padded_rows(n)`: padding rows are computed
    and dropped, each row's result is its own."""
    n = rows.shape[0]
    padded = padded_rows(n, rows.dtype)
    if padded == n:
        return rows
    return torch.cat([rows, rows.new_zeros(padded - n, *rows.shape[1:])])


def bucket(rows: int) -> int:
    """Rows a matmul over `rows` real rows runs: exact up to 64 (one token, a draft level, any
    verified tree: tree="auto" keeps trees within 64 nodes, and padding a 25-node tree to 32 rows
    cost the merged_tree step 3-7% on 2 cores), then four sizes per doubling (80, 96, 112, 128,
    160, ...: under 1/4 padding, 1/8 on average), which only prompts and batched prefills reach.
    oneDNN keeps state for every matmul shape it meets (0.4-10 MiB per weight shape and row
    count, growing with the rows, never freed; the same for every weight of that shape): a
    long-running process that prefilled every prompt length exactly would grow with each new
    one, and with few sizes `warm_shapes` can meet them all up front. Since the linears run
    ROW_TILE-row tiles (`apply`) their kernel shapes no longer grow with the prompt; the bucket
    still bounds the row counts the forward's other ops meet, and costs a prefill up to 1/4 more
    rows: whether it still pays is not measured."""
    if rows <= 64:
        return rows
    step = 1 << ((rows - 1).bit_length() - 3)
    return -(-rows // step) * step


def row_sizes(max_rows: int) -> list[int]:
    """Every row count a packed kernel call over 1..max_rows real rows runs (at most ROW_TILE)."""
    return sorted({padded_rows(min(n, ROW_TILE)) for n in range(1, max_rows + 1)})


def warm_shapes(max_rows: int) -> int:
    """Run every oneDNN-packed weight shape met so far (one weight of each shape, dtype and bias,
    single or a group's) at every row count up to `max_rows`, so that a server meets oneDNN's
    per-shape state at startup and its memory stays flat under traffic (our own kernels,
    runtime.native_linear, keep no such state). Returns the number of matmuls run."""
    shapes: dict[tuple, torch.Tensor] = {}
    singles = [(packed, has_bias) for ref, _, packed, has_bias in list(_PACKED.values()) if ref() is not None]
    groups = [(packed, bias is not None) for _, _, packed, bias in list(_GROUPS.values())]
    for packed, has_bias in singles + groups:
        if isinstance(packed, torch.Tensor):  # oneDNN's (None: not packed; ours: no per-shape state)
            shapes.setdefault((tuple(packed.shape), packed.dtype, has_bias), packed)
    runs = 0
    with torch.inference_mode():
        for (shape, dtype, has_bias), packed in shapes.items():
            bias = torch.zeros(shape[0], dtype=dtype) if has_bias else None
            for n in row_sizes(max_rows):
                apply(torch.zeros(n, shape[1], dtype=dtype), packed, bias)
                runs += 1
    return runs


def stacked_matmul(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor | None]) -> torch.Tensor | None:
    """Member b's F.linear(x[b], weights[b], biases[b]) for every member, x [m, ..., in] -> [m, ...,
    out], on the packed weights with the checks made once for all members (a lockstep group's
    linears); None where the packed path does not apply (the caller then runs each member's own)."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or any(w.dtype != x.dtype for w in weights):
        return None
    packed = [_packed(w, b is not None) for w, b in zip(weights, biases)]
    if any(p is None for p in packed):
        return None
    rows = x.reshape(len(weights), -1, x.shape[-1])
    n = rows.shape[1]
    padded = padded_rows(n, x.dtype)
    if padded > n:  # as in matmul: padding rows are computed and dropped
        rows = torch.cat([rows, rows.new_zeros(rows.shape[0], padded - n, rows.shape[2])], dim=1)
    out = torch.stack([apply(r, p, b) for r, p, b in zip(rows, packed, biases)])
    return out[:, :n].reshape(*x.shape[:-1], out.shape[-1])


def plain_linears(modules) -> bool:
    """True when every module is a plain nn.Linear whose forward no hook watches (packed-path ready)."""
    return not _global_hooks() and all(
        type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks for m in modules)


def _global_hooks() -> bool:
    from torch.nn.modules import module as torch_module

    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


def packed_group(weights: list[torch.Tensor], biases: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """One packed weight for linears over the same input (their weights stacked along the output
    axis) and their joint bias, made on first use, shared by every caller of the same tensors
    and remade when one of them changes in place; None where packing is off or fails. A single
    weight is `_packed`'s (one packed copy per weight, whoever asks)."""
    if len(weights) == 1:
        packed = _packed(weights[0], biases[0] is not None)
        return None if packed is None else (packed, biases[0])
    if any(b is None for b in biases) and any(b is not None for b in biases):
        return None  # a bias on some of them only: no joint bias to give the kernel
    tensors = [*weights, *(b for b in biases if b is not None)]
    key, versions = tuple(id(t) for t in tensors), tuple(_version(t) for t in tensors)
    hit = _GROUPS.get(key)
    if hit is not None and all(r() is t for r, t in zip(hit[0], tensors)) and hit[1] == versions:
        return hit[2], hit[3]
    if not enabled():
        return None
    native = native_linear.native_dtype(weights[0].dtype)  # outside the try: a kernel that fails to build is an error
    try:
        with torch.inference_mode():
            packed = _reorder(torch.cat([w.detach() for w in weights]), native)
            bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    except (RuntimeError, NotImplementedError):
        return None
    # the entry goes when any of its tensors does (ids are reused after that)
    refs = tuple(weakref.ref(t, lambda _, k=key: _GROUPS.pop(k, None)) for t in tensors)
    _GROUPS[key] = (refs, versions, packed, bias)
    return packed, bias


def _packed(weight: torch.Tensor, has_bias: bool = False) -> torch.Tensor | None:
    key, version = id(weight), _version(weight)
    hit = _PACKED.get(key)
    if hit is not None and hit[0]() is weight and hit[1] == version:
        return hit[2]
    packed = None
    if enabled():
        native = native_linear.native_dtype(weight.dtype)  # outside the try: a kernel that fails to build is an error
        try:
            with torch.inference_mode():
                packed = _reorder(weight.detach(), native)
        except (RuntimeError, NotImplementedError):  # a dtype or build oneDNN cannot pack: plain F.linear
            packed = None
    _PACKED[key] = (weakref.ref(weight, lambda _, k=key: _PACKED.pop(k, None)), version, packed, has_bias)
    return packed


def _reorder(weight: torch.Tensor, native: bool):
    """The packed form of `weight`: for our kernel (runtime/native_linear.py) where it runs this
    dtype here, else oneDNN's layout for BATCH_HINT rows."""
    return native_linear.pack(weight) if native else torch.ops.mkldnn._reorder_linear_weight(weight, BATCH_HINT)


def forget(tensors) -> None:
    """Drop the packed copies made of `tensors` (and of groups holding any of them): for weights
    changed in place by an op that leaves their version counter alone, which the cache cannot see.
    torch's fused AdamW is one (measured: `_version` stays 0 across `step()`); a drafter trained
    with it and evaluated between steps was scored on the weights of its first evaluation."""
    ids = {id(t) for t in tensors}
    for key in ids:
        _PACKED.pop(key, None)
    for key in [k for k in _GROUPS if ids.intersection(k)]:
        _GROUPS.pop(key, None)


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor has no version counter (it cannot change outside inference mode)
        return -1

