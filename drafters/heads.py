"""Drafter heads: hidden state -> next-token logits.

- TargetHead: the target's LM head, frozen (a non-persistent buffer: never saved, taken from
  the target when the drafter is built or loaded).
- TruncatedHead: logits over a draft vocabulary of the most frequent target tokens. `d2t` holds
  offsets (target_id = i + d2t[i]) and `t2d` a bool over the target vocabulary, exactly as vLLM
  and SGLang read them.
- LowRankHead (SlimSpec): logits = Up(Down(h)) over the full vocabulary, rank ~ hidden / 4.
A truncated head's logits stay over its own vocabulary: drafting pairs them with their target
ids (trees.SparseLogits), so top-k never touches the full vocabulary.
"""
from __future__ import annotations

import torch
from torch import nn

from runtime.prepacked import linear, matmul


class TargetHead(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach(), persistent=False)

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return matmul(h, self.weight)


class TruncatedHead(nn.Module):
    def __init__(self, hidden_size: int, draft_ids: torch.Tensor, target_vocab_size: int,
                 init_weight: torch.Tensor | None = None):
        super().__init__()
        draft_ids = torch.as_tensor(draft_ids, dtype=torch.long)
        d2t, t2d = vocab_maps(draft_ids, target_vocab_size)
        self.proj = nn.Linear(hidden_size, int(draft_ids.numel()), bias=False)
        if init_weight is not None:
            with torch.no_grad():
                self.proj.weight.copy_(init_weight[draft_ids])
        self.register_buffer("d2t", d2t)
        self.register_buffer("t2d", t2d)

    @property
    def draft_ids(self) -> torch.Tensor:
        """Target id of each draft-vocabulary entry (ascending)."""
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return linear(self.proj, h)


def head_operands(head: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, weight) with head(h) == x @ weight.T: the head as its last linear map, for the
    training loss that runs it a block of rows at a time (drafters/training/fused_head_loss.py)."""
    if isinstance(head, TruncatedHead):
        return h, head.proj.weight
    if isinstance(head, TargetHead):
        return h, head.weight
    if isinstance(head, LowRankHead):
        return linear(head.down, h), head.up.weight
    raise TypeError(f"no linear form for a {type(head).__name__} head")


class LowRankHead(nn.Module):
    def __init__(self, hidden_size: int, rank: int, vocab_size: int, init_weight: torch.Tensor | None = None):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, vocab_size, bias=False)
        if init_weight is not None:
            self.init_from(init_weight)

    @torch.no_grad()
    def init_from(self, weight: torch.Tensor) -> None:
        """Best rank-r approximation of a full head (truncated SVD): W ~ (U S) Vh."""
        rank = self.down.out_features
        u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
        root = s[:rank].sqrt()
        self.up.weight.copy_(u[:, :rank] * root)
        self.down.weight.copy_(root[:, None] * vh[:rank])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return linear(self.up, linear(self.down, h))


def vocab_maps(draft_ids: torch.Tensor, target_vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(d2t, t2d) for a draft vocabulary given as target ids."""
    if draft_ids.numel() == 0:
        raise ValueError("the draft vocabulary is empty")
    if not bool((draft_ids[1:] > draft_ids[:-1]).all()):
        raise ValueError("draft vocabulary ids must be strictly increasing (sorted, no duplicates)")
    if int(draft_ids[0]) < 0 or int(draft_ids[-1]) >= target_vocab_size:
        raise ValueError(f"draft vocabulary ids must lie in [0, {target_vocab_size})")
    d2t = draft_ids - torch.arange(draft_ids.numel())
    t2d = torch.zeros(target_vocab_size, dtype=torch.bool)
    t2d[draft_ids] = True
    return d2t, t2d


def most_frequent_tokens(token_ids: torch.Tensor, target_vocab_size: int, draft_vocab_size: int,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    """The `draft_vocab_size` most frequent target ids (ties: lower id first), sorted ascending."""
    if draft_vocab_size > target_vocab_size:
        raise ValueError("draft vocabulary larger than the target vocabulary")
    counts = torch.bincount(token_ids.flatten(), weights=weights, minlength=target_vocab_size)
    order = torch.argsort(-counts.double(), stable=True)
    return order[:draft_vocab_size].sort().values
