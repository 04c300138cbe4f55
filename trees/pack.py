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


def pack_tree(tree: DraftTree, prefix_len: int, dtype: torch.dtype = torch.float32) -> PackedTree:
    raise NotImplementedError


def kept_cache_positions(prefix_len: int, path: torch.Tensor) -> torch.Tensor:
    """Cache positions to keep after verification: arange(prefix_len) + prefix_len + path."""
    raise NotImplementedError
