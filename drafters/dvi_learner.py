"""Online learning from verification outcomes (DVI, arXiv 2510.05421; docs/design.md "DVI: a drafter that learns while it serves").

A drafter that learns online turns each verification into `Example`s: at every node it expanded
and the verifier visited, the inputs of its trainable forward, the target's logits there, the
tokens it proposed below the node and their rewards (1: the target continued with that token).
`OnlineLearner` buffers them and takes one optimizer step every `update_every` verifications:
  - KL phase: forward KL(p || q) to the target's distribution at the visited nodes;
  - RL phase: kl_weight * KL + ce_weight * (-sum r log q / max(1, sum r))
              + pg_weight * (-mean (r - b) log q), b an EMA of the reward (the baseline).
Nothing here touches verification: the learner only ever changes what the drafter proposes.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .losses import forward_kl


class LearnConfig(BaseModel):
    """The online learning schedule and loss weights."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(2e-3, gt=0, description="AdamW learning rate of the adapter")
    weight_decay: float = Field(0.0, ge=0)
    update_every: int = Field(4, ge=1, description="verifications per optimizer step (examples are batched)")
    schedule: Literal["kl_rl", "kl"] = Field("kl_rl", description="KL then RL, or KL only (the ablation)")
    kl_updates: int = Field(30, ge=0, description="optimizer steps in the KL phase before RL starts")
    kl_weight: float = Field(1.0, ge=0, description="weight of the KL term in the RL phase")
    ce_weight: float = Field(1.0, ge=0, description="reward-masked cross-entropy weight (RL phase)")
    pg_weight: float = Field(1.0, ge=0, description="policy-gradient term weight (RL phase)")
    baseline_decay: float = Field(0.9, ge=0, lt=1, description="EMA decay of the reward baseline")
    train_on: Literal["path", "tree"] = Field(
        "path", description="examples at the accepted path's nodes only, or at every verified node the drafter expanded")
    reward_missed: bool = Field(
        False, description="at a path node where no proposed child was the target's next token, add that token as a "
                           "rewarded child (verification says which token it wanted, not only which it refused)")
    max_examples: int = Field(64, ge=1, description="newest examples kept per optimizer step")
    max_grad_norm: float = Field(1.0, gt=0)


@dataclass
class Example:
    """One node the drafter expanded and the verifier scored."""

    features: dict[str, torch.Tensor]  # inputs of the drafter's trainable forward at the node
    target_logits: torch.Tensor  # float [V]: the target's next-token logits there
    children: torch.Tensor  # int64 [C]: tokens the drafter proposed below the node (may be empty)
    rewards: torch.Tensor | None  # float [C]: 1 where the target continued with that token; None off the path


@dataclass
class Batch:
    features: dict[str, torch.Tensor]  # each [B, ...]
    target_logits: torch.Tensor  # [B, V]
    children: torch.Tensor  # int64 [B, C] (0-padded)
    rewards: torch.Tensor  # float [B, C]
    rl_mask: torch.Tensor  # bool [B, C]: a proposed token with a verifier decision


def collate(examples: list[Example]) -> Batch:
    """Stack examples into a batch (as normal tensors: the decode loop records inference tensors)."""
    width = max([int(e.children.numel()) for e in examples] + [1])
    n = len(examples)
    children = torch.zeros(n, width, dtype=torch.long)
    rewards = torch.zeros(n, width)
    rl_mask = torch.zeros(n, width, dtype=torch.bool)
    for i, e in enumerate(examples):
        c = int(e.children.numel())
        children[i, :c] = e.children
        if e.rewards is not None:
            rewards[i, :c] = e.rewards
            rl_mask[i, :c] = True
    features = {k: torch.stack([e.features[k] for e in examples]).clone() for k in examples[0].features}
    target = torch.stack([e.target_logits for e in examples]).float().clone()
    return Batch(features, target, children, rewards, rl_mask)


def dvi_loss(draft_logits: torch.Tensor, batch: Batch, phase: str, baseline: float,
             config: LearnConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The scalar loss of one optimizer step and its parts (floats, for the log)."""
    kl = forward_kl(batch.target_logits, draft_logits).mean()
    if phase == "kl":
        return kl, {"kl": float(kl.detach())}
    logq = torch.log_softmax(draft_logits.float(), dim=-1).gather(1, batch.children)
    mask = batch.rl_mask.to(logq.dtype)
    r = batch.rewards * mask
    ce = -(r * logq).sum() / r.sum().clamp(min=1.0)
    pg = -((r - baseline) * mask * logq).sum() / mask.sum().clamp(min=1.0)
    loss = config.kl_weight * kl + config.ce_weight * ce + config.pg_weight * pg
    return loss, {"kl": float(kl.detach()), "ce": float(ce.detach()), "pg": float(pg.detach())}


class OnlineLearner:
    """Buffers examples and trains `params` through `forward(features) -> draft logits [B, V]`.
    Call `observed(examples)` once per verification (it may run an optimizer step)."""

    def __init__(self, params: list[torch.nn.Parameter], forward: Callable[[dict], torch.Tensor],
                 config: LearnConfig):
        self.params = list(params)
        self.forward = forward
        self.config = config
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.buffer: list[Example] = []
        self.verifications = 0
        self.updates = 0
        self.baseline = 0.0
        self.seconds = 0.0  # wall time spent learning (observe + optimizer steps)
        self.log: deque[dict] = deque(maxlen=1000)  # the latest optimizer steps' records

    @property
    def phase(self) -> str:
        if self.config.schedule == "kl" or self.updates < self.config.kl_updates:
            return "kl"
        return "rl"

    def observed(self, examples: list[Example]) -> None:
        self.buffer.extend(examples)
        self.verifications += 1
        if self.verifications % self.config.update_every == 0 and self.buffer:
            self.update()

    def update(self) -> None:
        t0 = time.perf_counter()
        examples, self.buffer = self.buffer[-self.config.max_examples:], []
        phase = self.phase
        with torch.inference_mode(False), torch.enable_grad():
            batch = collate(examples)
            loss, parts = dvi_loss(self.forward(batch.features), batch, phase, self.baseline, self.config)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
            self.optimizer.step()
        if batch.rl_mask.any():  # the baseline tracks the reward of every proposed, verified token
            mean_reward = float(batch.rewards[batch.rl_mask].mean())
            decay = self.config.baseline_decay if self.updates else 0.0
            self.baseline = decay * self.baseline + (1 - decay) * mean_reward
        self.updates += 1
        self.log.append({"update": self.updates, "phase": phase, "examples": len(examples),
                         "baseline": self.baseline, **parts})
        self.seconds += time.perf_counter() - t0

    def state(self) -> dict:
        return {"verifications": self.verifications, "updates": self.updates, "baseline": self.baseline}

    def pending_tensors(self) -> dict[str, torch.Tensor]:
        """The optimizer's moments and the buffered examples, flat (for safetensors): with `state()`
        and the parameters, everything a reload needs to go on learning exactly as if never stopped."""
        out: dict[str, torch.Tensor] = {}
        for i, p in enumerate(self.params):
            for k, v in self.optimizer.state.get(p, {}).items():
                out[f"optimizer.{i}.{k}"] = torch.as_tensor(v)
        for j, e in enumerate(self.buffer):
            out |= {f"buffer.{j}.features.{k}": v for k, v in e.features.items()}
            out |= {f"buffer.{j}.target_logits": e.target_logits, f"buffer.{j}.children": e.children}
            if e.rewards is not None:
                out[f"buffer.{j}.rewards"] = e.rewards
        return out

    def load_pending_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `pending_tensors` wrote (missing optimizer entries: fresh moments)."""
        for i, p in enumerate(self.params):
            moments = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optimizer.{i}.")}
            bad = [k for k, v in moments.items() if k != "step" and v.shape != p.shape]
            if bad:
                raise ValueError(f"saved optimizer moments {bad} of parameter {i} do not match its shape {tuple(p.shape)}")
            if moments:
                self.optimizer.state[p] = {k: v.clone() for k, v in moments.items()}
        examples: dict[int, dict] = {}
        for key, v in tensors.items():
            if key.startswith("buffer."):
                _, j, field = key.split(".", 2)
                e = examples.setdefault(int(j), {"features": {}, "rewards": None})
                if field.startswith("features."):
                    e["features"][field.split(".", 1)[1]] = v
                else:
                    e[field] = v
        self.buffer = [Example(**examples[j]) for j in sorted(examples)]

    def load_state(self, state: dict) -> None:
        self.verifications = int(state.get("verifications", 0))
        self.updates = int(state.get("updates", 0))
        self.baseline = float(state.get("baseline", 0.0))
