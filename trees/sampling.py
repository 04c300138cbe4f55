"""Processing logits into the distribution actually sampled from (shared by plain decoding,
tree verification and sampled drafting)."""
from __future__ import annotations

import torch

from .spec import SamplingSpec


def process_logits(logits: torch.Tensor, sampling: SamplingSpec) -> torch.Tensor:
    """Probabilities [..., V] (float32) after temperature, top-k and top-p.
    Greedy (temperature 0) returns the one-hot of the argmax (first index on ties)."""
    logits = logits.float()
    if sampling.greedy:
        return one_hot_argmax(logits)
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        logits = keep_top_k(logits, sampling.top_k)
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        probs = keep_top_p(probs, sampling.top_p)
    return probs


def one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(logits, dtype=torch.float32)
    return out.scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Mask everything below the k-th largest logit (ties with it are kept, as in HF)."""
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


NUCLEUS_CANDIDATES = 256  # sort only this many first; a full sort of 49k entries costs ~100x more


def keep_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Smallest prefix of the tokens sorted by probability whose mass reaches top_p: a token is
    dropped when the mass ranked strictly before it already reaches top_p (the first is always kept).
    Tries the top NUCLEUS_CANDIDATES first; when their mass reaches top_p every later token is
    dropped anyway, so the result equals the full sort's."""
    m = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    sorted_probs, order = torch.topk(probs, m, dim=-1, sorted=True)
    if m < probs.shape[-1] and not bool((sorted_probs.sum(-1) >= top_p).all()):
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    kept_sorted = sorted_probs * (mass_before < top_p)
    kept_sorted /= kept_sorted.sum(-1, keepdim=True)
    return torch.zeros_like(probs).scatter_(-1, order, kept_sorted)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of `probs` [..., V] -> int64 [...] by inverse CDF (float64 cumsum);
    torch.multinomial is ~40x slower on CPU for a 49k vocabulary."""
    cdf = torch.cumsum(probs.double(), dim=-1)
    u = torch.rand(probs.shape[:-1] + (1,), dtype=torch.float64, device=probs.device, generator=generator)
    u = u * cdf[..., -1:]
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)
