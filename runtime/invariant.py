"""Batch-invariant attention for a bfloat16 target on the CPU (docs/design.md "Exact bf16").

Speculative greedy output equals plain decoding only if a node's logits in a tree forward are
bit-identical to the logits plain decoding computes for the same token at the same position.
Two things differ between those forwards: the number of rows (a tree's N nodes against one
token) and the layout of the keys (a node's ancestors sit between masked siblings in the tree,
contiguous in the compacted cache of plain decoding). The bf16 linears (oneDNN, at most 32 rows
a call: runtime/prepacked.py) are row-invariant; SDPA is neither row- nor layout-invariant (its
kernel splits keys into blocks sized by the number of queries).

This attention is the compiled kernel runtime/attention_kernel.c (built and loaded by
runtime/native.py): each (row, head) is one loop over its visible keys in slot order, masked
keys skipped (on AMX: tile multiplies over its visible keys compacted 32 a chunk,
runtime/attention_amx.c), so a row's result is a function of its own q and visible keys alone,
whatever the rows beside it, the key axis' length or where masked keys sit. A tree's slots hold a node's
ancestors in depth order, as plain decoding's cache holds them. Invariant by construction; the
self-check below probes it (and the linears) on the running machine anyway.

(Until 2026-12-05 this was a torch formulation: float32 scores, the weights rounded to bf16 and
one bf16 matmul against [V | 1] with every key given a zero partner and the key axis cut into
blocks of 256 positions, because the AVX512-BF16 dot product adds a pair of keys in one
instruction. It cost ~250 us a layer for one row over 300 keys against SDPA's 26, from per-call
overhead of small matmuls; the kernel replaced it. docs/results/amx-2026-12-05c has the A/B.)
"""
from __future__ import annotations

import functools
import os

import torch

from .native import ENV_SWITCH, KernelBuildError, attention_kernel, native_attention


def invariant_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                        scale: float) -> torch.Tensor:
    """q [1, H, n, hd] (bf16 or float32), keys/values [1, KV, S, hd] (the same dtype), mask
    additive [n, S] or None (every query sees every key) -> [1, H, n, hd] in q's dtype (a view of a
    contiguous [n, H, hd]); each query row's result is a function of its own visible keys in slot
    order alone. float32: runtime/layer_f32.c's attention (runtime.native_layer.f32_attention)."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float32) or not q.dtype == keys.dtype == values.dtype:
        raise ValueError(f"the batch-invariant attention runs bf16 or float32 on the CPU, q, keys and values of one "
                         f"dtype; got {q.dtype} / {keys.dtype} / {values.dtype} on {q.device}")
    if q.dtype == torch.float32:
        from .native_layer import f32_attention

        return f32_attention(q, keys, values, mask, scale).permute(1, 0, 2)[None]
    return native_attention(q, keys, values, mask, scale).permute(1, 0, 2)[None]


def unavailable() -> str | None:
    """Why the invariant attention cannot run here (None: it can)."""
    try:
        if attention_kernel() is not None:
            return None
    except KernelBuildError as e:
        return str(e)
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0 switches the exact bf16 attention kernel off"
    return "no C compiler to build the exact bf16 attention kernel (runtime/attention_kernel.c): install gcc or set CC"


@functools.lru_cache(maxsize=None)
def check_kernels(device: str = "cpu") -> str | None:
    """Probe, on this machine, what the batch-invariant bf16 forward relies on: the attention
    kernel (random tensors shaped like a small target's attention, row counts 1..40, masked keys
    between the visible ones, a row against its visible keys packed alone) and the bf16 linears
    at 1..130 rows. None when they hold, else what failed."""
    if torch.device(device).type != "cpu":
        return f"the exact bf16 attention kernel runs on the CPU only, not {device}"
    why = unavailable()
    if why is not None:
        return why
    gen = torch.Generator().manual_seed(0)
    heads, kv, hd, prefix = 6, 2, 64, 980
    keys = torch.randn(1, kv, prefix + 64, hd, generator=gen).to(torch.bfloat16)
    values = torch.randn(1, kv, prefix + 64, hd, generator=gen).to(torch.bfloat16)
    q = torch.randn(1, heads, 40, hd, generator=gen).to(torch.bfloat16)
    one = invariant_attention(q[:, :, :1], keys[:, :, : prefix + 1], values[:, :, : prefix + 1], None, 0.125)
    for n in (2, 3, 4, 7, 16, 40):
        allowed = torch.rand(n, n, generator=gen) < 0.5
        allowed[0] = False
        allowed.fill_diagonal_(True)
        mask = torch.zeros(n, prefix + n)
        mask[:, prefix:].masked_fill_(~allowed, torch.finfo(torch.float32).min)
        out = invariant_attention(q[:, :, :n], keys[:, :, : prefix + n], values[:, :, : prefix + n], mask, 0.125)
        if not torch.equal(out[:, :, :1], one):
            return f"attention row 0 differs between 1 and {n} query rows"
        # row n-1 sees the prefix plus the visible tail slots: the same keys packed contiguously
        cols = torch.cat([torch.arange(prefix), allowed[n - 1].nonzero().flatten() + prefix])
        alone = invariant_attention(q[:, :, n - 1 : n], keys[:, :, cols], values[:, :, cols], None, 0.125)
        if not torch.equal(out[:, :, n - 1 :], alone):
            return f"attention of a row with masked keys between its visible ones differs from the packed keys ({n} rows)"
    from .prepacked import matmul

    # linears shaped like a small target's (oneDNN picks kernels by shape and row count: on AMX
    # another kernel takes over past 32 rows, runtime.prepacked.ROW_TILE), every tree size and
    # a few prefill lengths
    with torch.inference_mode():
        for out_features, in_features in ((192, 64), (1536, 576), (576, 1536)):
            weight = (torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5).to(torch.bfloat16).to(device)
            x = torch.randn(130, in_features, generator=gen).to(torch.bfloat16).to(device)
            alone = torch.cat([matmul(x[i : i + 1], weight) for i in range(x.shape[0])])
            for n in (2, 3, 4, 5, 8, 16, 31, 32, 33, 40, 64, 100, 130):
                if not torch.equal(matmul(x[:n], weight), alone[:n]):
                    return f"a bf16 linear ({in_features} -> {out_features}) computes a row differently beside {n - 1} others"
    return None
