"""The KL loss of one unroll step through the draft head, a block of rows at a time.

The plain path (unroll_loss.py with any other loss) materialises each step's [N, V] logits,
casts them to float32, takes log-softmaxes, products and row gathers and keeps them for the
backward pass: a dozen passes over N x 3,584 x 4 bytes (180 MB at a chat batch's N = 12,518),
about a quarter of a bf16 step on 2 cores, all of it memory traffic. Here each block of rows
runs the head's matmul, the target's matching block (its logits at the draft ids, recomputed
from the cached states: a 576-wide matmul costs less than storing them), the KL, its gradient
with respect to the logits and the step's metrics while the block is in cache. KL(p || q) is
linear in each row's loss, so the gradient with respect to the logits, (softmax(z) - p) / N,
is known in the forward: it is turned into the head input's gradient block by block and kept
(in the matmul dtype) only for the head weight's gradient, one matmul at the end. The matmuls
run in autocast's dtype where autocast is on, exactly as the plain path's linear would; the
softmaxes in float32. Same loss, gradients and metrics as the plain path up to float rounding
(tests/test_fused_head_loss.py); docs/design.md "Training on the CPU's bf16 units".
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch

from .compiling import eager_on_failure

BLOCK_ELEMENTS = 1 << 22  # float32 logits per block (16 MB): blocks of ~1,000 rows keep the head matmul near its peak
# a block's elementwise work (two log-softmaxes, p, q, the KL, its gradient, argmaxes, alpha) is
# one compiled function on the CPU (torch.compile: a few fused loops over the block instead of a
# dozen eager passes; 5.4 vs 21-26 ms a block of 1,170 x 3,584 on 2 threads): blocks of at least
# COMPILE_MIN_ROWS rows take it (compiling costs ~15 s once a process, so small batches and
# tests stay eager); SPECMUX_COMPILE_LOSS=0 switches it off
COMPILE_MIN_ROWS = 256


class TargetRows(NamedTuple):
    """The target's side at one step's rows."""
    hidden: torch.Tensor  # [N, d] final normed states
    weight: torch.Tensor  # [V, d] the target head's rows of the drafter's vocabulary (all of them without truncation)
    lse: torch.Tensor | None  # [N] float32 log-normaliser over the whole target vocabulary; None: V is all of it
    top: torch.Tensor | None  # [N] argmax over the whole target vocabulary (target ids); None: taken from the blocks


class StepKL(NamedTuple):
    loss: torch.Tensor  # scalar: mean over the rows of KL(p || q), p renormalised over the draft vocabulary
    hits: torch.Tensor  # [N] bool: the drafter's argmax is the target's
    alpha: torch.Tensor  # scalar: mean of sum_v min(p, q) over the sampled rows (p not renormalised); nan if none


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear on x runs in: autocast's where it is on for x's device."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def block_rows(vocab: int) -> int:
    return max(16, BLOCK_ELEMENTS // max(1, vocab))


class _HeadKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, target: TargetRows, draft_ids, alpha_every: int, dtype: torch.dtype, grad: bool):
        n, vocab = x.shape[0], weight.shape[0]
        # needs_input_grad holds under no_grad too: `grad` says whether a graph is being recorded
        want_x, want_w = grad and ctx.needs_input_grad[0], grad and ctx.needs_input_grad[1]
        xc, wc = x.to(dtype), weight.to(dtype)
        th, tw = target.hidden.to(dtype), target.weight.to(dtype)
        kl_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        alpha_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        hits = torch.empty(n, dtype=torch.bool, device=x.device)
        grad_x = torch.empty_like(x) if want_x else None
        grad_z = torch.empty(n, vocab, dtype=dtype, device=x.device) if want_w else None
        step = block_rows(vocab)
        acc = torch.promote_types(dtype, torch.float32)  # softmaxes in float32 at least
        inv_n = torch.tensor(1.0 / max(n, 1), dtype=acc, device=x.device)  # a tensor: a compiled block is not specialised on it
        for a in range(0, n, step):
            b = min(n, a + step)
            # the logits rounded to the matmul dtype first, as autocast's linear; the rest in acc
            z, t = xc[a:b] @ wc.T, th[a:b] @ tw.T
            sampled = torch.arange(a, b, device=x.device) % alpha_every == 0
            lse_all = None if target.lse is None else target.lse[a:b]
            block = block_function(b - a, x.device)
            kl, g, top, t_top, alpha = block(z, t, lse_all, sampled, inv_n, dtype, acc)
            kl_sum += kl
            alpha_sum += alpha
            if want_x:
                grad_x[a:b] = g @ wc
            if want_w:
                grad_z[a:b] = g
            top = draft_ids[top] if draft_ids is not None else top
            hits[a:b] = top == (t_top if target.top is None else target.top[a:b])
        grad_w = (grad_z.T @ xc).to(weight.dtype) if want_w else None
        ctx.save_for_backward(grad_x, grad_w)
        ctx.mark_non_differentiable(hits)
        n_alpha = (n + alpha_every - 1) // alpha_every
        alpha = (alpha_sum / n_alpha).to(acc) if n_alpha else torch.tensor(float("nan"), device=x.device)
        ctx.mark_non_differentiable(alpha)
        return (kl_sum / max(n, 1)).to(acc), hits, alpha

    @staticmethod
    def backward(ctx, grad_loss, _hits, _alpha):
        grad_x, grad_w = ctx.saved_tensors
        return (grad_x * grad_loss if grad_x is not None else None,
                grad_w * grad_loss if grad_w is not None else None, None, None, None, None, None)


def kl_block(z: torch.Tensor, t: torch.Tensor, lse_all: torch.Tensor | None, sampled: torch.Tensor, inv_n: torch.Tensor,
             grad_dtype: torch.dtype, acc: torch.dtype):
    """One block of rows: drafter logits z and the target's t [R, V] (the matmul dtype) ->
    (sum over rows of KL(p || q) float64, the logits' gradient (q - p) * inv_n in grad_dtype,
    the drafter's and the target's argmax, the sum over `sampled` rows of alpha float64). p is
    the target's softmax renormalised over these V ids; alpha takes it unrenormalised where a
    whole-vocabulary normaliser `lse_all` is given (raised to the block's own where rounding
    left it below)."""
    z, t = z.to(acc), t.to(acc)
    lse_z, lse_t = z.logsumexp(-1), t.logsumexp(-1)
    p = torch.exp(t - lse_t[:, None])
    q = torch.exp(z - lse_z[:, None])
    # KL = sum p (log p - log q) = sum p (t - z) - lse_t + lse_z, with sum p = 1
    kl = ((p * (t - z)).sum(-1) - lse_t + lse_z).sum(dtype=torch.float64)
    g = ((q - p) * inv_n).to(grad_dtype)
    lse_a = lse_t if lse_all is None else torch.maximum(lse_all.to(acc), lse_t)
    alpha_rows = torch.minimum(torch.exp(t - lse_a[:, None]), q).sum(-1)
    alpha = torch.where(sampled, alpha_rows, torch.zeros_like(alpha_rows)).sum(dtype=torch.float64)
    return kl, g, z.argmax(-1), t.argmax(-1), alpha


_compiled: dict = {}  # "fn": kl_block compiled, built on first use in this process


def block_function(rows: int, device: torch.device):
    """kl_block compiled (CPU blocks of COMPILE_MIN_ROWS rows or more, unless switched off), else
    kl_block itself. A compiler that fails is reported once and the eager function serves from
    then on (drafters/training/compiling.py)."""
    if device.type != "cpu" or rows < COMPILE_MIN_ROWS or os.environ.get("SPECMUX_COMPILE_LOSS", "1") == "0":
        return kl_block
    if "fn" not in _compiled:
        _compiled["fn"] = eager_on_failure(torch.compile(kl_block, dynamic=True), kl_block,
                                           "the training loss's compiled block", "SPECMUX_COMPILE_LOSS=0")
    return _compiled["fn"]


def head_kl(x: torch.Tensor, weight: torch.Tensor, target: TargetRows, draft_ids: torch.Tensor | None = None,
            alpha_rows: int | None = None) -> StepKL:
    """KL(p || q) of the logits x @ weight.T (x [N, d]: the head's input at one step's rows;
    weight [V, d]) against the target's p at the same rows, with the step's metrics. `draft_ids`
    maps the drafter's argmax to target ids (None: the drafter's vocabulary is the target's);
    `alpha_rows` caps the rows alpha is estimated on (an evenly strided sample)."""
    if x.shape[0] == 0:
        nan = torch.tensor(float("nan"), device=x.device)
        return StepKL((x.sum() + weight.sum()) * 0.0, torch.zeros(0, dtype=torch.bool, device=x.device), nan)
    every = max(1, -(-x.shape[0] // alpha_rows)) if alpha_rows else 1
    dtype = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        return StepKL(*_HeadKL.apply(x, weight, target, draft_ids, every, dtype, torch.is_grad_enabled()))
