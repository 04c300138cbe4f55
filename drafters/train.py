"""Training a feature drafter on cached (or online) target states.

Training-time test (EAGLE-3 / HASS): step 0 reads the target's features; step j reads, at
position u, the drafter's own step-(j-1) output at u-1, and attends to the step-0 entries up to
its anchor u-j plus its own earlier steps on the diagonal (exactly the entries a depth-j draft
node sees at inference). Every step predicts the target's distribution at u+1; step losses
are weighted (default 0.8^j). Runs on CPU or on one or many GPUs through accelerate (launch with
`accelerate launch` or `torchrun`); logs per-step accuracy and alpha to a JSONL file.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from tqdm.auto import tqdm

from .atomic import commit_folder, recover_folder, staging_folder, staging_path, write_json, write_text
from .losses import LOSSES, acceptance_rate, distillation_loss, unroll_weights
from .model import FeatureDrafterModel


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = "smollm2-135m-instruct"
    domain: Literal["math", "chat", "mixed"] = "math"
    mix_ratio: tuple[float, float] = (1.0, 1.0)  # math : chat for the mixed domain
    n_prompts: int = Field(default=200, ge=1)
    max_new_tokens: int = Field(default=128, ge=1)
    regen_batch_size: int = Field(default=8, ge=1)
    drafter: Literal["eagle1", "eagle3"] = "eagle1"
    target_layers: list[int] | None = None
    head: Literal["target", "truncated", "lowrank"] = "target"
    draft_vocab_size: int = Field(default=8192, ge=1)
    head_rank: int | None = None
    loss: Literal["kl", "topk", "lk_alpha", "lk_lambda"] = "kl"
    topk: int = 10
    eta: float = 3.0
    repspec: Literal["off", "repspec", "hybrid"] = "off"
    repspec_branches: int = Field(default=2, ge=0)
    unroll_steps: int = Field(default=1, ge=1, le=7)
    step_weights: list[float] | None = None
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 10
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=4, ge=1)
    max_len: int = Field(default=512, ge=4)
    seed: int = 0
    features: Literal["cache", "online"] = "cache"
    feature_dtype: Literal["float32", "bfloat16"] = "float32"
    work_dir: str = "runs/drafter"
    output: str | None = None  # final checkpoint folder (default: work_dir/drafter)
    save_dtype: Literal["float32", "bfloat16"] = "float32"
    checkpoint_every: int = Field(default=200, ge=1)
    name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.step_weights is not None and len(self.step_weights) != self.unroll_steps:
            raise ValueError(f"step_weights has {len(self.step_weights)} entries for {self.unroll_steps} unroll steps")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}")
        return self

    def weights(self) -> list[float]:
        return self.step_weights or unroll_weights(self.unroll_steps)


# --- the unroll ---------------------------------------------------------------------------------
def ttt_mask(n: int, step: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Additive [1, 1, n, (step+1) n]: query u of `step` sees step-0 keys <= u-step and the key
    at u-step+i of each step i in 1..step."""
    u = torch.arange(n, device=device)[:, None]
    k = torch.arange(n, device=device)[None, :]
    blocks = [k <= u - step] + [k == u - step + i for i in range(1, step + 1)]
    allowed = torch.cat(blocks, dim=1)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


class Unroll(nn.Module):
    """The training forward (one module, so DDP sees every parameter): draft logits per step
    at the rows where that step is trained."""

    def __init__(self, model: FeatureDrafterModel):
        super().__init__()
        self.model = model

    def forward(self, ids, feats, rows, steps: int) -> list[torch.Tensor]:
        B, T = ids.shape
        n = T - 1
        x, h, from_target = ids[:, 1:], feats[:, :-1], True
        positions = torch.arange(n, device=ids.device).expand(B, n)
        past, out_logits = None, []
        for j in range(steps):
            mask = ttt_mask(n, j, self.model.dtype, ids.device)
            out, (k, v) = self.model(x, h, from_target, positions, mask, past)
            past = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
            step_rows = rows.clone()
            step_rows[:, :j] = False  # no anchor before position 0
            out_logits.append(self.model.logits(out[step_rows]))
            h = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)
            from_target = False
        return out_logits


def collate(records: list[dict], max_len: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; rows[b, u] marks entries trained (their next token is a response token)."""
    T = min(max_len, max(len(r["input_ids"]) for r in records))
    B = len(records)
    F_, d = records[0]["features"].shape[-1], records[0]["last_hidden"].shape[-1]
    ids = torch.zeros(B, T, dtype=torch.long)
    feats = torch.zeros(B, T, F_, dtype=records[0]["features"].dtype)
    last = torch.zeros(B, T, d, dtype=records[0]["last_hidden"].dtype)
    rows = torch.zeros(B, T - 1, dtype=torch.bool)
    for b, r in enumerate(records):
        L = min(T, len(r["input_ids"]))
        ids[b, :L] = torch.as_tensor(r["input_ids"][:L])
        feats[b, :L], last[b, :L] = r["features"][:L], r["last_hidden"][:L]
        lo = max(0, int(r["prompt_len"]) - 2)  # entry u predicts position u + 2 with p at u + 1
        rows[b, lo : L - 1] = True
    return {"ids": ids, "feats": feats, "last": last, "rows": rows}


def unroll_loss(unroll: nn.Module, model: FeatureDrafterModel, batch: dict, head_weight: torch.Tensor,
                cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    rows = batch["rows"]
    with torch.no_grad():
        target_logits = F.linear(batch["last"][:, 1:][rows].to(head_weight.dtype), head_weight).float()
        target_top = target_logits.argmax(-1)
    draft_ids = model.head.draft_ids if model.config.head == "truncated" else None
    logits = unroll(batch["ids"], batch["feats"].to(model.dtype), rows, cfg.unroll_steps)
    loss, metrics = 0.0, {}
    for j, (w, dl) in enumerate(zip(cfg.weights(), logits)):
        keep = rows.clone()
        keep[:, :j] = False
        sel = keep[rows]
        tl = target_logits[sel]
        loss = loss + w * distillation_loss(cfg.loss, tl, dl, draft_ids, cfg.topk, cfg.eta)
        with torch.no_grad():
            top = dl.argmax(-1)
            top = draft_ids[top] if draft_ids is not None else top
            metrics[f"acc_{j}"] = float((top == target_top[sel]).float().mean()) if sel.any() else float("nan")
            metrics[f"alpha_{j}"] = float(acceptance_rate(tl, dl.detach(), draft_ids).mean()) if sel.any() else float("nan")
    metrics["tokens"] = int(rows.sum())
    return loss, metrics


# --- the loop -------------------------------------------------------------------------------------
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def epoch_batches(n_records: int, cfg: TrainConfig, epoch: int) -> list[list[int]]:
    order = list(range(n_records))
    random.Random(cfg.seed * 1000 + epoch).shuffle(order)
    return [order[i : i + cfg.batch_size] for i in range(0, n_records, cfg.batch_size)]


def train_drafter(model: FeatureDrafterModel, head_weight: torch.Tensor, records, cfg: TrainConfig,
                  work_dir: str | Path, log_name: str = "metrics.jsonl", progress: bool = True) -> FeatureDrafterModel:
    """Train in place; resumes from work_dir/train_state when present. `records` is a sequence
    of dicts (input_ids, features, last_hidden, prompt_len): a loaded cache or OnlineStates."""
    from accelerate import Accelerator

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(cfg.seed)
    model.train()
    optimizer = make_optimizer(model, cfg)
    per_epoch = len(epoch_batches(len(records), cfg, 0))
    total = per_epoch * cfg.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total))
    unroll = Unroll(model)
    unroll, optimizer, schedule = acc.prepare(unroll, optimizer, schedule)
    inner = acc.unwrap_model(unroll).model
    head_weight = head_weight.to(acc.device)
    state_dir, done = work_dir / "train_state", 0
    if acc.is_main_process:
        recover_folder(state_dir)  # a checkpoint swap a crash interrupted
    acc.wait_for_everyone()
    if (state_dir / "progress.json").exists():
        acc.load_state(str(state_dir))
        done = json.loads((state_dir / "progress.json").read_text())["global_step"]
    log = None
    if acc.is_main_process:
        keep_logged_steps(work_dir / log_name, done)  # steps after the checkpoint are redone
        log = open(work_dir / log_name, "a")
    bar = tqdm(total=total, initial=done, desc="train drafter", unit="step", disable=not (progress and acc.is_main_process))
    step = 0
    for epoch in range(cfg.epochs):
        for b, idx in enumerate(epoch_batches(len(records), cfg, epoch)):
            step += 1
            if step <= done:
                continue
            mine = idx[acc.process_index :: acc.num_processes] or idx[:1]
            batch = {k: v.to(acc.device) for k, v in collate([records[i] for i in mine], cfg.max_len).items()}
            loss, metrics = unroll_loss(unroll, inner, batch, head_weight, cfg)
            acc.backward(loss)
            loss = loss.detach()
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(unroll.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if log is not None:
                rec = {"step": step, "epoch": epoch, "loss": float(loss), "lr": schedule.get_last_lr()[0],
                       "time": time.time(), **metrics}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{float(loss):.3f}", acc0=f"{metrics['acc_0']:.3f}")
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == total:
                save_train_state(acc, state_dir, step)
    bar.close()
    if log is not None:
        log.close()
    model.eval()
    return model


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def save_train_state(acc, state_dir: Path, step: int) -> None:
    """Accelerate's full state (model, optimiser, scheduler, RNG) staged beside state_dir and
    swapped in as a unit: a crash at any moment leaves the previous or the new state."""
    acc.wait_for_everyone()
    staged = staging_folder(state_dir) if acc.is_main_process else None
    acc.wait_for_everyone()
    staged = staged or staging_path(state_dir)
    acc.save_state(str(staged))
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json(staged / "progress.json", {"global_step": step})
        commit_folder(state_dir, keep_others=False)
    acc.wait_for_everyone()


def keep_logged_steps(log_path: Path, done: int) -> None:
    """Drop log lines of steps after `done` (logged before a crash, about to be redone), so a
    resumed run logs every step once; a torn last line goes too."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= done:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    write_text(log_path, "".join(kept))


@torch.no_grad()
def evaluate_drafter(model: FeatureDrafterModel, head_weight: torch.Tensor, records, cfg: TrainConfig) -> dict:
    """Mean per-step top-1 agreement with the target and alpha over `records` (token-weighted)."""
    model.eval()
    unroll = Unroll(model)
    sums: dict[str, float] = {}
    tokens = 0
    for i in range(0, len(records), cfg.batch_size):
        batch = collate([records[k] for k in range(i, min(i + cfg.batch_size, len(records)))], cfg.max_len)
        _, m = unroll_loss(unroll, model, batch, head_weight, cfg)
        for k, v in m.items():
            if k != "tokens" and not math.isnan(v):
                sums[k] = sums.get(k, 0.0) + v * m["tokens"]
        tokens += m["tokens"]
    return {k: v / tokens for k, v in sums.items()} | {"tokens": tokens}
