"""Exact target law of the first K generated tokens, and a chi-square test of Monte Carlo
samples against it with a stated power (used by the engine and composition law tests)."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import torch
from scipy import stats

from trees import SamplingSpec, process_logits


@torch.no_grad()
def exact_law(model, prompt: list[int], k: int, sampling: SamplingSpec) -> dict[tuple[int, ...], float]:
    """P(x_1..x_k | prompt) under plain sampling from the processed target distribution."""
    vocab = model.config.vocab_size
    law = {(): 1.0}
    for _ in range(k):
        seqs = list(law)
        ids = torch.tensor([prompt + list(s) for s in seqs])
        probs = process_logits(model(ids).logits[:, -1].float(), sampling)
        law = {s + (v,): law[s] * float(probs[i, v]) for i, s in enumerate(seqs) for v in range(vocab)}
    return {s: p for s, p in law.items() if p > 0}


def chi_square_power(n: int, cells: int, tv: float, alpha: float) -> float:
    """Power of the chi-square goodness-of-fit test against any alternative at total variation
    `tv`: by Cauchy-Schwarz the non-centrality is at least n * (2 tv)^2."""
    df = cells - 1
    critical = stats.chi2.ppf(1 - alpha, df)
    return float(stats.ncx2.sf(critical, df, n * (2 * tv) ** 2))


def chi_square_pvalue(samples: list[tuple[int, ...]], law: dict[tuple[int, ...], float], min_expected: float = 5.0):
    """Goodness of fit; cells with expected count < min_expected are pooled into one."""
    n = len(samples)
    counts = Counter(samples)
    unexpected = [s for s in counts if s not in law]
    assert not unexpected, f"sampled sequences the target gives probability 0: {unexpected[:3]}"
    big = [s for s, p in law.items() if p * n >= min_expected]
    small = [s for s in law if s not in big]
    obs = [counts[s] for s in big]
    exp = [law[s] * n for s in big]
    if small:
        obs.append(sum(counts[s] for s in small))
        exp.append(sum(law[s] for s in small) * n)
    exp = np.array(exp) * (n / sum(exp))
    return float(stats.chisquare(obs, exp).pvalue), len(obs)
