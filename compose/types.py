"""Result and statistics records of one generation (pydantic: eval/ serialises them as-is), and
the one definition of the acceptance metrics (docs/design.md "Measuring"), which eval/metrics.py
applies to steps pooled across prompts."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence

from pydantic import BaseModel, Field

NAN = float("nan")


def mean_accepted_length(accepted: Iterable[int]) -> float:
    """τ: tokens emitted per verifier forward (accepted draft tokens + the bonus token); nan
    without forwards."""
    steps = emitted = 0
    for a in accepted:
        steps += 1
        emitted += a + 1
    return emitted / steps if steps else NAN


def per_depth_acceptance(accepted: Sequence[int], max_depth: int | None = None) -> dict[str, list[float]]:
    """'unconditional'[d-1] = forwards that accepted >= d draft tokens / forwards;
    'conditional'[d-1] = the same / forwards that accepted >= d-1 (nan when none did).
    max_depth defaults to the deepest acceptance seen."""
    n = len(accepted)
    depth = max([0, *accepted]) if max_depth is None else max_depth
    reach = [sum(a >= d for a in accepted) for d in range(depth + 1)]  # reach[0] == n
    return {
        "unconditional": [reach[d] / n if n else NAN for d in range(1, depth + 1)],
        "conditional": [reach[d] / reach[d - 1] if reach[d - 1] else NAN for d in range(1, depth + 1)],
    }


def drafter_shares(proposer_counts: Mapping[str, int], accepted_tokens: int) -> dict[str, float]:
    """Share of accepted draft tokens each drafter proposed (a token proposed by k drafters
    counts for each of them, so shares may sum above 1)."""
    if not accepted_tokens:
        return {}
    return {name: proposer_counts[name] / accepted_tokens for name in sorted(proposer_counts)}


class StepRecord(BaseModel):
    """One verifier forward. `accepted` counts accepted draft tokens (bonus excluded), so the
    step emitted accepted + 1 tokens."""

    accepted: int
    tree_size: int  # nodes fed to the verifier, root included
    drafter: str | None = None  # routing choice for this step (None: autoregressive / merged)
    accepted_by: list[list[str]] = Field(default_factory=list)  # proposers of each accepted draft token
    draft_groups: list[list[str]] = Field(default_factory=list)  # drafter names per drafting call: lockstep groups share one
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
        return mean_accepted_length(s.accepted for s in self.steps)

    @property
    def accept_lengths(self) -> list[int]:
        return [s.accepted for s in self.steps]

    def per_depth_acceptance(self, max_depth: int | None = None) -> dict[str, list[float]]:
        return per_depth_acceptance(self.accept_lengths, max_depth)

    def proposer_counts(self) -> dict[str, int]:
        """Accepted draft tokens each drafter proposed."""
        counts = Counter(name for s in self.steps for names in s.accepted_by for name in names)
        return dict(sorted(counts.items()))

    def drafter_shares(self) -> dict[str, float]:
        return drafter_shares(self.proposer_counts(), sum(len(s.accepted_by) for s in self.steps))

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
    finish_reason: str  # "eos" | "stop" | "length" | "interrupted" (the consumer stopped a stream)
    stats: GenerationStats
