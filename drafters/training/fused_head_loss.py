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

from typing import NamedTuple

import torch

BLOCK_ELEMENTS = 1 << 22  # float32 logits per block (16 MB): blocks of ~1,000 rows keep the head matmul near its peak


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
        for a in range(0, n, step):
            b = min(n, a + step)
            z = (xc[a:b] @ wc.T).to(acc)  # rounded to the matmul dtype first, as autocast's linear
            t = (th[a:b] @ tw.T).to(acc)
            lse_z, lse_t = z.logsumexp(-1), t.logsumexp(-1)
            p = torch.exp(t - lse_t[:, None])
            # KL = sum p (log p - log q) = sum p (t - z) - lse_t + lse_z, with sum p = 1
            kl_sum += (torch.linalg.vecdot(p, t - z) - lse_t + lse_z).sum(dtype=torch.float64)
            q = torch.exp(z - lse_z[:, None])
            if want_x or want_w:
                g = ((q - p) * (1.0 / n)).to(dtype)
                if want_x:
                    grad_x[a:b] = g @ wc
                if want_w:
                    grad_z[a:b] = g
            top = z.argmax(-1)
            top = draft_ids[top] if draft_ids is not None else top
            want_top = t.argmax(-1) if target.top is None else target.top[a:b]
            hits[a:b] = top == want_top
            sample = torch.arange(a, b, device=x.device) % alpha_every == 0
            if sample.any():
                # alpha: the target's p restricted to the draft ids, not renormalised; a cached
                # whole-vocabulary normaliser below the block's own (rounding) is raised to it
                lse_all = lse_t[sample] if target.lse is None else torch.maximum(target.lse[a:b][sample].to(acc), lse_t[sample])
                p_kept = torch.exp(t[sample] - lse_all[:, None])
                alpha_sum += torch.minimum(p_kept, q[sample]).sum(dtype=torch.float64)
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
