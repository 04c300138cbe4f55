"""RepSpec: structural reparameterisation of a drafter's linears.

Training time, around each attention / MLP linear W (with optional bias b):
    y = Post(W(Pre x) + b + sum_k Bypass_k(Pre x))
Pre [in, in] and Post [out, out] start at the identity, the k bypasses [out, in] near zero, so the
wrapped layer starts as the original. Every branch is linear, so `merge()` folds it into one
nn.Linear:  W' = Post (W + sum_k B_k) Pre,  b' = Post b.
Hybrid: adds a non-linear low-rank branch Up(act(Down(x))) that stays at inference (Up starts
at zero); merging folds only the linear part.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RepSpecLinear(nn.Module):
    def __init__(self, main: nn.Linear, branches: int = 2, bypass_std: float = 1e-3):
        super().__init__()
        n_in, n_out = main.in_features, main.out_features
        self.main = main
        self.pre = nn.Parameter(torch.eye(n_in, dtype=main.weight.dtype, device=main.weight.device))
        self.post = nn.Parameter(torch.eye(n_out, dtype=main.weight.dtype, device=main.weight.device))
        self.bypass = nn.ParameterList(
            nn.Parameter(torch.randn_like(main.weight) * bypass_std) for _ in range(branches)
        )

    @property
    def in_features(self) -> int:
        return self.main.in_features

    @property
    def out_features(self) -> int:
        return self.main.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folding_pays(x.numel() // max(1, self.in_features)):
            return self.folded_forward(x)
        return self.branches_forward(x)

    def folding_pays(self, rows: int) -> bool:
        """Folding the branches first costs out x in x (in + out) multiply-adds per call; running
        them costs in^2 + k out in + out^2 more per row than the plain linear. A training batch
        (thousands of rows) makes folding several times cheaper: with a 576 -> 1,536 MLP linear it
        pays from about 420 rows."""
        n_in, n_out = self.in_features, self.out_features
        per_row = n_in * n_in + len(self.bypass) * n_out * n_in + n_out * n_out
        return rows * per_row > n_out * n_in * (n_in + n_out)

    def branches_forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.pre)
        y = self.main(x)
        for b in self.bypass:
            y = y + F.linear(x, b)
        return F.linear(y, self.post)

    def folded_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function (and, by the chain rule, the same gradients) as `branches_forward`,
        through the folded weight."""
        w, bias = self.folded()
        return F.linear(x, w, bias)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Post (W + sum_k B_k) Pre, Post b): the one linear the branches add up to."""
        w = self.main.weight
        for b in self.bypass:
            w = w + b
        bias = self.post @ self.main.bias if self.main.bias is not None else None
        return self.post @ w @ self.pre, bias

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        w, bias = self.folded()
        merged = nn.Linear(self.in_features, self.out_features, bias=bias is not None)
        merged = merged.to(device=w.device, dtype=w.dtype)
        merged.weight.copy_(w)
        if bias is not None:
            merged.bias.copy_(bias)
        return merged


class LowRankResidualLinear(nn.Module):
    """A plain linear plus a non-linear low-rank branch: linear(x) + up(silu(down(x)))."""

    def __init__(self, linear: nn.Linear, rank: int):
        super().__init__()
        self.linear = linear
        self.down = nn.Linear(linear.in_features, rank, bias=False).to(linear.weight)
        self.up = nn.Linear(rank, linear.out_features, bias=False).to(linear.weight)
        nn.init.zeros_(self.up.weight)

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.up(F.silu(self.down(x)))


class HybridRepSpecLinear(nn.Module):
    """RepSpec's linear branches plus a non-linear low-rank branch kept at inference."""

    def __init__(self, main: nn.Linear, branches: int = 2, rank: int = 16, bypass_std: float = 1e-3):
        super().__init__()
        self.rep = RepSpecLinear(main, branches, bypass_std)
        self.down = nn.Linear(main.in_features, rank, bias=False).to(main.weight)
        self.up = nn.Linear(rank, main.out_features, bias=False).to(main.weight)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rep(x) + self.up(F.silu(self.down(x)))

    @torch.no_grad()
    def merge(self) -> LowRankResidualLinear:
        out = LowRankResidualLinear(self.rep.merge(), self.down.out_features)
        out.down.weight.copy_(self.down.weight)
        out.up.weight.copy_(self.up.weight)
        return out


def apply_repspec(model: nn.Module, mode: str = "repspec", branches: int = 2, hybrid_rank: int = 16) -> nn.Module:
    """Wrap every attention / MLP linear of `model` in place (mode "repspec" or "hybrid")."""
    makers = {
        "repspec": lambda lin: RepSpecLinear(lin, branches),
        "hybrid": lambda lin: HybridRepSpecLinear(lin, branches, hybrid_rank),
        "hybrid_merged": lambda lin: LowRankResidualLinear(lin, hybrid_rank),  # a merged hybrid, to load one
    }
    if mode not in makers:
        raise ValueError(f"RepSpec mode must be one of {sorted(makers)}, got {mode!r}")
    for parent, name, linear in _named_linears(model):
        setattr(parent, name, makers[mode](linear))
    return model


def merge_repspec(model: nn.Module) -> nn.Module:
    """Fold every RepSpec wrapper of `model` in place (deployment form)."""
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (RepSpecLinear, HybridRepSpecLinear)):
                setattr(parent, name, child.merge())
    return model


def _named_linears(model: nn.Module):
    found = []
    for _, parent in model.named_modules():
        for name, child in parent.named_children():
            if name in LINEAR_NAMES and type(child) is nn.Linear:
                found.append((parent, name, child))
    return found
