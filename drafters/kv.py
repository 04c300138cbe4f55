"""KV-cache surgery on transformers' DynamicCache: keep arbitrary positions along the sequence
axis (there is no public API for it) and truncate. Shared by the target and the LM drafters."""
from __future__ import annotations

import torch
from transformers import DynamicCache


def cache_length(cache: DynamicCache) -> int:
    return int(cache.get_seq_length())


def truncate_cache(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` positions of every layer."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def keep_tail_positions(cache: DynamicCache, start: int, tail: torch.Tensor) -> None:
    """Keep positions [0, start) plus `start + tail` (tail: increasing offsets past `start`).

    The selected rows are moved down in place and the layer becomes a view of the first
    start + len(tail) rows, so the prefix is never copied here (the next update's cat copies
    it anyway, as transformers' dynamic cache always does)."""
    n = int(tail.numel())
    src = start + tail
    if torch.equal(tail, torch.arange(n)):  # a chain accepted in order: nothing moves
        truncate_cache(cache, start + n)
        return
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or not layer.keys.numel():
            continue
        layer.keys[..., start : start + n, :] = layer.keys[..., src, :]
        layer.values[..., start : start + n, :] = layer.values[..., src, :]
        layer.keys = layer.keys[..., : start + n, :]
        layer.values = layer.values[..., : start + n, :]
