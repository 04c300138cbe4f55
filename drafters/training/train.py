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
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from tqdm.auto import tqdm

from trees import attention_mask

from runtime import prepacked
from runtime.allocator import keep_freed_memory
from runtime.atomic import recover_folder
from drafters.losses import LOSSES, unroll_weights
from drafters.model import FeatureDrafterModel
from .precision import Precision, autocast
from .compiling import eager_on_failure
from .unroll_loss import chain_acceptance, unroll_loss  # noqa: F401 (chain_acceptance: a public name here)
from .train_state import check_resumable, keep_logged_steps, save_train_state
from drafters.ttt_attention import TTTMask


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
    max_steps: int | None = Field(default=None, ge=1)  # stop after this many optimiser steps (all epochs)
    batch_size: int = Field(default=4, ge=1)
    max_len: int = Field(default=512, ge=4)
    seed: int = 0
    features: Literal["cache", "online"] = "cache"
    feature_dtype: Literal["float32", "bfloat16"] = "float32"
    # matmuls in bf16 (autocast, float32 master weights and losses): "auto" where the device
    # multiplies bf16 natively (CUDA, AMX / AVX512-BF16 CPUs), float32 elsewhere
    precision: Precision = "auto"
    # the unroll's decoder layer through torch.compile (forward and backward as fused loops):
    # "auto" on the CPU in one process for runs of COMPILE_MIN_STEPS+ steps of batch_size x
    # max_len >= COMPILE_MIN_TOKENS (compiling costs about a minute once)
    compile: Literal["auto", "on", "off"] = "auto"
    work_dir: str = "runs/drafter"
    output: str | None = None  # final checkpoint folder (default: work_dir/drafter)
    save_dtype: Literal["float32", "bfloat16"] = "float32"
    checkpoint_every: int = Field(default=200, ge=1)
    name: str | None = None
    # start from this drafter checkpoint's weights (same shape as the recipe's; the optimiser
    # starts fresh): continues a shipped drafter on more data or more epochs
    init_from: str | None = None

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
    return attention_mask(allowed, 0, dtype)[None, None]


class Unroll(nn.Module):
    """The training forward (one module, so DDP sees every parameter): per step, the draft
    logits at the rows where that step is trained, or with `logits=False` the head's operands
    there ((x, weight) with logits = x @ weight.T: the fused loss runs the head itself).
    `compiled`: the decoder layer runs through torch.compile (its norms, rotation, activation
    and casts, forward and backward, as fused loops); a compiler that fails warns once and the
    layer runs eagerly."""

    def __init__(self, model: FeatureDrafterModel, compiled: bool = False):
        super().__init__()
        self.model = model
        # kept out of the module tree: the compiled function shares the layer's parameters and
        # must not add a second copy of them to the state dict
        self.__dict__["layer"] = compiled_layer(model.layers[0]) if compiled else None

    def forward(self, ids, feats, rows, steps: int, logits: bool = True) -> list:
        B, T = ids.shape
        n = T - 1
        x, h, from_target = ids[:, 1:], feats[:, :-1], True
        positions = torch.arange(n, device=ids.device).expand(B, n)
        past, outs = None, []
        for j in range(steps):
            # on the CPU the structured attention (drafters/ttt_attention.py) replaces the dense
            # mask; a GPU keeps SDPA's fused kernels (the structured form holds n x n scores)
            mask = TTTMask(n, j) if ids.device.type == "cpu" else ttt_mask(n, j, self.model.dtype, ids.device)
            out, (k, v) = self.model(x, h, from_target, positions, mask, past, layer=self.layer)
            past = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
            step_rows = rows.clone()
            step_rows[:, :j] = False  # no anchor before position 0
            outs.append(self.model.logits(out[step_rows]) if logits else self.model.head_operands(out[step_rows]))
            h = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)
            from_target = False
        return outs


COMPILE_MIN_STEPS = 200  # compile="auto": runs shorter than this stay eager (compiling costs ~1 min)
COMPILE_MIN_TOKENS = 2048  # ... and so do batches of fewer padded tokens (batch_size x max_len)


def compile_wanted(cfg: TrainConfig, device: torch.device, processes: int, total_steps: int) -> bool:
    """Whether the training unroll compiles its layer (TrainConfig.compile)."""
    if cfg.compile != "auto":
        return cfg.compile == "on"
    return (torch.device(device).type == "cpu" and processes == 1 and total_steps >= COMPILE_MIN_STEPS
            and cfg.batch_size * cfg.max_len >= COMPILE_MIN_TOKENS)


def compiled_layer(layer: nn.Module):
    """layer's forward through torch.compile (dynamic shapes: batches differ in length), the eager
    layer where that fails (drafters/training/compiling.py)."""
    return eager_on_failure(torch.compile(layer, dynamic=True), layer, "the training unroll's compiled layer",
                            "TrainConfig.compile='off'")


def collate(records: list[dict], max_len: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; rows[b, u] marks entries trained (their next token is a response token).
    Records without cached states ("features") give ids only: `add_target_states` fills them."""
    T = min(max_len, max(len(r["input_ids"]) for r in records))
    B = len(records)
    cached = "features" in records[0]
    ids = torch.zeros(B, T, dtype=torch.long)
    lengths = torch.zeros(B, dtype=torch.long)
    rows = torch.zeros(B, T - 1, dtype=torch.bool)
    per_token = {key: name for key, name in PER_TOKEN.items() if key in records[0]} if cached else {}
    arrays = {name: records[0][key].new_zeros(B, T, *records[0][key].shape[1:]) for key, name in per_token.items()}
    for b, r in enumerate(records):
        L = min(T, len(r["input_ids"]))
        lengths[b] = L
        ids[b, :L] = torch.as_tensor(r["input_ids"][:L])
        for key, name in per_token.items():
            arrays[name][b, :L] = r[key][:L]
        lo = max(0, int(r["prompt_len"]) - 2)  # entry u predicts position u + 2 with p at u + 1
        rows[b, lo : L - 1] = True
    return {"ids": ids, "rows": rows, "lengths": lengths, **arrays}


# a cached record's per-token arrays -> their batch names (target_lse / target_top: optional)
PER_TOKEN = {"features": "feats", "last_hidden": "last", "target_lse": "lse", "target_top": "top"}


@torch.no_grad()
def add_target_states(batch: dict, target, layers: list[int]) -> dict:
    """Fill feats / last from one batched target forward (right padding: causal attention keeps
    every real position exact; padded positions are never trained)."""
    ids = batch["ids"]
    attn = (torch.arange(ids.shape[1], device=ids.device)[None] < batch["lengths"][:, None]).long()
    hs = target(input_ids=ids, attention_mask=attn, output_hidden_states=True, use_cache=False).hidden_states
    return batch | {"feats": torch.cat([hs[i] for i in layers], dim=-1), "last": hs[-1]}


# --- the loop -------------------------------------------------------------------------------------
TRAIN_ALPHA_ROWS = 2048  # a step's logged alpha_j: a sample (all rows cost a tenth of a chat step)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        # on the CPU one fused kernel instead of a dozen passes over the moments (7M parameters,
        # one thread: 10 ms vs 48 ms a step); the GPU keeps the default
        fused = {"fused": True} if not torch.cuda.is_available() and all(p.device.type == "cpu" for p in params) else {}
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95), **fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def record_lengths(records) -> list[int] | None:
    """Token count per record, read without computing anything (None for a sequence that would
    have to run the target to produce a record: LiveTargetStates)."""
    plain = getattr(records, "records", records)  # LiveTargetStates keeps its plain records here
    try:
        return [len(plain[i]["input_ids"]) for i in range(len(plain))]
    except (TypeError, KeyError, IndexError):
        return None


def epoch_batches(n_records: int, cfg: TrainConfig, epoch: int, lengths: list[int] | None = None) -> list[list[int]]:
    """Shuffled batches; with `lengths`, each run of 32 batches is sorted by length first and the
    batches are shuffled again: a batch is padded to its longest record, so random batches of the
    suite's chat records (100-1,000 tokens) spent about half of every step on padding."""
    order = list(range(n_records))
    rng = random.Random(cfg.seed * 1000 + epoch)
    rng.shuffle(order)
    if lengths is not None:
        mega = 32 * cfg.batch_size
        order = [i for s in range(0, n_records, mega) for i in sorted(order[s : s + mega], key=lengths.__getitem__)]
    batches = [order[i : i + cfg.batch_size] for i in range(0, n_records, cfg.batch_size)]
    if lengths is not None:
        rng.shuffle(batches)
    return batches


def train_drafter(model: FeatureDrafterModel, head_weight: torch.Tensor, records, cfg: TrainConfig,
                  work_dir: str | Path, log_name: str = "metrics.jsonl", progress: bool = True,
                  target=None, evaluate: Callable[[int], bool] | None = None,
                  eval_every: int | None = None) -> FeatureDrafterModel:
    """Train in place; resumes from work_dir/train_state when present. `records` is a sequence
    of dicts (input_ids, prompt_len, and features + last_hidden from a cache or LiveTargetStates);
    records without features need `target`, run once per batch (the fast path on a GPU).
    `evaluate(step)` runs every `eval_every` steps and at the last one (main process, model in
    eval mode); it returns True to stop early (a learning curve that has flattened). A resumed
    run re-evaluates from its checkpoint on."""
    from accelerate import Accelerator

    keep_freed_memory()  # large temporaries reuse freed memory instead of fresh pages (runtime/allocator.py)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # every process trains its share of the same global batch, so the schedule steps once per
    # step (accelerate's default steps it once per process: N processes decayed N times faster)
    acc = Accelerator(cpu=not torch.cuda.is_available(), step_scheduler_with_optimizer=False)
    torch.manual_seed(cfg.seed)
    model.train()
    optimizer = make_optimizer(model, cfg)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # what a step changes
    lengths = record_lengths(records)
    per_epoch = len(epoch_batches(len(records), cfg, 0, lengths))
    total = min(per_epoch * cfg.epochs, cfg.max_steps or per_epoch * cfg.epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total))
    unroll = Unroll(model, compiled=compile_wanted(cfg, acc.device, acc.num_processes, total))
    unroll, optimizer, schedule = acc.prepare(unroll, optimizer, schedule)
    inner = acc.unwrap_model(unroll).model
    head_weight = head_weight.to(acc.device)
    state_dir = work_dir / "train_state"
    if acc.is_main_process:
        recover_folder(state_dir)  # a checkpoint swap a crash interrupted
    acc.wait_for_everyone()
    done = check_resumable(state_dir, cfg)
    if done:
        acc.load_state(str(state_dir))
    log = None
    if acc.is_main_process:
        keep_logged_steps(work_dir / log_name, done)  # steps after the checkpoint are redone
        log = open(work_dir / log_name, "a")
    bar = tqdm(total=total, initial=done, desc="train drafter", unit="step", disable=not (progress and acc.is_main_process))
    step, stop = 0, False
    for epoch in range(cfg.epochs):
        if stop or step >= total:
            break
        for b, idx in enumerate(epoch_batches(len(records), cfg, epoch, lengths)):
            step += 1
            if step > total:
                break
            if step <= done:
                continue
            mine = idx[acc.process_index :: acc.num_processes] or idx[:1]
            batch = batch_on(acc.device, [records[i] for i in mine], cfg, target)
            with autocast(acc.device, cfg.precision):
                loss, metrics = unroll_loss(unroll, inner, batch, head_weight, cfg, alpha_rows=TRAIN_ALPHA_ROWS)
            acc.backward(loss)
            loss = loss.detach()
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(unroll.parameters(), cfg.grad_clip)
            optimizer.step()
            prepacked.forget(params)  # a fused step leaves version counters alone (runtime/prepacked.py)
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if log is not None:
                rec = {"step": step, "epoch": epoch, "loss": float(loss), "lr": schedule.get_last_lr()[0],
                       "time": time.time(), **metrics}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{float(loss):.3f}", acc0=f"{metrics['acc_0']:.3f}")
            bar.update(1)
            last = step == total
            if evaluate is not None and eval_every and (step % eval_every == 0 or last):
                save_train_state(acc, state_dir, step, cfg)  # a curve point is always resumable
                if acc.is_main_process:
                    inner.eval()
                    stop = bool(evaluate(step))
                    inner.train()
                stop = bool(acc.reduce(torch.tensor([float(stop)], device=acc.device), reduction="sum").item() > 0)
            elif step % cfg.checkpoint_every == 0 or last:
                save_train_state(acc, state_dir, step, cfg)
            if stop:
                break
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


def batch_on(device, records: list[dict], cfg: TrainConfig, target=None) -> dict:
    batch = {k: v.to(device) for k, v in collate(records, cfg.max_len).items()}
    if "feats" not in batch:
        if target is None:
            raise ValueError("records carry no cached target states: pass the target to compute them")
        batch = add_target_states(batch, target, target_layers_of(cfg, target))
    return batch


def target_layers_of(cfg: TrainConfig, target) -> list[int]:
    from drafters.config import default_eagle3_layers  # the drafter's layers, as make_drafter_config picks them

    if cfg.target_layers is not None:
        return list(cfg.target_layers)
    return [-1] if cfg.drafter == "eagle1" else default_eagle3_layers(int(target.config.num_hidden_layers))


@torch.no_grad()
def evaluate_drafter(model: FeatureDrafterModel, head_weight: torch.Tensor, records, cfg: TrainConfig,
                     target=None, steps: int | None = None, batch_size: int | None = None) -> dict:
    """Token-weighted per-step top-1 agreement and alpha, and anchor-weighted greedy chain tau
    (depth `steps`, default the training unroll) over `records`."""
    model.eval()
    unroll = Unroll(model)
    device = head_weight.device
    sums: dict[str, float] = {}
    tokens = anchors = 0
    bs = batch_size or cfg.batch_size
    lengths = record_lengths(records)  # batches of similar lengths: a batch is padded to its longest
    order = sorted(range(len(records)), key=lengths.__getitem__) if lengths else list(range(len(records)))
    for i in range(0, len(records), bs):
        batch = batch_on(device, [records[k] for k in order[i : i + bs]], cfg, target)
        with autocast(device, cfg.precision):
            _, m = unroll_loss(unroll, model, batch, head_weight, cfg, steps)
        for k, v in m.items():
            if k in ("tokens", "chain_anchors") or math.isnan(v):
                continue
            w = m["chain_anchors"] if k == "chain_tau" else m["tokens"]
            sums[k] = sums.get(k, 0.0) + v * w
        tokens += m["tokens"]
        anchors += m["chain_anchors"]
    out = {k: v / (anchors if k == "chain_tau" else tokens) for k, v in sums.items() if (anchors if k == "chain_tau" else tokens)}
    return out | {"tokens": tokens, "chain_anchors": anchors}
