"""Processing logits into the distribution actually sampled from (shared by plain decoding,
tree verification and sampled drafting)."""
from __future__ import annotations

import torch

from .spec import SamplingSpec


def process_logits(logits: torch.Tensor, sampling: SamplingSpec) -> torch.Tensor:
    """Probabilities [..., V] (float32) after temperature, top-k and top-p.
    Greedy (temperature 0) returns the one-hot of the argmax (first index on ties)."""
    raise NotImplementedError


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of `probs` [..., V] -> int64 [...]."""
    raise NotImplementedError
