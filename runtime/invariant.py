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
- numerator and normaliser in ONE bf16 matmul against [V | 1]: the oneDNN bf16 kernel accumulates the
  key axis in order, so masked keys (exact zero weights) change nothing wherever they sit,
  as long as one call's key axis stays inside one kernel block (measured: up to 1024 keys;
  past that the kernel splits the key axis at places that depend on its length). So the key
  axis is cut into blocks of BLOCK absolute positions (a node's ancestors land in the block
  their position says, whatever their slot) and the blocks' partial sums are added in block
  order in float32. A block holds at most BLOCK - 1 prefix keys plus the tree's nodes, so trees
  up to KERNEL_KEYS - BLOCK + 1 nodes are exact; a larger one is refused.
"""
from __future__ import annotations

import functools

import torch

BLOCK = 512  # key positions per block of the key axis
KERNEL_KEYS = 1024  # the longest key axis one bf16 matmul sums in order (measured; check_kernels probes it)
MIN_ROWS = 4  # fewer score rows are padded (a 1-3 row float32 matmul takes a GEMV)
# the bf16 matmul's key axis is padded (zero weights) to a multiple of this: oneDNN keeps state
# per shape (about 0.6 MiB each, never freed), and a key axis one longer every step would grow
# a long-running process without bound (a server: +1.3 MiB per new cache length)
KEY_QUANTUM = 64


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
    if len(blocks) == 1 and _whole(blocks[0]):
        total = _one_block(weights, values[0], s)
    else:
        weights = weights.to(torch.bfloat16)
        extended = torch.cat([values[0], values.new_ones(kv, s, 1)], dim=-1)  # [KV, S, hd + 1]
        total = None
        for cols in blocks:
            width = s if _whole(cols) else _width(cols, s)
            _check_width(width)
            w, x = weights[:, :, cols], extended[:, cols]
            pad = -width % KEY_QUANTUM
            if pad and width + pad <= KERNEL_KEYS:  # zero-weight keys: exact, wherever they sit
                w = torch.cat([w, w.new_zeros(kv, rows, pad)], dim=-1)
                x = torch.cat([x, x.new_zeros(kv, pad, hd + 1)], dim=1)
            part = torch.matmul(w, x).float()
            total = part if total is None else total + part
    out = total[..., :hd] / total[..., hd:]
    return out.view(1, heads, n, hd).to(q.dtype)


def _one_block(weights: torch.Tensor, values: torch.Tensor, s: int) -> torch.Tensor:
    """The key axis as one block: [weights | 0] @ [[V | 1]; 0] in bf16, the zero keys padding it
    to KEY_QUANTUM, written into buffers made at the padded size (the multi-block loop's
    arithmetic, fewer ops: this is every decode step on a cache under BLOCK positions)."""
    _check_width(s)
    kv, rows, hd = weights.shape[0], weights.shape[1], values.shape[2]
    width = s + -s % KEY_QUANTUM
    if width > KERNEL_KEYS:
        width = s
    w = torch.zeros(kv, rows, width, dtype=torch.bfloat16, device=weights.device)
    w[..., :s] = weights  # rounded to bf16 as .to(bfloat16) rounds
    x = torch.zeros(kv, width, hd + 1, dtype=values.dtype, device=values.device)
    x[:, :s, :hd] = values
    x[:, :s, hd] = 1
    return torch.matmul(w, x).float()


def _whole(cols: slice | torch.Tensor) -> bool:
    return isinstance(cols, slice) and cols == slice(None)


def _check_width(width: int) -> None:
    if width > KERNEL_KEYS:
        raise ValueError(f"{width} keys in one block of the exact bf16 attention (at most {KERNEL_KEYS}): "
                         f"a tree of more than {KERNEL_KEYS - BLOCK + 1} nodes is too large for it")


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
    heads, kv, hd, prefix = 6, 2, 64, 980  # the last block: 468 prefix keys + up to 40 tree slots
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
    from .prepacked import matmul

    weight = torch.randn(192, 64, generator=gen).to(torch.bfloat16).to(device)
    x = torch.randn(40, 64, generator=gen).to(torch.bfloat16).to(device)
    with torch.inference_mode():
        if not all(torch.equal(matmul(x[:n], weight)[:1], matmul(x[:1], weight)) for n in (2, 4, 7, 40)):
            return "a bf16 linear's row 0 differs with the number of rows"
    return None
