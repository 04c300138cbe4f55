"""The unroll's loss and metrics: the weighted distillation loss over the training-time-test
steps (drafters/training/train.py `Unroll`), per-step top-1 agreement and alpha, and the greedy
chain acceptance they imply. The KL loss takes the fused, blocked head (fused_head_loss.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from drafters.losses import acceptance_rate, distillation_loss, kl_target, kl_to
from drafters.model import FeatureDrafterModel
from .fused_head_loss import TargetRows, head_kl
from .target_side import full_vocab_stats, target_side

if TYPE_CHECKING:
    from .train import TrainConfig


def unroll_loss(unroll: nn.Module, model: FeatureDrafterModel, batch: dict, head_weight: torch.Tensor,
                cfg: TrainConfig, steps: int | None = None, alpha_rows: int | None = None,
                fused: bool = True) -> tuple[torch.Tensor, dict]:
    """Weighted distillation loss over the unroll steps, plus per-step top-1 agreement (acc_j),
    alpha_j and the greedy chain acceptance: from anchor u a depth-`steps` chain keeps step j's
    token while steps 0..j all match the target's argmax (the unroll feeds step j the true tokens,
    which are the drafted ones exactly while the chain is accepted), so `chain_tau` = 1 + mean
    accepted length is the tau of greedy chain drafting on these sequences. `alpha_rows` caps the
    rows alpha_j is estimated on (an evenly strided sample; a training step's log needs no more).
    The KL loss runs the head and loss a block of rows at a time (fused_head_loss.py) unless
    `fused` is False; the other losses take the whole step's logits."""
    steps = steps or cfg.unroll_steps
    weights = cfg.weights() + [0.0] * max(0, steps - cfg.unroll_steps)
    if fused and cfg.loss == "kl":
        step_losses = _fused_steps(unroll, model, batch, head_weight, steps, alpha_rows)
    else:
        step_losses = _plain_steps(unroll, model, batch, head_weight, cfg, steps, weights, alpha_rows)
    rows = batch["rows"]
    loss, metrics, correct = 0.0, {}, []
    for j, (w, (step_loss, keep, hit, alpha)) in enumerate(zip(weights, step_losses)):
        if w:
            loss = loss + w * step_loss
        correct.append(torch.zeros_like(rows).masked_scatter_(keep, hit))
        metrics[f"acc_{j}"] = float(hit.float().mean()) if hit.numel() else float("nan")
        metrics[f"alpha_{j}"] = float(alpha)
    metrics |= chain_acceptance(correct, rows)
    metrics["tokens"] = int(rows.sum())
    return loss, metrics


def _step_rows(rows: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep [B, n]: step j's rows, at: their indices among the trained rows)."""
    keep = rows.clone()
    keep[:, :j] = False
    return keep, keep[rows].nonzero().squeeze(1)


def _cached_stats(batch: dict, rows: torch.Tensor) -> list[torch.Tensor | None]:
    """The target's whole-vocabulary normaliser and argmax at the trained rows, where cached."""
    return [batch[k][:, 1:][rows] if k in batch else None for k in ("lse", "top")]


def _fused_steps(unroll, model, batch, head_weight, steps, alpha_rows):
    """Per step (KL mean over its rows, keep, hits, alpha) through fused_head_loss.head_kl."""
    rows = batch["rows"]
    draft_ids = model.head.draft_ids if model.config.head == "truncated" else None
    last = batch["last"][:, 1:][rows]
    if draft_ids is None:  # the blocks hold the whole vocabulary: normaliser and argmax come from them
        t_weight, lse, top = head_weight, None, None
    else:
        t_weight, (lse, top) = head_weight[draft_ids], _cached_stats(batch, rows)
        if lse is None or top is None:
            lse, top = full_vocab_stats(last, head_weight)
    out = []
    for j, (x, w) in enumerate(unroll(batch["ids"], batch["feats"].to(model.dtype), rows, steps, logits=False)):
        keep, at = _step_rows(rows, j)
        target = TargetRows(last[at], t_weight, None if lse is None else lse[at], None if top is None else top[at])
        r = head_kl(x, w, target, draft_ids, alpha_rows)
        out.append((r.loss, keep, r.hits, r.alpha))
    return out


def _plain_steps(unroll, model, batch, head_weight, cfg, steps, weights, alpha_rows):
    """Per step (loss, keep, hits, alpha) from the whole step's logits (every loss)."""
    rows = batch["rows"]
    draft_ids = model.head.draft_ids if model.config.head == "truncated" else None
    target_logits, loss_ids, target_top = target_side(batch["last"][:, 1:][rows], head_weight, draft_ids,
                                                      *_cached_stats(batch, rows))
    logits = unroll(batch["ids"], batch["feats"].to(model.dtype), rows, steps)
    # KL: the target's side (renormalised p, its entropy) once for all steps, not once per step
    kl = kl_target(target_logits, loss_ids) if cfg.loss == "kl" and any(weights[:steps]) else None
    out = []
    for j, (w, dl) in enumerate(zip(weights, logits)):
        keep, at = _step_rows(rows, j)
        step_loss = 0.0
        if w and kl is not None:
            step_loss = kl_to(kl.at(at), dl).mean() if at.numel() else dl.sum() * 0.0
        elif w:
            step_loss = distillation_loss(cfg.loss, target_logits[at], dl, loss_ids, cfg.topk, cfg.eta)
        with torch.no_grad():
            dl = dl.detach().float()  # argmax over bf16 is several times slower on the CPU
            top = dl.argmax(-1)
            top = draft_ids[top] if draft_ids is not None else top
            hit = top == target_top[at]
            every = max(1, -(-at.numel() // alpha_rows)) if alpha_rows else 1
            alpha = acceptance_rate(target_logits[at[::every]], dl[::every], loss_ids) if at.numel() else torch.tensor(float("nan"))
        out.append((step_loss, keep, hit, alpha.mean()))
    return out


def chain_acceptance(correct: list[torch.Tensor], rows: torch.Tensor) -> dict:
    """correct[j][b, u]: step j at position u matched. Anchors u whose whole chain lies in trained
    rows; accepted length = number of leading matched steps."""
    steps, n = len(correct), rows.shape[1]
    if n <= steps:
        return {"chain_tau": float("nan"), "chain_anchors": 0}
    span = n - steps + 1
    anchors = torch.stack([rows[:, j : j + span] for j in range(steps)]).all(0)
    alive = torch.ones_like(anchors)
    accepted = torch.zeros(anchors.shape, dtype=torch.float32, device=rows.device)
    for j in range(steps):
        alive = alive & correct[j][:, j : j + span]
        accepted += alive.float()
    count = int(anchors.sum())
    return {"chain_tau": 1.0 + float(accepted[anchors].mean()) if count else float("nan"), "chain_anchors": count}
