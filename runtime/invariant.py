"""Batch-invariant attention for a bfloat16 target on the CPU (docs/design.md "Exact bf16").

Speculative greedy output equals plain decoding only if a node's logits in a tree forward are
bit-identical to the logits plain decoding computes for the same token at the same position.
Two things differ between those forwards: the number of rows (a tree's N nodes against one
token) and the layout of the keys (a node's ancestors sit between masked siblings in the tree,
contiguous in the compacted cache of plain decoding). The bf16 linears (oneDNN) are already
row-invariant; SDPA is neither row- nor layout-invariant (its kernel splits keys into blocks
sized by the number of queries). This attention is both, by construction plus two kernel
facts that `check_kernels` verifies on the running machine:

- scores in float32 (from the bf16 q and k, which multiply exactly): a float32 matmul whose
  reduction runs over the head dimension only, with at least MIN_ROWS rows (a 1-row matmul
  takes a GEMV with another reduction order);
- max (exact in any order), exp (elementwise), the weights rounded to bf16;
- numerator and normaliser in ONE bf16 matmul against [V | 1], with every key alone in its pair
  of the key axis (a zero key after each): the AVX512-BF16 dot-product instruction adds the keys
  of a pair odd slot first, so two visible keys sharing a pair are summed in another order than
  the same keys apart (measured 2026-12-05 on the default target: a tree node's layer-26
  attention differed from plain decoding's in one element, 0.3398 against 0.3379, whose float32
  sums differ by one ulp on a bf16 rounding midpoint, and greedy speculative output left plain
  decoding's in 6 of 60 held-out runs). With a zero partner every pair adds one visible key, so
  the kernel's sum runs over the visible keys in order and masked keys (exact zero weights)
  change nothing wherever they sit, as long as one call's key axis stays inside one kernel block
  (measured: up to 1024 keys, i.e. 512 keys with their zero partners; past that the kernel
  splits the key axis at places that depend on its length). So the key axis is cut into blocks
  of BLOCK absolute positions (a node's ancestors land in the block their position says,
  whatever their slot) and the blocks' partial sums are added in block order in float32. A
  block holds at most BLOCK - 1 prefix keys plus the tree's nodes, so trees up to
  KERNEL_KEYS / 2 - BLOCK + 1 nodes are exact; a larger one is refused.
"""
from __future__ import annotations

import functools

import torch

BLOCK = 256  # key positions per block of the key axis
KERNEL_KEYS = 1024  # the longest key axis one bf16 matmul sums in order (measured; check_kernels probes it)
MIN_ROWS = 4  # fewer score rows are padded (a 1-3 row float32 matmul takes a GEMV)
# the bf16 matmul's key axis is padded (zero weights) to a multiple of this: oneDNN keeps state
# per shape (about 0.6 MiB each, never freed), and a key axis one longer every step would grow
# a long-running process without bound (a server: +1.3 MiB per new cache length)
KEY_QUANTUM = 64
KEY_SPACING = 2  # slots per key on the bf16 matmul's key axis: the key, then its zero partner


def invariant_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                        blocks: list[slice | torch.Tensor], scale: float) -> torch.Tensor:
    """q [1, H, n, hd] (bf16), keys/values [1, KV, S, hd] (bf16), mask additive [n, S] or None
    (every query sees every key), blocks: `key_blocks` of the key slots' positions
    -> [1, H, n, hd] bf16; each query row's result is a function of its own visible keys in
    position order alone."""
    _, heads, n, hd = q.shape
    kv, s = keys.shape[1], keys.shape[2]
    group = heads // kv
    rows = group * n
    # head h = kv_head * group + g: rows (g, query) per kv head; fewer than MIN_ROWS padded with zeros
    qf = torch.zeros(kv, max(rows, MIN_ROWS), hd, dtype=torch.float32, device=q.device)
    qf[:, :rows].view(kv, group, n, hd).copy_(q[0].unflatten(0, (kv, group)))
    scores = torch.matmul(qf, keys[0].float().transpose(1, 2))[:, :rows] * scale  # [KV, rows, S]
    scores = scores.view(kv, group, n, s)
    if mask is not None:
        scores = scores + mask.to(torch.float32)
    weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True)).view(kv, rows, s)
    total = None
    for cols in blocks:
        part = _block_sum(weights, values[0], cols)
        total = part if total is None else total + part
    out = total[..., :hd] / total[..., hd:]
    return out.view(1, heads, n, hd).to(q.dtype)


def _block_sum(weights: torch.Tensor, values: torch.Tensor, cols: slice | torch.Tensor) -> torch.Tensor:
    """float32 [KV, rows, hd + 1]: the key slots `cols` of weights [KV, rows, S] (float32, rounded
    to bf16 here) times [V | 1] (values [KV, S, hd] bf16), in ONE bf16 matmul whose key axis
    holds each key at an even slot with a zero key after it, padded with zero keys to a
    multiple of KEY_QUANTUM (the module docstring says why)."""
    kv, rows, hd = weights.shape[0], weights.shape[1], values.shape[2]
    count = _width(cols, weights.shape[2])
    _check_width(count)
    used = KEY_SPACING * count
    width = used + -used % KEY_QUANTUM
    w = torch.zeros(kv, rows, width, dtype=torch.bfloat16, device=weights.device)
    w[..., :used:KEY_SPACING] = weights[..., cols]  # rounded to bf16 as .to(bfloat16) rounds
    x = torch.zeros(kv, width, hd + 1, dtype=values.dtype, device=values.device)
    x[:, :used:KEY_SPACING, :hd] = values[:, cols]
    x[:, :used:KEY_SPACING, hd] = 1
    return torch.matmul(w, x).float()


def _check_width(keys: int) -> None:
    if KEY_SPACING * keys > KERNEL_KEYS:
        raise ValueError(f"{keys} keys in one block of the exact bf16 attention (at most {KERNEL_KEYS // KEY_SPACING}): "
                         f"a tree of more than {KERNEL_KEYS // KEY_SPACING - BLOCK + 1} nodes is too large for it")


def _width(cols: slice | torch.Tensor, total: int) -> int:
    return len(range(*cols.indices(total))) if isinstance(cols, slice) else int(cols.numel())


def key_blocks(key_positions: torch.Tensor) -> list[slice | torch.Tensor]:
    """Key slots grouped by block of absolute position, in block order: a slice where a block's
    slots are contiguous (the compacted prefix, a prefill, a chain), else their indices in slot
    order (a tree that crosses a block boundary)."""
    block = key_positions.cpu() // BLOCK
    first, last = int(block[0]), int(block[-1])
    if first == last:
        return [slice(None)]
    out: list[slice | torch.Tensor] = []
    for b in range(first, last + 1):
        idx = (block == b).nonzero().flatten()
        if idx.numel() == 0:
            continue
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        out.append(slice(lo, hi) if hi - lo == idx.numel() else idx.to(key_positions.device))
    return out


@functools.lru_cache(maxsize=None)
def check_kernels(device: str = "cpu") -> str | None:
    """Probe, on this machine, the kernel facts the invariant attention relies on (random
    tensors shaped like a small target's attention, every row count 1..40 and masked keys
    inserted between the visible ones). None when they hold, else what failed."""
    gen = torch.Generator().manual_seed(0)
    heads, kv, hd, prefix = 6, 2, 64, 980  # the last block: 212 prefix keys + up to 40 tree slots
    keys = torch.randn(1, kv, prefix + 64, hd, generator=gen).to(torch.bfloat16).to(device)
    values = torch.randn(1, kv, prefix + 64, hd, generator=gen).to(torch.bfloat16).to(device)
    q = torch.randn(1, heads, 40, hd, generator=gen).to(torch.bfloat16).to(device)
    positions = torch.arange(prefix + 64, device=device)
    one = invariant_attention(q[:, :, :1], keys[:, :, : prefix + 1], values[:, :, : prefix + 1], None,
                              key_blocks(positions[: prefix + 1]), 0.125)
    for n in (2, 3, 4, 7, 16, 40):
        allowed = torch.rand(n, n, generator=gen) < 0.5
        allowed[0] = False
        allowed.fill_diagonal_(True)
        mask = torch.zeros(n, prefix + n, device=device)
        mask[:, prefix:].masked_fill_(~allowed.to(device), torch.finfo(torch.float32).min)
        out = invariant_attention(q[:, :, :n], keys[:, :, : prefix + n], values[:, :, : prefix + n], mask,
                                  key_blocks(positions[: prefix + n]), 0.125)
        if not torch.equal(out[:, :, :1], one):
            return f"attention row 0 differs between 1 and {n} query rows"
        # row n-1 sees the prefix plus the visible tail slots: the same keys packed contiguously
        visible = allowed[n - 1].nonzero().flatten().to(device) + prefix
        cols = torch.cat([torch.arange(prefix, device=device), visible])
        alone = invariant_attention(q[:, :, n - 1 : n], keys[:, :, cols], values[:, :, cols], None,
                                    key_blocks(positions[: cols.numel()]), 0.125)
        if not torch.equal(out[:, :, n - 1 :], alone):
            return f"attention of a row with masked keys between its visible ones differs from the packed keys ({n} rows)"
    # keys moved apart by masked keys, on sums built so that adding a pair's keys in another
    # order moves the bf16 result (a kernel that sums keys in pairs fails it without the zero
    # partners: measured on AVX512-BF16, module docstring)
    w, v = _pair_order_case(hd)
    for slots in ([0, 1, 3, 5], [1, 2, 3, 4], [0, 2, 3, 7]):
        spread_w = torch.zeros(1, w.shape[1], slots[-1] + 1)
        spread_w[..., slots] = w
        spread_v = torch.zeros(1, slots[-1] + 1, hd, dtype=torch.bfloat16)
        spread_v[:, slots] = v
        if not torch.equal(_block_sum(w.to(device), v.to(device), slice(None)),
                           _block_sum(spread_w.to(device), spread_v.to(device), slice(None))):
            return "the bf16 sum of a row's keys depends on where masked keys sit between them"
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


def _pair_order_case(columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [1, 4, 4] (all 1) and values [1, 4, columns] (bf16) of four keys 1, 2^-8, a, b,
    where a and b (a few float32 ulps) make (1 + 2^-8 + a) + b and (1 + 2^-8 + b) + a round to
    different bf16 values: 1 + 2^-8 is a bf16 rounding midpoint."""
    grid = torch.arange(-24, 25, dtype=torch.float32) * 2.0 ** -26
    a, b = (t.flatten() for t in torch.meshgrid(grid, grid, indexing="ij"))
    base = torch.tensor(1.0 + 2.0 ** -8)
    differ = ((base + a) + b).to(torch.bfloat16) != ((base + b) + a).to(torch.bfloat16)
    a, b = a[differ], b[differ]
    pick = torch.arange(columns) % a.numel()
    values = torch.stack([torch.ones(columns), torch.full((columns,), 2.0 ** -8), a[pick], b[pick]])
    return torch.ones(1, 4, 4), values.to(torch.bfloat16)[None]
