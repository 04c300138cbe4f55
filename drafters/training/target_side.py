"""The target's side of the distillation loss at a batch's trained rows, without a full-vocabulary
pass per step where the drafter's head is truncated.

With a truncated draft head every loss and metric needs, per trained row, only the target's
logits at the draft ids, its log-normaliser over the whole vocabulary (the mass outside the draft
vocabulary matters to alpha and LK, not to the renormalised KL) and its argmax (the chain metrics).
So the losses get "compact" logits: the draft-id logits plus one column holding the log of the
mass outside, log(sum over v outside the draft ids of exp(l_v)) = lse + log(1 - exp(lse_draft -
lse)). Over those D + 1 columns a softmax is the target's distribution with everything outside
the draft vocabulary pooled into one entry, so the losses (called with draft ids 0..D-1) compute
what they compute from the full logits, to float rounding. The normaliser and argmax come from a
state cache (computed once with the target's states) or, for records without them, from one
chunked full-vocabulary pass. Measured on 2 cores (batch 8 x 384, bf16): the per-step
full-vocabulary work (a 49,152-wide matmul and six log-softmaxes over it) was about half the
training step.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

CHUNK_ROWS = 1024  # rows per full-vocabulary block: 1024 x 49,152 float32 logits = 200 MB


class TargetSide(NamedTuple):
    logits: torch.Tensor  # [N, V] full, or [N, D + 1] compact; float32
    loss_ids: slice | None  # the draft_ids argument the losses take for `logits`
    top: torch.Tensor  # [N] the target's argmax over its whole vocabulary (target ids)


@torch.no_grad()
def full_vocab_stats(hidden: torch.Tensor, head_weight: torch.Tensor,
                     chunk_rows: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-normaliser float32 [N], argmax int64 [N]) of the logits hidden @ head_weight.T, in
    blocks of rows so the full [N, V] logits never exist at once. The matmul runs in the head's
    dtype (or autocast's); the normaliser is taken in float32."""
    lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    top = torch.empty(hidden.shape[0], dtype=torch.long, device=hidden.device)
    for a in range(0, hidden.shape[0], chunk_rows):
        logits = F.linear(hidden[a : a + chunk_rows].to(head_weight.dtype), head_weight).float()
        lse[a : a + chunk_rows] = torch.logsumexp(logits, dim=-1)
        top[a : a + chunk_rows] = logits.argmax(-1)
    return lse, top


def outside_logit(draft_logits: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """[N]: log of the target's unnormalised mass outside the draft ids. The draft ids' own
    normaliser can exceed the full one by rounding when the two were computed in different
    precisions; it is clamped, which puts no mass outside (a logit of -inf)."""
    inside = torch.logsumexp(draft_logits, dim=-1)
    gap = (inside - lse).clamp(max=0.0)
    return lse + torch.log(-torch.expm1(gap))


@torch.no_grad()
def target_side(last_rows: torch.Tensor, head_weight: torch.Tensor, draft_ids: torch.Tensor | None,
                lse: torch.Tensor | None = None, top: torch.Tensor | None = None) -> TargetSide:
    """The target's logits at the trained rows' final normed states `last_rows` [N, d], in the
    form the losses take. `lse` / `top` ([N], from a state cache) skip the full-vocabulary pass."""
    if draft_ids is None:
        logits = F.linear(last_rows.to(head_weight.dtype), head_weight).float()
        return TargetSide(logits, None, logits.argmax(-1))
    if lse is None or top is None:
        lse, top = full_vocab_stats(last_rows, head_weight)
    draft = F.linear(last_rows.to(head_weight.dtype), head_weight[draft_ids]).float()
    compact = torch.cat([draft, outside_logit(draft, lse.float())[:, None]], dim=-1)
    # the draft ids are the compact logits' first columns, in order: the losses slice them (a
    # view; gathering copied every row's logits, a fifth of a long-sequence bf16 step)
    return TargetSide(compact, slice(0, draft.shape[-1]), top.long())
