"""The target model behind one decode: its KV cache, the packed-tree forward and compaction."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from drafters.kv import cache_length, keep_tail_positions
from trees import PackedTree


@dataclass
class TargetOutput:
    logits: torch.Tensor  # float32 [Q, V]
    hidden_states: tuple[torch.Tensor, ...] | None  # per layer [Q, H] (transformers' tuple order)


class TargetModel:
    def __init__(self, model: PreTrainedModel, tokenizer=None):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = model.config
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.config.vocab_size)
        self.hidden_size = int(model.config.hidden_size)
        self.num_layers = int(model.config.num_hidden_layers)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.cache: DynamicCache | None = None

    @property
    def cached(self) -> int:
        return cache_length(self.cache) if self.cache is not None else 0

    def prefill(self, input_ids: torch.Tensor, want_hidden: bool) -> TargetOutput:
        self.cache = DynamicCache(config=self.config)
        out = self.model(
            input_ids=input_ids.view(1, -1).to(self.device),
            past_key_values=self.cache,
            use_cache=True,
            output_hidden_states=want_hidden,
            logits_to_keep=1,  # only the last position's logits are sampled from
        )
        return _output(out, want_hidden)

    def forward_tree(self, packed: PackedTree, want_hidden: bool) -> TargetOutput:
        """One forward over the packed tree against the cached prefix. A single node needs no
        mask (it may attend everything), which lets the attention kernel take its fast path."""
        n = int(packed.input_ids.numel())
        mask = None if n == 1 else packed.attention_mask.to(self.device, self.dtype)[None, None]
        out = self.model(
            input_ids=packed.input_ids.view(1, -1).to(self.device),
            position_ids=packed.position_ids.view(1, -1).to(self.device),
            attention_mask=mask,
            past_key_values=self.cache,
            use_cache=True,
            output_hidden_states=want_hidden,
        )
        return _output(out, want_hidden)

    def keep_path(self, prefix_len: int, path: torch.Tensor) -> None:
        """Keep the prefix and the accepted path's KV (the path is in node order, increasing)."""
        keep_tail_positions(self.cache, prefix_len, path.to(torch.long))


def _output(out, want_hidden: bool) -> TargetOutput:
    hidden = tuple(h[0] for h in out.hidden_states) if want_hidden else None
    return TargetOutput(logits=out.logits[0].float(), hidden_states=hidden)


def select_features(hidden_states: tuple[torch.Tensor, ...], layers, rows: torch.Tensor | slice) -> torch.Tensor:
    """Concatenate the requested layers' states at `rows` on the feature axis."""
    return torch.cat([hidden_states[i][rows] for i in layers], dim=-1)
