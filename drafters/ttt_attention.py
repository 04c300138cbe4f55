"""Attention of the training-time-test unroll (drafters/training/train.py), without the dense mask.

At unroll step j, query u sees the step-0 keys 0..u-j (causal, shifted by j) and, of each step i
in 1..j, the one key at u-j+i (train.ttt_mask draws it). SDPA with that mask as a dense additive
tensor does the full n x (j+1) n work; materialising the n x n step-0 scores in float32 (the form
this module had before) costs memory traffic that grows with n^2 and was 40% of a chat step at
n = 1,000. Here the step-0 part runs in SDPA's fused causal kernel and the j later keys join its
softmax through one extra key: a "summary" key whose score is the log-sum-exp c_u of the j later
scores of query u and whose value marks its softmax weight in extra value columns. SDPA then
returns (1 - w_u) x the step-0 mixture and w_u, the later keys' share, and the output is
that plus w_u x the softmax mixture of the later values: the same function as the dense mask,
in values and gradients (tests/test_train_bf16.py), with no n x n tensor outside the kernel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class TTTMask:
    """Stands for train.ttt_mask(n, step) where the attention knows its structure."""

    def __init__(self, n: int, step: int):
        self.n, self.step = n, step


def shift_down(x: torch.Tensor, by: int) -> torch.Tensor:
    """x [..., n, d] moved `by` rows later along the sequence (rows 0..by-1 zero)."""
    if by == 0:
        return x
    return F.pad(x, (0, 0, by, 0))[..., : x.shape[-2], :]


def later_keys(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, step: int, scale: float):
    """The one visible key of each unroll step 1..step per query: scores [B, H, n, step] (float32,
    -inf before position 0) and values [B, H, n, step, hd]."""
    n = q.shape[2]
    u = torch.arange(n, device=q.device)
    ks = [shift_down(keys[:, :, i * n : (i + 1) * n], step - i) for i in range(1, step + 1)]  # row u: key u-step+i
    vs = [shift_down(values[:, :, i * n : (i + 1) * n], step - i) for i in range(1, step + 1)]
    scores = torch.stack([(q.unsqueeze(-2) @ k_i.unsqueeze(-1)).float().flatten(-3) * scale for k_i in ks], -1)
    valid = torch.stack([u >= step - i for i in range(1, step + 1)], -1)  # i = step: always
    return scores.masked_fill(~valid, float("-inf")), torch.stack(vs, -2)


def ttt_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, step: int) -> torch.Tensor:
    """q [B, H, n, hd]; keys / values [B, H or H_kv, (step + 1) n, hd] (step-0 entries first).
    Returns [B, H, n, hd], what SDPA with ttt_mask(n, step) returns."""
    B, H, n, hd = q.shape
    gqa = keys.shape[1] != H
    k0, v0 = keys[:, :, :n], values[:, :, :n]
    if step == 0:
        return F.scaled_dot_product_attention(q, k0, v0, is_causal=True, enable_gqa=gqa)
    if gqa:  # the later keys are read per query head
        rep = H // keys.shape[1]
        keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
    scale = 1.0 / math.sqrt(hd)
    scores, later_v = later_keys(q, keys, values, step, scale)
    c = torch.logsumexp(scores, -1) - math.log(step)  # the summary key comes `step` times (below)
    mixture = (scores.softmax(-1).unsqueeze(-2) @ later_v.float()).squeeze(-2)  # float32: one rounding at the end
    # the summary key's score c rides in two extra query columns (high and low part, so a bf16 q
    # carries it to ~16 bits) against a key of ones there; real keys hold zeros there.
    c_hi = (c / scale).to(q.dtype)
    c_lo = (c / scale - c_hi.float()).to(q.dtype)
    qa = torch.cat([q, c_hi[..., None], c_lo[..., None]], -1)
    # SDPA's causal mask is aligned top-left: query u sees augmented keys 0..u, i.e. `step` copies
    # of the summary key (each at score c, together log-sum-exp of the later scores; queries
    # u < step - 1 see fewer, but they see no step-0 key either, so their share is 1 anyway)
    # followed by step-0 keys 0..u-step.
    summary = q.new_zeros(B, k0.shape[1], step, hd + 2)
    summary[..., hd:] = 1
    ka = torch.cat([summary, F.pad(k0[:, :, : n - step], (0, 2))], 2)
    summary_v = q.new_zeros(B, k0.shape[1], step, hd + 2)
    summary_v[..., hd] = 1
    va = torch.cat([summary_v, F.pad(v0[:, :, : n - step], (0, 2))], 2)
    out = F.scaled_dot_product_attention(qa, ka, va, is_causal=True, scale=scale, enable_gqa=gqa)
    return (out[..., :hd].float() + out[..., hd : hd + 1].float() * mixture).to(q.dtype)
