"""The target model behind one decode: its KV cache, the packed-tree forward and compaction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from transformers import PreTrainedModel

from runtime.hf_decoder import make_decoder
from runtime.kv import KVCache
from trees import PackedTree


@dataclass
class TargetOutput:
    logits: torch.Tensor  # float32 [Q, V]
    hidden_states: dict[int, torch.Tensor] | None  # transformers' hidden_states index -> [Q, H], the layers asked for


class TargetModel:
    def __init__(self, model: PreTrainedModel, tokenizer=None):
        self.model = model.eval().requires_grad_(False)
        self.decoder = make_decoder(self.model, target=True)
        self.tokenizer = tokenizer
        self.config = model.config
        self.dtype = self.decoder.dtype
        self.device = self.decoder.device
        self.vocab_size = int(model.config.vocab_size)
        self.hidden_size = int(model.config.hidden_size)
        self.num_layers = int(model.config.num_hidden_layers)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.cache: KVCache | None = None

    @property
    def cached(self) -> int:
        return self.cache.length if self.cache is not None else 0

    def prefill(self, input_ids: torch.Tensor, hidden_layers: Sequence[int] = (), capacity: int = 0) -> TargetOutput:
        """A fresh cache (room for `capacity` positions; it grows if needed) holding the prompt.
        Only the last position's logits are computed: that is all a decode samples from."""
        n = int(input_ids.numel())
        self.cache = self.decoder.new_cache(max(capacity, n + 64))
        out = self.decoder.forward(input_ids.view(-1), torch.arange(n), self.cache, None, hidden_layers,
                                   logits_rows=slice(n - 1, n))
        return TargetOutput(out.logits, out.hidden_states or None)

    def forward_tree(self, packed: PackedTree, hidden_layers: Sequence[int] = ()) -> TargetOutput:
        """One forward over the packed tree against the cached prefix. A single node needs no
        mask (it may attend everything), which lets the attention kernel take its fast path."""
        n = int(packed.input_ids.numel())
        mask = None if n == 1 else packed.attention_mask
        out = self.decoder.forward(packed.input_ids, packed.position_ids, self.cache, mask, hidden_layers)
        return TargetOutput(out.logits, out.hidden_states or None)

    def keep_path(self, prefix_len: int, path: torch.Tensor) -> None:
        """Keep the prefix and the accepted path's KV (the path is in node order, increasing)."""
        self.cache.keep(prefix_len, path.to(torch.long))


def drafter_features(drafter, hidden_states, rows: torch.Tensor | slice) -> torch.Tensor | None:
    """What `drafter` reads of the target at `rows`: its layers' hidden states concatenated on the
    feature axis (Drafter.target_layers), or None for a drafter that reads none."""
    if not drafter.target_layers:
        return None
    return torch.cat([hidden_states[i][rows] for i in drafter.target_layers], dim=-1)


def layers_read(drafters: Iterable, *extra: int) -> list[int]:
    """The target layers whose hidden states `drafters` (and `extra` readers) read: the union,
    first-seen order kept. The one place the union is made: the prefill and every verify forward
    return these."""
    layers = [i for d in drafters for i in d.target_layers or ()]
    return list(dict.fromkeys([*layers, *extra]))
