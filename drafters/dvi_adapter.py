"""DVI's adapters (drafters/dvi.py): their settings, the layers they add to the early-exit
drafter (LoRA, an adapted linear, the exit norm with its translator), and their files.
A fresh adapter is zero, so a fresh `dvi:K` drafts exactly like `early-exit:K`."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from transformers import PreTrainedModel

from runtime.prepacked import linear

from .checkpoint import WEIGHTS_FILE as DRAFTER_WEIGHTS
from .checkpoint import check_target, fingerprint_matches, read_config, read_meta, read_weights
from .dvi_learner import LearnConfig

ADAPTER_FORMAT = "specmux-dvi-adapter"
CONFIG_FILE, WEIGHTS_FILE, LEARNER_FILE = "config.json", "adapter.safetensors", "learner.safetensors"
DRAFT_IDS = "draft_ids"  # adapter.safetensors: the exit head's vocabulary (target ids), when not the full one


class DVIConfig(BaseModel):
    """Adapter shape (must match to reload an adapter) and the learning settings."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, ge=1, description="LoRA rank")
    alpha: float = Field(32.0, gt=0, description="LoRA scale = alpha / rank")
    exit_adapter: Literal["none", "lora", "translator"] = Field(
        "translator", description="adapt the exit layer too: 'lora' on its MLP down projection, or 'translator', an "
                                  "affine map of its output h -> h + W h + b (tuned-lens style, zero at start)")
    learn: bool = Field(True, description="learn online from verification (False: a frozen adapter)")
    draft_vocab: str = Field(
        "auto", description="the exit head's vocabulary: 'full' (the target's), 'shipped' (the draft vocabulary of "
                            "the drafters shipped for this target in drafters/pretrained), 'auto' (shipped where "
                            "there is one, else full), or a drafter checkpoint folder with a truncated head whose "
                            "draft vocabulary (d2t) to use")
    seed: int = Field(0, description="seed of the LoRA down-projection init")
    learning: LearnConfig = Field(default_factory=LearnConfig)

    def shape(self) -> dict:
        return self.model_dump(include={"rank", "alpha", "exit_adapter"})


class LoRA(nn.Module):
    """delta(x) = scale * up(down(x)); `up` starts at zero, so the delta starts at zero."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float, generator: torch.Generator, dtype):
        super().__init__()
        self.down = nn.Parameter((torch.randn(rank, d_in, generator=generator) / math.sqrt(d_in)).to(dtype))
        self.up = nn.Parameter(torch.zeros(d_out, rank, dtype=dtype))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.down.T) @ self.up.T * self.scale


class AdaptedLinear(nn.Module):
    """A shared frozen linear plus a LoRA delta. While `tapping`, keeps its last input and the
    frozen output (no copies: references to this forward's tensors)."""

    def __init__(self, base: nn.Module, lora: LoRA):
        super().__init__()
        self.base, self.lora = base, lora
        self.tapping = False
        self.tap: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(self.base, x)
        if self.tapping:
            self.tap = (x, y)
        return y + self.lora(x)


class ExitNorm(nn.Module):
    """The target's final norm (shared) in front of the head, after an optional translator
    h -> h + translator(h); keeps its last input h while `tapping`."""

    def __init__(self, norm: nn.Module, translator: nn.Linear | None):
        super().__init__()
        self.norm, self.translator = norm, translator
        self.tapping = False
        self.tap: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.tapping:
            self.tap = h
        return self.norm(h if self.translator is None else h + linear(self.translator, h))


def shallow_clone(module: nn.Module) -> nn.Module:
    """A new module object sharing every parameter and child of `module`, whose own child and
    hook tables can be changed without touching the original (the target)."""
    clone = object.__new__(type(module))
    clone.__dict__ = {k: (v.copy() if isinstance(v, dict) else v) for k, v in module.__dict__.items()}
    return clone


def read_adapter_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    meta = read_meta(path, "a DVI adapter", ADAPTER_FORMAT)
    missing = [k for k in ("exit_layer", "target", "dvi") if k not in meta]
    if missing:
        raise ValueError(f"{path}: missing fields {missing}")
    if isinstance(meta["dvi"], dict):
        meta["dvi"].setdefault("draft_vocab", "full")  # adapters saved before draft vocabularies
    try:
        DVIConfig.model_validate(meta["dvi"])
    except ValidationError as e:
        raise ValueError(f"{path}: invalid adapter config: {e}") from None
    return meta


def resolve_draft_ids(spec: str, target: PreTrainedModel) -> torch.Tensor | None:
    """Target ids of the exit head's vocabulary for `DVIConfig.draft_vocab` (None: the full one)."""
    if spec == "full":
        return None
    if spec in ("shipped", "auto"):
        from .pretrained import PRETRAINED_DIR

        folders = [p.parent for p in sorted(PRETRAINED_DIR.glob("*/*/config.json"))
                   if fingerprint_matches(json.loads(p.read_text()).get("target_fingerprint", ""), target)]
        truncated = [f for f in folders if read_config(f)[0].head == "truncated"]
        if not truncated:
            if spec == "auto":
                return None
            raise ValueError("draft_vocab='shipped': no drafter shipped in drafters/pretrained for this target has a "
                             "draft vocabulary; use 'full' or a drafter checkpoint folder with a truncated head")
        spec = str(truncated[0])  # a suite's drafters share one draft vocabulary
    folder = Path(spec)
    if not folder.is_dir():
        raise ValueError(f"draft_vocab must be 'full', 'shipped', 'auto' or a drafter checkpoint folder; {spec!r} is none")
    cfg, meta = read_config(folder)
    check_target(cfg, meta, target)
    if cfg.head != "truncated":
        raise ValueError(f"draft_vocab {spec!r}: that drafter's head covers the full vocabulary (head {cfg.head!r})")
    d2t = read_weights(folder / DRAFTER_WEIGHTS).get("head.d2t")
    if d2t is None:
        raise ValueError(f"draft_vocab {spec!r}: {DRAFTER_WEIGHTS} has no head.d2t")
    return torch.arange(d2t.numel()) + d2t.long()
