"""Result and statistics records of one generation (pydantic: eval/ serialises them as-is)."""
from __future__ import annotations

from pydantic import BaseModel, Field


class StepRecord(BaseModel):
    """One verifier forward. `accepted` counts accepted draft tokens (bonus excluded), so the
    step emitted accepted + 1 tokens."""

    accepted: int
    tree_size: int  # nodes fed to the verifier, root included
    drafter: str | None = None  # routing choice for this step (None: autoregressive / merged)
    accepted_by: list[list[str]] = Field(default_factory=list)  # proposers of each accepted draft token
    t_draft: float = 0.0  # seconds: drafter forwards and tree building
    t_verify: float = 0.0  # seconds: pack + verify + cache compaction (non-model overhead)
    t_forward: float = 0.0  # seconds: the target forward


class GenerationStats(BaseModel):
    strategy: str
    steps: list[StepRecord] = Field(default_factory=list)
    prefill_time: float = 0.0
    total_time: float = 0.0
    new_tokens: int = 0
    routing: list[str] = Field(default_factory=list)  # per step (confidence) or per turn (entropy)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def tau(self) -> float:
        """Mean accepted length: tokens emitted per verifier forward, bonus token included."""
        return sum(s.accepted + 1 for s in self.steps) / max(1, len(self.steps))

    @property
    def accept_lengths(self) -> list[int]:
        return [s.accepted for s in self.steps]

    def per_depth_acceptance(self, max_depth: int | None = None) -> dict[str, list[float]]:
        """'unconditional'[d-1] = steps that accepted >= d draft tokens / steps;
        'conditional'[d-1] = the same / steps that accepted >= d-1 (nan when none did)."""
        n = len(self.steps)
        depth = max_depth or max([s.accepted for s in self.steps] + [0])
        reach = [sum(s.accepted >= d for s in self.steps) for d in range(depth + 1)]
        uncond = [reach[d] / n if n else float("nan") for d in range(1, depth + 1)]
        cond = [reach[d] / reach[d - 1] if reach[d - 1] else float("nan") for d in range(1, depth + 1)]
        return {"unconditional": uncond, "conditional": cond}

    def drafter_shares(self) -> dict[str, float]:
        """Share of accepted draft tokens proposed by each drafter (a token proposed by k
        drafters counts for each of them, so shares may sum above 1)."""
        total = sum(len(s.accepted_by) for s in self.steps)
        counts: dict[str, int] = {}
        for s in self.steps:
            for names in s.accepted_by:
                for n in names:
                    counts[n] = counts.get(n, 0) + 1
        return {k: v / total for k, v in sorted(counts.items())} if total else {}

    def phase_times(self) -> dict[str, float]:
        return {
            "prefill": self.prefill_time,
            "draft": sum(s.t_draft for s in self.steps),
            "verify": sum(s.t_verify for s in self.steps),
            "forward": sum(s.t_forward for s in self.steps),
            "total": self.total_time,
        }

    def summary(self) -> dict:
        return {
            "strategy": self.strategy,
            "steps": self.n_steps,
            "new_tokens": self.new_tokens,
            "tau": self.tau,
            "tokens_per_s": self.new_tokens / self.total_time if self.total_time else float("nan"),
            "per_depth": self.per_depth_acceptance(),
            "drafter_shares": self.drafter_shares(),
            "routing": self.routing,
            "times": self.phase_times(),
        }


class GenerationResult(BaseModel):
    text: str
    token_ids: list[int]  # generated tokens only (prompt excluded)
    prompt_ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length"
    stats: GenerationStats
