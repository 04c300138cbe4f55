"""Input checks of the lossless core: non-finite numbers, and the debug mode that turns on the
full O(rows x V) checks of proposal distributions (the test suite enables it).

Debug mode: `debug_checks(True)` or the environment variable SPECMUX_DEBUG_CHECKS=1."""
from __future__ import annotations

import os

import torch

_debug = os.environ.get("SPECMUX_DEBUG_CHECKS", "0") not in ("", "0")


def debug_checks(enabled: bool | None = None) -> bool:
    """Turn the full (costly) checks on or off; return whether they are on."""
    global _debug
    if enabled is not None:
        _debug = bool(enabled)
    return _debug


class NonFiniteLogitsError(ValueError):
    """A model produced NaN or infinite logits; `where` names the forward that did."""


def require_finite_rows(row_values: torch.Tensor, where: str) -> None:
    """`row_values` [R]: one number per logits row that is finite iff the row is usable (its max
    logit, or its entropy): NaN or +inf anywhere, or no finite entry at all, makes it non-finite.
    A NaN row would otherwise become an arbitrary token (argmax / inverse CDF pick an edge)."""
    bad = ~torch.isfinite(row_values)
    if bad.any():
        rows = bad.nonzero().flatten()
        raise NonFiniteLogitsError(
            f"{where} produced non-finite logits (NaN or inf) in {rows.numel()} of {row_values.numel()} "
            f"row(s), first at row {int(rows[0])}: check the model's weights and dtype (overflow)"
        )


def require_finite_logits(logits: torch.Tensor, where: str) -> None:
    """Logits [..., V] (one pass: the row max is NaN, inf or -inf exactly for a bad row)."""
    require_finite_rows(logits.detach().reshape(-1, logits.shape[-1]).amax(-1), where)


def check_proposal_rows(parents: torch.Tensor, tokens: torch.Tensor, proposals, vocab: int | None,
                        values: bool) -> None:
    """Proposal rows of a node table (`parents`, `tokens` [T]): row j must point at a child of
    its parent node (a grandchild would put an unverified token on the path) and its q must
    give the drawn token a positive probability (a zero would accept the row with probability
    1); both O(rows). values=True adds the O(rows x V) checks: every q finite, non-negative,
    summing to 1."""
    p, t = proposals, tokens.numel()
    k = len(p)
    if p.parent.shape != (k,) or p.child.shape != (k,) or p.q.dim() != 2 or p.q.shape[0] != k:
        raise ValueError("proposal table fields have inconsistent shapes")
    if not k:
        return
    if vocab is not None and p.q.shape[1] != vocab:
        raise ValueError(f"proposal q has {p.q.shape[1]} columns, expected vocabulary size {vocab}")
    if (p.parent < 0).any() or (p.parent >= t).any() or (p.child <= 0).any() or (p.child >= t).any():
        raise ValueError("proposal table rows must point at a child of their parent node (a row points outside the tree or at a root)")
    wrong = parents[p.child] != p.parent
    if wrong.any():
        row = int(wrong.nonzero()[0])
        raise ValueError(
            f"proposal row {row} was drawn at node {int(p.parent[row])} but points at node {int(p.child[row])}, "
            "which is not a child of it (rows must point at a child of their parent node)"
        )
    drawn = tokens[p.child]
    if (drawn >= p.q.shape[1]).any():
        raise ValueError("proposal table rows draw token ids outside the vocabulary of q")
    drawn_q = p.q[torch.arange(k), drawn]
    if not (drawn_q > 0).all():  # also catches NaN
        row = int((~(drawn_q > 0)).nonzero()[0])
        raise ValueError(f"proposal row {row} drew a token its q gives probability {float(drawn_q[row])}")
    if values:
        q = p.q.float()
        if not torch.isfinite(q).all() or (q < 0).any():
            raise ValueError("proposal q must be finite and non-negative")
        if not torch.allclose(q.sum(-1), torch.ones(k), atol=1e-4):
            raise ValueError("proposal q rows must sum to 1 (renormalised after earlier draws)")
