"""Attention of the training-time-test unroll (drafters/training/train.py), without the dense mask.

At unroll step j, query u sees the step-0 keys 0..u-j (causal, shifted by j) and, of each step i
in 1..j, the one key at u-j+i (train.ttt_mask draws it). SDPA with that mask as a dense additive
tensor over all (j+1) n keys does the full n x (j+1) n work and, on the CPU, its flash kernel's
backward was a third of a bf16 training step (8 x 384, one thread). Here the step-0 part is one
masked n x n score matrix and each later step's key is a row-wise dot product, softmaxed
together in float32: the same function as the dense mask, with (j+1)-fold less score work.
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


def ttt_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, step: int) -> torch.Tensor:
    """q [B, H, n, hd]; keys / values [B, H or H_kv, (step + 1) n, hd] (step-0 entries first).
    Returns [B, H, n, hd], what SDPA with ttt_mask(n, step) returns."""
    B, H, n, hd = q.shape
    if keys.shape[1] != H:  # grouped-query attention: every query head reads its group's key head
        keys = keys.repeat_interleave(H // keys.shape[1], dim=1)
        values = values.repeat_interleave(H // values.shape[1], dim=1)
    scale = 1.0 / math.sqrt(hd)
    u = torch.arange(n, device=q.device)
    visible = u[None, :] <= u[:, None] - step  # [query, step-0 key]
    scores = [(q @ keys[:, :, :n].transpose(-1, -2)).float().mul_(scale).masked_fill_(~visible, float("-inf"))]
    shifted = []
    for i in range(1, step + 1):
        k_i = shift_down(keys[:, :, i * n : (i + 1) * n], step - i)  # row u: the key at u - step + i
        shifted.append(shift_down(values[:, :, i * n : (i + 1) * n], step - i))
        s = (q * k_i).sum(-1, keepdim=True).float() * scale
        scores.append(s.masked_fill((u < step - i)[:, None], float("-inf")))  # before position 0
    probs = torch.cat(scores, dim=-1).softmax(-1).to(values.dtype)
    out = probs[..., :n] @ values[:, :, :n]
    for i, v_i in enumerate(shifted, start=1):
        out = out + probs[..., n + i - 1 : n + i] * v_i
    return out
