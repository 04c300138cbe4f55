"""Packing a tree for one target forward: X (tokens), P (positions), M (additive mask).

The engine feeds X with position_ids P and the 4D mask M[None, None] against a KV cache that
holds the prefix (the root is NOT in the cache: it is X[0]). transformers uses a 4D mask as
given, so M encodes the prefix columns and the tree itself, in the model dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .tree import DraftTree


@dataclass
class PackedTree:
    input_ids: torch.Tensor  # X: int64 [N]
    position_ids: torch.Tensor  # P: int64 [N] = prefix_len + depth
    attention_mask: torch.Tensor  # M: [N, prefix_len + N] additive, dtype; 0 attend, finfo.min elsewhere
    ancestors: torch.Tensor  # bool [N, N]; ancestors[i, j] <=> j is i or an ancestor of i
    prefix_len: int


def ancestor_matrix(parents: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """bool [N, N]: row i marks i and its ancestors. Built one depth level at a time: a node's
    row is its parent's row plus itself (EAGLE style), so the loop runs max-depth times."""
    n = parents.numel()
    anc = torch.eye(n, dtype=torch.bool, device=parents.device)
    for d in range(1, int(depths.max()) + 1 if n else 0):
        level = (depths == d).nonzero().flatten()
        anc[level] |= anc[parents[level]]
    return anc


def attention_mask(allowed: torch.Tensor, prefix_len: int, dtype: torch.dtype = torch.float32,
                   window: int | None = None, query_positions: torch.Tensor | None = None,
                   key_positions: torch.Tensor | None = None) -> torch.Tensor:
    """The one additive attention mask builder (target, drafters, training). Query rows see the
    `prefix_len` committed cache positions in full, and the tail columns after them where
    `allowed` (bool [Q, T]: query row -> tail column, usually rows of an ancestor matrix) is True.
    -> [Q, prefix_len + T] in `dtype`: 0 where a row attends, the dtype's most negative finite
    value elsewhere (docs/design.md "Packing": a boolean or 0/1 mask is wrong).
    window: a sliding-window layer's span; then see `within_window` (positions required)."""
    if prefix_len < 0:
        raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
    if allowed.dtype != torch.bool or allowed.dim() != 2:
        raise ValueError(f"allowed must be a 2D bool tensor, got {allowed.dtype} of shape {tuple(allowed.shape)}")
    q, t = allowed.shape
    mask = torch.zeros((q, prefix_len + t), dtype=dtype, device=allowed.device)
    mask[:, prefix_len:].masked_fill_(~allowed, torch.finfo(dtype).min)
    if window is not None:
        mask = within_window(mask, query_positions, key_positions, window)
    return mask


def within_window(mask: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor,
                  window: int) -> torch.Tensor:
    """`mask` [Q, K] additive, restricted to a sliding window: a query at position p sees a key
    at position k only if p - k < window, as plain decoding does (transformers' sliding-window
    overlay, by position: a tree node's ancestors sit at smaller depths, not smaller indices)."""
    if query_positions is None or key_positions is None:
        raise ValueError("a sliding-window mask needs the query and key positions")
    far = query_positions.to(mask.device)[:, None] - key_positions.to(mask.device)[None, :] >= window
    return mask.masked_fill(far, torch.finfo(mask.dtype).min)


def pack_tree(tree: DraftTree, prefix_len: int, dtype: torch.dtype = torch.float32) -> PackedTree:
    if prefix_len < 0:
        raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
    anc = ancestor_matrix(tree.parents, tree.depths)
    mask = attention_mask(anc, prefix_len, dtype)
    return PackedTree(
        input_ids=tree.tokens.clone(),
        position_ids=tree.depths + prefix_len,
        attention_mask=mask,
        ancestors=anc,
        prefix_len=prefix_len,
    )


def kept_cache_positions(prefix_len: int, path: torch.Tensor) -> torch.Tensor:
    """Cache positions to keep after verification: arange(prefix_len) + prefix_len + path."""
    path = path.to(torch.long)
    return torch.cat([torch.arange(prefix_len, dtype=torch.long, device=path.device), prefix_len + path])
