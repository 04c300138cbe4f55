"""Plain settings shared by tree building, sampling and verification (no pydantic here:
trees/ depends on torch only; compose/ validates user options into these)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingSpec:
    """How a distribution is processed before sampling: temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class TreeSpec:
    """Shape of one drafter's tree. `budget` counts draft nodes, the root excluded, so the
    verifier sees budget + 1 tokens. `sampled` draws children without replacement from the
    drafter's processed distribution (verified by rejection sampling) instead of taking top-k.
    `stop_below`: a top-k build stops before `depth` once no frontier node's path probability
    (exp of its score) reaches it, so a drafter stops drafting where it stops being sure (0:
    always `depth` levels). Sampled builds ignore it: a stop that looked at drawn values would
    bias rejection sampling."""

    depth: int = 5
    top_k: int = 8
    budget: int = 32
    sampled: bool = False
    stop_below: float = 0.0

    def __post_init__(self) -> None:
        for name in ("depth", "top_k", "budget"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"tree {name} must be an integer >= 1, got {v!r}")
        if not 0.0 <= self.stop_below < 1.0:
            raise ValueError(f"tree stop_below must be in [0, 1), got {self.stop_below!r}")
