"""A plain-PyTorch forward (gpt-fast style) over a loaded transformers decoder-only model of the
Llama family (llama, mistral, qwen2, qwen3): the target and the LM drafters run through it.

It runs the model's own weights with transformers' arithmetic (embedding, norms, projections,
MLPs, rotary embedding, head), through a plan of the model resolved once (runtime/plan.py:
packed and fused linears, norms op for op, modules it cannot run itself on their own forward),
and replaces the attention plumbing: keys and
values go straight into a preallocated `KVCache`, attention is one grouped-query SDPA call over
a view of the cache (no repeat_kv copy, no concatenation), and the additive mask is the caller's
(trees.attention_mask). Nothing here depends on transformers' Cache or masking internals, which
change between releases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from trees import attention_mask, within_window

from . import native_layer
from .invariant import invariant_attention
from .kv import KVCache
from .native_layer import DirectCache
from .plan import Plan
from .prepacked import padded_rows

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # float32 [rows, V] (the rows asked for)
    hidden_states: dict[int, torch.Tensor]  # transformers' hidden_states index -> [n, H] (asked-for layers)


class Decoder:
    """`Decoder(model)`: runs `model` (through its plan, rebuilt when a module is swapped, e.g. for
    an adapted head, a hook registered or a weight edited in place: runtime/plan.py). invariant: attention through
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
        self.invariant = _invariant_here(self.dtype, self.device, self.head_dim) if invariant is None else invariant
        self._plans: dict[bool, Plan] = {}  # by packed (runtime/plan.py)

    def __getstate__(self):
        """A copy (deepcopy of a drafter, pickling) builds its own plan: packed weights cannot be
        copied, and the copy's plan must follow the copy's model."""
        return {**self.__dict__, "_plans": {}}

    @property
    def num_layers(self) -> int:
        return len(self.model.model.layers)

    def new_cache(self, capacity: int = 256) -> KVCache:
        return KVCache(self.num_layers, self.n_kv, self.head_dim, self.dtype, self.device, capacity)

    def plan(self) -> Plan:
        """The model's plan for a forward now (runtime/plan.py): packed linears on the CPU with
        gradients off, the modules' own forwards otherwise; rebuilt when stale."""
        packed = self.device.type == "cpu" and not torch.is_grad_enabled()
        plan = self._plans.get(packed)
        if plan is None or not plan.current():
            plan = self._plans[packed] = Plan(self.model, packed, self.dtype, self.n_heads, self.n_kv, self.head_dim,
                                              self.scale)
        return plan

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
        segment = [(0, n, cache, self.attention_inputs(positions, cache, mask))]
        plan = self.plan()
        ids, pos = self.padded_inputs([input_ids], [positions])
        wanted = {self.num_layers if i == -1 else i for i in hidden_layers}
        h, captured = plan.run(ids, pos, n, lambda i, q, k, v: self.attend(i, q, k, v, segment), wanted,
                               self._direct(cache, segment[0][3], ids.shape[0]) if plan.fused else None)
        cache.advance(n)
        hidden = {i: captured[self.num_layers if i == -1 else i] for i in hidden_layers}
        return DecoderOutput(logits=plan.logits(h if logits_rows is None else h[logits_rows]), hidden_states=hidden)

    def padded_inputs(self, input_ids: Sequence[torch.Tensor], positions: Sequence[torch.Tensor]):
        """Token ids and positions [P] of the rows side by side, padded (token 0 at position 0)
        to the rows every packed linear runs (runtime.prepacked.padded_rows)."""
        total = sum(int(t.numel()) for t in input_ids)
        pad = [torch.zeros(padded_rows(total, self.dtype) - total, dtype=torch.long)]
        ids = torch.cat([t.reshape(-1).cpu() for t in input_ids] + pad)
        pos = torch.cat([t.reshape(-1).cpu() for t in positions] + pad)
        return ids.to(self.device), pos.to(self.device)

    def attention_inputs(self, positions: torch.Tensor, cache: KVCache, mask: torch.Tensor | None):
        """Make room in `cache` for rows at `positions` and return what every layer's attention
        over them needs: (the 4D additive mask or None, causal flag, sliding-window masks by
        window, whether the attention is the batch-invariant one). One place for the target's forward
        and the server's batched one (serve/batch.py)."""
        n = int(positions.numel())
        if mask is not None and tuple(mask.shape) != (n, cache.length + n):
            raise ValueError(f"the attention mask is {tuple(mask.shape)}, but {n} new rows after {cache.length} cached "
                             f"entries need [{n}, {cache.length + n}]")
        cache.reserve(n)
        key_positions = cache.place(positions)
        attn_mask = None if mask is None else mask.to(self.device, self.dtype)[None, None]
        causal = mask is None and n > 1
        # a float32 prompt feed (causal rows, no mask) attends with SDPA: it is the same call in
        # every decoding of the prompt, so only speed is at stake there, and SDPA's blocked
        # kernel is faster over hundreds of rows than the per-(row, head) passes of ours
        invariant = self.invariant and not (causal and self.dtype == torch.float32)
        if causal and (cache.length or invariant):  # SDPA's is_causal aligns to the top left: spell it out
            allowed = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
            attn_mask, causal = attention_mask(allowed, cache.length, self.dtype)[None, None], False
        layer_masks = self._window_masks(attn_mask, causal, positions.view(-1), key_positions)
        return attn_mask, causal, layer_masks, invariant

    def _direct(self, cache: KVCache, inputs, rows: int) -> DirectCache | None:
        """For Plan.run: this cache as the compiled whole-layer calls take it (runtime/native_layer.py),
        where the rows attend this one cache with the exact kernel (the layers with a window of
        their own skipped), else None."""
        mask, causal, windows, invariant = inputs
        if not invariant or causal or cache.keys.shape[1] != 1:
            return None
        if mask is not None:
            mask = mask[0, 0] if mask[0, 0].stride(1) == 1 else mask[0, 0].contiguous()
        skip = frozenset(i for i in range(self.num_layers) if windows.get(self.windows[i]) is not None)
        return DirectCache(cache.keys, cache.values, cache.length, mask, rows, self.n_heads, skip)

    def attend(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments) -> torch.Tensor:
        """Layer i's grouped-query attention, q [P, heads, hd], k, v [P, kv_heads, hd], for each
        segment (start, end, cache, its attention_inputs): its rows against its own cache, which
        they are written to. -> [P, heads * hd], padding rows zero. One place for this forward
        and the server's batched one, whose rows must be this forward's to the bit."""
        rows = q.shape[0]
        out = None
        for a, e, cache, (mask, causal, windows, invariant) in segments:
            qs = q[a:e].transpose(0, 1)[None]
            keys, values = cache.write(i, k[a:e].transpose(0, 1)[None], v[a:e].transpose(0, 1)[None])
            windowed = windows.get(self.windows[i])
            mask, causal = (windowed, False) if windowed is not None else (mask, causal)
            if invariant:
                y = invariant_attention(qs, keys, values, None if mask is None else mask[0, 0], self.scale)
            else:
                y = F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask, is_causal=causal,
                                                   scale=self.scale, enable_gqa=self.n_heads != self.n_kv)
            if len(segments) == 1 and e - a == rows:  # the rows alone, no padding
                return y[0].transpose(0, 1).reshape(rows, -1)
            if out is None:
                out = q.new_zeros(rows, self.n_heads, self.head_dim)
            out[a:e] = y[0].transpose(0, 1)
        return out.view(rows, -1)

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


def _invariant_here(dtype: torch.dtype, device: torch.device, head_dim: int) -> bool:
    """Whether the attention is the batch-invariant kernel by default: bf16 on the CPU (where SDPA
    is not exact; docs/design.md "Exact bf16"), and float32 on the CPU where the compiled float32
    attention takes the head dim (runtime/layer_f32.c; SDPA's float32 rows move by ~1e-7 with the
    rows beside them, a greedy tie could flip)."""
    if device.type != "cpu":
        return False
    if dtype == torch.bfloat16:
        return True
    return dtype == torch.float32 and native_layer.f32_attention_fits(head_dim)


def _layer_windows(config, n_layers: int) -> list[int | None]:
    """Sliding window of each layer (None: full attention)."""
    window = getattr(config, "sliding_window", None)
    if config.model_type in ("qwen2", "qwen3") and not getattr(config, "use_sliding_window", False):
        window = None
    types = getattr(config, "layer_types", None)
    if types is None:
        return [window] * n_layers
    return [window if t == "sliding_attention" else None for t in types[:n_layers]]
