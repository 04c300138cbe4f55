"""A plain-PyTorch forward (gpt-fast style) over a loaded transformers decoder-only model of the
Llama family (llama, mistral, qwen2, qwen3): the target and the LM drafters run through it.

It calls the model's own modules (embedding, norms, projections, MLPs, rotary embedding, head),
so the arithmetic is transformers' own, and replaces only the attention plumbing: keys and
values go straight into a preallocated `KVCache`, attention is one grouped-query SDPA call over
a view of the cache (no repeat_kv copy, no concatenation), and the additive mask is the caller's
(trees.attention_mask). Nothing here depends on transformers' Cache or masking internals, which
change between releases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from trees import attention_mask, within_window

from .invariant import invariant_attention, key_blocks
from .kv import KVCache
from .prepacked import linear

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # float32 [rows, V] (the rows asked for)
    hidden_states: dict[int, torch.Tensor]  # transformers' hidden_states index -> [n, H] (asked-for layers)


class Decoder:
    """`Decoder(model)`: runs `model` (its modules are looked up at every forward, so a wrapper
    that swaps one of them, e.g. an adapted head, is honoured). invariant: attention through
    runtime/invariant.py, whose rows are bit-identical whatever the rows and masked keys beside
    them (default: for a bfloat16 model on the CPU, where SDPA is not; docs/design.md "Exact bf16")."""

    kind = "fast"  # runtime.hf_decoder.make_decoder picks it for SUPPORTED_MODEL_TYPES ("general" otherwise)

    def __init__(self, model: PreTrainedModel, invariant: bool | None = None):
        config = model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model type {config.model_type!r} is not supported by specmux's decoder; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (runtime.hf_decoder.make_decoder runs any other causal "
                "LM on the general path)"
            )
        self.model = model
        attn = model.model.layers[0].self_attn
        self.head_dim = int(attn.head_dim)
        self.n_heads = int(config.num_attention_heads)
        self.n_kv = int(config.num_key_value_heads)
        self.scale = float(attn.scaling)
        self.windows = _layer_windows(config, self.num_layers)
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.invariant = (self.dtype == torch.bfloat16 and self.device.type == "cpu") if invariant is None else invariant

    @property
    def num_layers(self) -> int:
        return len(self.model.model.layers)

    def new_cache(self, capacity: int = 256) -> KVCache:
        return KVCache(self.num_layers, self.n_kv, self.head_dim, self.dtype, self.device, capacity)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        mask: torch.Tensor | None,
        hidden_layers: Sequence[int] = (),
        logits_rows: slice | torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Feed `input_ids` [n] at `positions` [n] after the cache's live entries, which they
        join. mask: additive [n, cache.length + n] in the model dtype, or None for causal
        attention (the new rows see the whole cache and the rows before them). hidden_layers:
        transformers' hidden_states indices to return (i < L: the input of layer i; -1 or L: the
        final normed state). logits_rows: the rows to project through the head (default all)."""
        n = int(input_ids.numel())
        attn_mask, causal, layer_masks, blocks = self.attention_inputs(positions, cache, mask)
        body = self.model.model
        pos = positions.view(1, n).to(self.device)
        h = body.embed_tokens(input_ids.view(1, n).to(self.device))
        cos, sin = body.rotary_emb(h, pos)
        wanted: dict[int, list[int]] = {}  # layer input -> the indices asked for it (-1 and L are one state)
        for i in hidden_layers:
            wanted.setdefault(self.num_layers if i == -1 else i, []).append(i)
        hidden: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(body.layers):
            hidden.update(dict.fromkeys(wanted.get(i, ()), h[0]))
            windowed = layer_masks.get(self.windows[i])
            layer_mask, layer_causal = (windowed, False) if windowed is not None else (attn_mask, causal)
            h = h + self._attention(i, layer.self_attn, layer.input_layernorm(h), cos, sin, cache, layer_mask,
                                    layer_causal, blocks)
            h = h + _mlp(layer.mlp, layer.post_attention_layernorm(h))
        cache.advance(n)
        h = body.norm(h)
        hidden.update(dict.fromkeys(wanted.get(self.num_layers, ()), h[0]))
        rows = h if logits_rows is None else h[:, logits_rows]
        return DecoderOutput(logits=linear(self.model.lm_head, rows)[0].float(), hidden_states=hidden)

    def attention_inputs(self, positions: torch.Tensor, cache: KVCache, mask: torch.Tensor | None):
        """Make room in `cache` for rows at `positions` and return what every layer's attention
        over them needs: (the 4D additive mask or None, causal flag, sliding-window masks by
        window, the invariant attention's key blocks or None). One place for the target's forward
        and the server's batched one (serve/batch.py)."""
        n = int(positions.numel())
        cache.reserve(n)
        key_positions = cache.place(positions)
        attn_mask = None if mask is None else mask.to(self.device, self.dtype)[None, None]
        causal = mask is None and n > 1
        if causal and (cache.length or self.invariant):  # SDPA's is_causal aligns to the top left: spell it out
            allowed = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
            attn_mask, causal = attention_mask(allowed, cache.length, self.dtype)[None, None], False
        layer_masks = self._window_masks(attn_mask, causal, positions.view(-1), key_positions)
        return attn_mask, causal, layer_masks, key_blocks(key_positions) if self.invariant else None

    def _attention(self, i, attn, x, cos, sin, cache: KVCache, mask, causal: bool, blocks) -> torch.Tensor:
        n = x.shape[1]
        q = linear(attn.q_proj, x).view(1, n, self.n_heads, self.head_dim)
        k = linear(attn.k_proj, x).view(1, n, self.n_kv, self.head_dim)
        v = linear(attn.v_proj, x).view(1, n, self.n_kv, self.head_dim).transpose(1, 2)
        if hasattr(attn, "q_norm"):  # qwen3: RMSNorm over each head
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
        keys, values = cache.write(i, k, v)
        if blocks is not None:
            y = invariant_attention(q, keys, values, None if mask is None else mask[0, 0], blocks, self.scale)
            return linear(attn.o_proj, y.transpose(1, 2).reshape(1, n, -1))
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal,
                                           scale=self.scale, enable_gqa=self.n_heads != self.n_kv)
        return linear(attn.o_proj, y.transpose(1, 2).reshape(1, n, -1))

    def _window_masks(self, mask, causal: bool, query_positions, key_positions) -> dict[int, torch.Tensor]:
        """Sliding-window layers' masks, by window, where some key lies beyond a window (else the
        layer's mask is the plain one): the plain mask with keys >= window positions back hidden."""
        windows = {w for w in self.windows if w is not None}
        if windows:  # (a model without windows skips the reductions below)
            span = int(query_positions.max()) - int(key_positions.min()) + 1
            windows = {w for w in windows if w < span}
        if not windows:
            return {}
        if mask is None:  # no mask: every query sees every key (a single token) or causal from 0
            n, k = query_positions.numel(), key_positions.numel()
            allowed = torch.ones(n, n, dtype=torch.bool, device=self.device)
            mask = attention_mask(allowed.tril() if causal else allowed, k - n, self.dtype)[None, None]
        return {w: within_window(mask[0, 0], query_positions, key_positions, w)[None, None] for w in windows}


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The gated MLP of the Llama family (down(act(gate(x)) * up(x))) on packed linears; any
    other MLP module (e.g. an adapted one) runs its own forward."""
    if not all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return mlp(x)
    return linear(mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, x)) * linear(mlp.up_proj, x))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as transformers applies it: x [1, H, n, hd], cos/sin [1, n, hd]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None]


def _layer_windows(config, n_layers: int) -> list[int | None]:
    """Sliding window of each layer (None: full attention)."""
    window = getattr(config, "sliding_window", None)
    if config.model_type in ("qwen2", "qwen3") and not getattr(config, "use_sliding_window", False):
        window = None
    types = getattr(config, "layer_types", None)
    if types is None:
        return [window] * n_layers
    return [window if t == "sliding_attention" else None for t in types[:n_layers]]
