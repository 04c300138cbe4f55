"""One target forward for several requests at once (continuous batching).

Each request keeps its own KV cache (`runtime.kv.KVCache`, batch 1), positions and additive mask,
exactly as a single-stream decode has them (compose/target.py). What a step shares is everything
that does not look at another position: every request's new rows (a prefill, a packed draft tree,
or one token) are concatenated into one sequence, so the embedding, each layer's projections and
MLP, the final norm and the LM head run ONCE over all of them (one weight read per step, which is
what decoding on a CPU or a GPU pays for). Attention alone runs per request, each request's rows
against its own cache view with its own mask: rows of different requests never see each other,
and no padding is ever computed (the varlen layout vLLM and SGLang use).

Per row the arithmetic is the single-stream decoder's (runtime/decoder.py), by construction: the
same plan runs the layers (runtime/plan.py: the same packed linears, whose padding rows are
computed and dropped, so a row's result is its own; the same norms and rotation), and the same
`Decoder.attend` runs each request's attention (SDPA, or for a bf16 target the batch-invariant
attention of docs/design.md "Exact bf16", which keeps a request's rows bit-identical to its own
forward). A request's output therefore does not depend on what else is
batched with it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from runtime.decoder import Decoder
from runtime.kv import KVCache


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
    segs = [(a, e, s.cache, decoder.attention_inputs(s.positions, s.cache, s.mask))
            for s, a, e in zip(segments, bounds, bounds[1:])]
    plan = decoder.plan()
    # padding rows (no segment's: their attention output is zero, their results are dropped)
    # round the row count up to a few sizes (runtime/prepacked.py bucket): the kernels keep state
    # per distinct shape, and a batch whose size changes every step would otherwise grow the
    # process by megabytes per new size (measured: +500 MiB over 250 sizes on SmolLM2-135M)
    ids, pos = decoder.padded_inputs([s.input_ids for s in segments], [s.positions for s in segments])
    n_layers = decoder.num_layers
    wanted = {n_layers if i == -1 else i for s in segments for i in s.hidden_layers}
    h, captured = plan.run(ids, pos, total, lambda i, q, k, v: decoder.attend(i, q, k, v, segs), wanted)
    for s, n in zip(segments, sizes):
        s.cache.advance(n)

    # the head is the largest matmul of a step: one call over every segment's wanted rows
    rows = [torch.arange(a, b)[s.logits_rows] if s.logits_rows is not None else torch.arange(a, b)
            for s, a, b in zip(segments, bounds, bounds[1:])]
    logits = plan.logits(h[torch.cat(rows).to(h.device)])
    outputs, start = [], 0
    for b, (s, r) in enumerate(zip(segments, rows)):
        a, e = bounds[b], bounds[b + 1]
        hidden = {i: captured[n_layers if i == -1 else i][a:e] for i in s.hidden_layers}
        outputs.append(SegmentOutput(logits[start : start + r.numel()], hidden))
        start += r.numel()
    return outputs
