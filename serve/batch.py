"""One target forward for several requests at once (continuous batching).

Each request keeps its own KV cache (`runtime.kv.KVCache`, batch 1), positions and additive mask,
exactly as a single-stream decode has them (compose/target.py). What a step shares is everything
that does not look at another position: every request's new rows (a prefill, a packed draft tree,
or one token) are concatenated into one sequence, so the embedding, each layer's projections and
MLP, the final norm and the LM head run ONCE over all of them (one weight read per step, which is
what decoding on a CPU or a GPU pays for). Attention alone runs per request, each request's rows
against its own cache view with its own mask: rows of different requests never see each other,
and no padding is ever computed (the varlen layout vLLM and SGLang use).

Per row the arithmetic is the single-stream decoder's (runtime/decoder.py): the same modules,
the same rotary embedding, the same packed linears (whose padding rows are computed and dropped,
so a row's result is its own), the same attention call per request (SDPA, or for a bf16 target
the batch-invariant attention of docs/design.md "Exact bf16", which keeps a request's rows
bit-identical to its own forward). A request's output therefore does not depend on what else is
batched with it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from runtime.decoder import Decoder, _mlp, rotate
from runtime.invariant import invariant_attention, key_blocks
from runtime.kv import KVCache
from runtime.prepacked import bucket, linear


@dataclass
class Segment:
    """One request's rows in a batched forward."""

    input_ids: torch.Tensor  # int64 [n]
    positions: torch.Tensor  # int64 [n]
    cache: KVCache  # the request's own cache; the rows join it
    mask: torch.Tensor | None  # additive [n, cache.length + n] in the model dtype, or None (causal / one row)
    logits_rows: slice | None = None  # rows projected through the head (None: all)
    hidden_layers: Sequence[int] = ()  # transformers' hidden_states indices this request needs


@dataclass
class SegmentOutput:
    logits: torch.Tensor  # float32 [rows asked for, V]
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)  # index -> [n, H]


def batchable(decoder) -> bool:
    """Whether the batched forward below reproduces `decoder`'s arithmetic: the fast decoder does
    (float32, or bf16 with its batch-invariant attention); a decoder for another model family (a
    general path) runs each request's rows through its own forward instead: exact, not batched."""
    return isinstance(decoder, Decoder)


def _alone(decoder, seg: Segment) -> SegmentOutput:
    out = decoder.forward(seg.input_ids, seg.positions, seg.cache, seg.mask, seg.hidden_layers,
                          logits_rows=seg.logits_rows)
    return SegmentOutput(out.logits, out.hidden_states)


@torch.inference_mode()
def forward_segments(decoder: Decoder, segments: Sequence[Segment]) -> list[SegmentOutput]:
    """Run every segment's rows through the model in one pass; each segment's rows are written
    to its own cache (which advances by its row count)."""
    if not segments:
        return []
    if not batchable(decoder):
        return [_alone(decoder, s) for s in segments]
    sizes = [int(s.input_ids.numel()) for s in segments]
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    total = bounds[-1]
    masks = [decoder.attention_inputs(s.positions, s.cache, s.mask) for s in segments]
    model = decoder.model
    body = model.model
    # padding rows (no segment's: their attention output is zero, their results are dropped)
    # round the row count up to a few sizes (runtime/prepacked.py bucket): the kernels keep state
    # per distinct shape, and a batch whose size changes every step would otherwise grow the
    # process by megabytes per new size (measured: +500 MiB over 250 sizes on SmolLM2-135M)
    padded = bucket(total)
    ids = torch.cat([s.input_ids.reshape(-1) for s in segments] + [torch.zeros(padded - total, dtype=torch.long)])
    pos = torch.cat([s.positions.reshape(-1) for s in segments] + [torch.zeros(padded - total, dtype=torch.long)])
    ids, pos = ids.view(1, padded).to(decoder.device), pos.view(1, padded).to(decoder.device)
    h = body.embed_tokens(ids)
    cos, sin = body.rotary_emb(h, pos)

    n_layers = decoder.num_layers
    wanted: dict[int, set[int]] = {}  # layer input -> segments asking for it
    for b, s in enumerate(segments):
        for i in s.hidden_layers:
            wanted.setdefault(n_layers if i == -1 else i, set()).add(b)
    captured: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(body.layers):
        if i in wanted:
            captured[i] = h[0]
        h = h + _attention(decoder, i, layer.self_attn, layer.input_layernorm(h), cos, sin, segments, bounds, masks)
        h = h + _mlp(layer.mlp, layer.post_attention_layernorm(h))
    for s, n in zip(segments, sizes):
        s.cache.advance(n)
    h = body.norm(h)
    if n_layers in wanted:
        captured[n_layers] = h[0]

    # the head is the largest matmul of a step: one call over every segment's wanted rows
    rows = [torch.arange(a, b)[s.logits_rows] if s.logits_rows is not None else torch.arange(a, b)
            for s, a, b in zip(segments, bounds, bounds[1:])]
    logits = linear(model.lm_head, h[:, torch.cat(rows).to(h.device)])[0].float()
    outputs, start = [], 0
    for b, (s, r) in enumerate(zip(segments, rows)):
        a, e = bounds[b], bounds[b + 1]
        hidden = {i: captured[n_layers if i == -1 else i][a:e] for i in s.hidden_layers}
        outputs.append(SegmentOutput(logits[start : start + r.numel()], hidden))
        start += r.numel()
    return outputs


def _attention(decoder: Decoder, i: int, attn, x, cos, sin, segments: Sequence[Segment], bounds: list[int],
               masks: list) -> torch.Tensor:
    """The decoder's grouped-query attention with the projections over all rows and SDPA per
    segment against its own cache."""
    total = x.shape[1]
    hd, nh, nkv = decoder.head_dim, decoder.n_heads, decoder.n_kv
    q = linear(attn.q_proj, x).view(1, total, nh, hd)
    k = linear(attn.k_proj, x).view(1, total, nkv, hd)
    v = linear(attn.v_proj, x).view(1, total, nkv, hd).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # qwen3: RMSNorm over each head
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
    ys = []
    for s, a, e, (mask, causal, windows, blocks) in zip(segments, bounds, bounds[1:], masks):
        keys, values = s.cache.write(i, k[:, :, a:e], v[:, :, a:e])
        windowed = windows.get(decoder.windows[i])
        layer_mask, layer_causal = (windowed, False) if windowed is not None else (mask, causal)
        if blocks is not None:
            ys.append(invariant_attention(q[:, :, a:e], keys, values, None if layer_mask is None else layer_mask[0, 0],
                                          blocks, decoder.scale))
            continue
        ys.append(F.scaled_dot_product_attention(q[:, :, a:e], keys, values, attn_mask=layer_mask,
                                                 is_causal=layer_causal, scale=decoder.scale,
                                                 enable_gqa=nh != nkv))
    pad = total - bounds[-1]
    if pad:
        ys.append(q.new_zeros(1, nh, pad, hd))
    y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=2)
    return linear(attn.o_proj, y.transpose(1, 2).reshape(1, total, -1))

