"""The one KV cache of specmux (gpt-fast style): keys and values of every decoder layer in
preallocated buffers, written in place. Used by the target, the LM drafters and the feature
drafters (batched or not).

Layout [layers, batch, kv_heads, capacity, head_dim]; positions [0, length) are live. A forward
writes its new entries at `length` and attends over a view of [0, length + n): no concatenation,
no allocation per step. Compaction after verification moves the kept rows down in place.
Capacity grows by doubling when a write would not fit (one copy, rare)."""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu", capacity: int = 256, batch: int = 1):
        shape = (layers, batch, kv_heads, max(1, capacity), head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        # the token position of every slot (tree nodes share positions): sliding windows need it
        self.positions = torch.zeros(max(1, capacity), dtype=torch.long)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def reserve(self, n: int) -> None:
        """Make room for `n` more positions (doubling the capacity when they do not fit)."""
        need = self.length + n
        if need <= self.capacity:
            return
        capacity = max(need, 2 * self.capacity)
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:3], capacity, old.shape[4]))
            new[:, :, :, : self.length] = old[:, :, :, : self.length]
            setattr(self, name, new)
        positions = self.positions.new_zeros(capacity)
        positions[: self.length] = self.positions[: self.length]
        self.positions = positions

    def place(self, positions: torch.Tensor) -> torch.Tensor:
        """Record the positions of the next entries (call after `reserve`); returns the positions
        of every slot a forward over them attends to [length + n]."""
        end = self.length + positions.numel()
        self.positions[self.length : end] = positions.reshape(-1).cpu()
        return self.positions[:end]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this forward's k, v [batch, kv_heads, n, head_dim] of `layer` at `length` and
        return views of the layer's keys and values [batch, kv_heads, length + n, head_dim].
        `length` itself moves on only in `advance` (after every layer has written)."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def crop(self, length: int) -> None:
        """Keep the first `length` positions."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        self.length = length

    def keep(self, start: int, tail: torch.Tensor) -> None:
        """Keep positions [0, start) plus `start + tail` (increasing offsets): the kept rows are
        moved down in place, every layer in one gather."""
        n = int(tail.numel())
        if n and int(tail[-1]) >= self.length - start:
            raise ValueError(f"cannot keep offset {int(tail[-1])} past position {start} of a cache of length {self.length}")
        if not torch.equal(tail.cpu(), torch.arange(n)):  # a chain accepted in order: nothing moves
            src = start + tail.to(self.keys.device)
            self.keys[:, :, :, start : start + n] = self.keys[:, :, :, src]
            self.values[:, :, :, start : start + n] = self.values[:, :, :, src]
            self.positions[start : start + n] = self.positions[src.cpu()]
        self.length = start + n
