"""Full-information online routing (HedgeSpec, "Not-a-Bandit"): once the target has verified a
continuation, every drafter that proposed a tree this step can be scored against it with no
extra target call (`signals.tree_gain`). Exponential weights over the drafters pick the leader,
which drafts alone; every so often all drafters draft (a probe round) and the weights are
updated with every drafter's gain. Probe rounds are spaced further apart while one drafter
keeps a clear lead, and brought back to `probe_every` when the lead changes or shrinks."""
from __future__ import annotations

import math
from typing import Mapping, Sequence


class OnlineRouter:
    """Exponential weights w_i ∝ exp(eta · G_i), G_i = the drafter's summed gains over probe
    rounds (accepted tokens it would have had, see `signals.tree_gain`), from `prior` log-weights.
    The leader is the heaviest drafter (ties: the first). `probe_every`: decode steps between
    probe rounds while the leader's weight is below `confident`; above it the interval doubles
    per round up to `max_probe_every`."""

    def __init__(
        self,
        names: Sequence[str],
        eta: float = 1.0,
        probe_every: int = 4,
        max_probe_every: int = 32,
        confident: float = 0.95,
        prior: Mapping[str, float] | None = None,
    ):
        if not names:
            raise ValueError("online routing needs at least one drafter")
        if eta <= 0 or probe_every < 1 or max_probe_every < probe_every or not 0 < confident < 1:
            raise ValueError(
                f"online routing needs eta > 0, 1 <= probe_every <= max_probe_every and 0 < confident < 1; "
                f"got eta={eta}, probe_every={probe_every}, max_probe_every={max_probe_every}, confident={confident}")
        self.names = list(names)
        self.eta, self.probe_every, self.max_probe_every, self.confident = eta, probe_every, max_probe_every, confident
        self.restart(prior)

    def restart(self, prior: Mapping[str, float] | None = None, first_probe: int = 0) -> None:
        """Start a turn from `prior` log-weights (missing drafters: 0); the first probe round
        comes at step `first_probe` (0: the turn's first step, when nothing says who leads)."""
        unknown = set(prior or {}) - set(self.names)
        if unknown:
            raise ValueError(f"prior names unknown drafters {sorted(unknown)}; drafters: {self.names}")
        if first_probe < 0:
            raise ValueError(f"first_probe must be >= 0, got {first_probe}")
        self.log_weights = {n: float((prior or {}).get(n, 0.0)) for n in self.names}
        self.step = 0
        self.interval = self.probe_every
        self.next_probe = first_probe

    def weights(self) -> dict[str, float]:
        top = max(self.log_weights.values())
        w = {n: math.exp(v - top) for n, v in self.log_weights.items()}
        total = sum(w.values())
        return {n: v / total for n, v in w.items()}

    def leader(self) -> str:
        return max(self.names, key=lambda n: (self.log_weights[n], -self.names.index(n)))

    def probing(self) -> bool:
        """Whether this decode step is a probe round (every drafter drafts)."""
        return self.step >= self.next_probe

    def record(self, gains: Mapping[str, float]) -> None:
        """End of a decode step. `gains`: drafter -> gain for the drafters scored this step; the
        weights move only on full-information rounds (every drafter scored)."""
        if set(gains) >= set(self.names):
            before = self.leader()
            for n in self.names:
                self.log_weights[n] += self.eta * gains[n]
            steady = self.leader() == before and self.weights()[before] >= self.confident
            self.interval = min(2 * self.interval, self.max_probe_every) if steady else self.probe_every
            self.next_probe = self.step + self.interval
        self.step += 1
