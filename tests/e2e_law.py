"""The end-to-end sampling law through `Composer.generate`, at a stated and asserted power.

The check: a 3-token vocabulary target, a fixed prompt, K = 4 generated tokens. The first is
drawn from the prefill's logits before any draft exists; the law under test is that of the next
three (x2, x3, x4: 27 sequences, drafted, verified and emitted by one to three verify steps), its
exact value computed by enumeration (law.exact_law, then summed over x1). n generations at seeds
0..n-1 are compared with it by a chi-square test at alpha = 1e-3. n is planned from the law: the
smallest n (on a 2% grid) at which the test, on the cells it will actually use (a cell expected
fewer than 5 times is pooled with the other such cells), has power >= 0.99 against every law at
total variation >= `tv` from the target's (law.chi_square_power). Default run: tv = 0.05
(n ~ 6,500); `-m slow`: tv = 0.02 (n ~ 41,000).

Why K = 4 tokens is enough to put later steps under law: a tree 2 deep (fixed trees) emits at most 3
tokens per verify step, and the drafters disagree with the target often, so most generations need
two verify steps and some three; every step after the first starts from a cache compacted to the
accepted path after a rejection. `assert_law` checks that the samples did so (a quarter of the
generations at least took two steps or more, and half the steps at least verified a drafted
tree: tree="auto" may verify the root alone), so a change that made the drafters near perfect
would fail the test instead of weakening it.

When a law test fails: do not move its seeds. Rerun the same case at a larger n (say 10x) and
record both results in the test's docstring; only a larger sample decides between chance and a
bug.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from compose import Composer
from law import chi_square_power, chi_square_pvalue, exact_law
from tiny_models import tiny_model
from trees import SamplingSpec

VOCAB, K = 3, 4
PROMPT = [2, 0, 1]
ALPHA, POWER, MIN_EXPECTED = 1e-3, 0.99, 5.0
DEFAULT_TV, SLOW_TV = 0.05, 0.02
# at T = 1 no cell of (x2, x3, x4) is pooled at n ~ 6,500
TARGET = tiny_model("qwen2", vocab=VOCAB, layers=2, hidden=32, seed=5, init_std=0.2)
# later steps must be under law in a fair share of the generations (see the module doc)
MIN_SHARE_TWO_STEPS, MIN_DRAFTED_SHARE = 0.25, 0.5

_LAWS: dict = {}


def target_law(model, sampling: SamplingSpec) -> dict[tuple[int, ...], float]:
    """The exact law of (x2, ..., xK) after PROMPT."""
    key = (id(model), sampling.temperature, sampling.top_k, sampling.top_p)
    if key not in _LAWS:
        law: dict[tuple[int, ...], float] = {}
        for sequence, p in exact_law(model, PROMPT, K, sampling).items():
            law[sequence[1:]] = law.get(sequence[1:], 0.0) + p
        _LAWS[key] = law
    return _LAWS[key]


def cells_at(law: dict, n: int) -> int:
    big = sum(p * n >= MIN_EXPECTED for p in law.values())
    return big + (big < len(law))


def planned_samples(law: dict, tv: float) -> int:
    """The smallest n (2% steps) with power >= POWER at total variation tv on the cells used at n."""
    n = 1000
    while chi_square_power(n, cells_at(law, n), tv, ALPHA) < POWER:
        n = int(n * 1.02) + 1
    return n


@dataclass
class LawRun:
    n: int
    pvalue: float
    cells: int
    power: float
    steps: Counter = field(default_factory=Counter)  # verify steps per generation -> generations
    drafted_share: float = 0.0  # of all verify steps, those that verified a drafted tree (not the root alone)

    def share_with_steps(self, at_least: int) -> float:
        return sum(c for s, c in self.steps.items() if s >= at_least) / self.n


def sample_law(composer: Composer, strategy: str, sampling: SamplingSpec, tree, tv: float, **options) -> LawRun:
    """n (planned for tv) generations of K tokens at seeds 0..n-1, tested against the target's law."""
    law = target_law(composer.target.model, sampling)
    n = planned_samples(law, tv)
    samples, steps, drafted, total = [], Counter(), 0, 0
    for seed in range(n):
        result = composer.generate(PROMPT, strategy=strategy, max_new_tokens=K, temperature=sampling.temperature,
                                   top_k=sampling.top_k, top_p=sampling.top_p, seed=seed, tree=tree, **options)
        samples.append(tuple(result.token_ids[1:]))
        steps[result.stats.n_steps] += 1
        drafted += sum(s.tree_size > 1 for s in result.stats.steps)
        total += len(result.stats.steps)
    pvalue, cells = chi_square_pvalue(samples, law, MIN_EXPECTED)
    return LawRun(n, pvalue, cells, chi_square_power(n, cells, tv, ALPHA), steps, drafted / max(total, 1))


def assert_law(run: LawRun, tv: float, what: str) -> None:
    print(f"{what}: n={run.n}, {run.cells} cells, power {run.power:.4f} at TV {tv}, p={run.pvalue:.3g}, "
          f"steps per generation {dict(sorted(run.steps.items()))}, drafted steps {run.drafted_share:.0%}")
    assert run.power >= POWER, f"{what}: power {run.power:.4f} < {POWER} at TV {tv} (n={run.n}, {run.cells} cells)"
    assert run.drafted_share >= MIN_DRAFTED_SHARE, f"{what}: only {run.drafted_share:.0%} of the steps drafted"
    assert run.share_with_steps(2) >= MIN_SHARE_TWO_STEPS, f"{what}: too few later steps under law: {run.steps}"
    assert run.pvalue > ALPHA, (f"{what}: the sampling law differs from the target's (p={run.pvalue:.2e}, "
                                f"n={run.n}, {run.cells} cells; power {run.power:.3f} at TV {tv})")
