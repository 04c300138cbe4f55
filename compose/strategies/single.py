"""One drafter's tree per step: no drafting (autoregressive, the baseline), one named drafter
(single), or one drafter whose weights are the average of several (averaged)."""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch

from drafters.base import Drafter
from trees import DraftTree

from .base import ComposedTree, Strategy


class Autoregressive(Strategy):
    """No drafting: the root alone, one token per target forward. The baseline."""

    name = "autoregressive"

    def active_drafters(self) -> list[Drafter]:
        return []

    def compose_tree(self, root, tree, sampling, generator) -> ComposedTree:
        return ComposedTree(DraftTree.root_only(root))


class Single(Strategy):
    """One named drafter's tree (`drafter=` may be left out when there is only one)."""

    name = "single"
    min_drafters = 1
    takes_drafter = True
    options = ("drafter",)

    def __init__(self, drafters: Mapping[str, Drafter], drafter: str | None = None):
        super().__init__(drafters)
        if drafter is None:
            if len(self.drafters) != 1:
                raise ValueError(
                    f"strategy 'single' needs `drafter=` naming one of {sorted(self.drafters)}"
                )
            drafter = next(iter(self.drafters))
        if drafter not in self.drafters:
            raise ValueError(f"unknown drafter {drafter!r}; known drafters: {sorted(self.drafters)}")
        self.chosen = drafter

    def active_drafters(self) -> list[Drafter]:
        return [self.drafters[self.chosen]]

    def compose_tree(self, root, tree, sampling, generator) -> ComposedTree:
        draft = self.drafters[self.chosen].propose(root, tree, sampling, generator)
        return ComposedTree(draft, self.chosen, {self.chosen: draft}, [[self.chosen]])


def average_drafters(drafters: Mapping[str, Drafter], weights: Sequence[float] | None = None) -> Drafter:
    """Weight-space average of drafters of one architecture (uniform or given weights)."""
    names = list(drafters)
    models = [drafters[n] for n in names]
    keys = {n: d.architecture_key() for n, d in zip(names, models)}
    if len(set(keys.values())) != 1:
        raise ValueError(f"averaged needs drafters of one architecture; got {keys}")
    w = torch.tensor(weights if weights is not None else [1.0] * len(models), dtype=torch.float64)
    if w.numel() != len(models) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"averaging weights must be {len(models)} non-negative numbers with a positive sum, got {weights}")
    w = w / w.sum()
    states = [d.weight_module().state_dict() for d in models]
    for n, s in zip(names[1:], states[1:]):
        if s.keys() != states[0].keys() or any(s[k].shape != states[0][k].shape for k in s):
            raise ValueError(f"averaged: drafter {n!r} has different weight names or shapes from {names[0]!r}")
    merged = {}
    for k, first in states[0].items():
        if first.is_floating_point():
            merged[k] = sum(float(wi) * s[k].double() for wi, s in zip(w, states)).to(first.dtype)
        elif all(torch.equal(first, s[k]) for s in states[1:]):
            merged[k] = first
        else:
            raise ValueError(f"averaged: non-float tensor {k!r} differs between drafters (e.g. another draft vocabulary)")
    averaged = copy.deepcopy(models[0])
    averaged.weight_module().load_state_dict(merged)
    averaged.name = "averaged"
    return averaged


class Averaged(Single):
    """One drafter whose weights are the (weighted) average of the given drafters'."""

    name = "averaged"
    min_drafters = 1
    takes_drafter = False
    options = ("weights",)

    @classmethod
    def unavailable(cls, drafters, cache=None):
        keys = {}
        for n, d in drafters.items():
            try:
                keys[n] = d.architecture_key()
            except (AttributeError, ValueError) as e:
                return f"averaged cannot average drafter {n!r}: {e}"
        if len(set(keys.values())) > 1:
            return f"averaged needs drafters of one architecture; got {keys}"
        return super().unavailable(drafters, cache)

    @classmethod
    def create(cls, drafters, tree, cache, **options):
        return cls(drafters, cache=cache, **options)

    def __init__(self, drafters: Mapping[str, Drafter], weights: Sequence[float] | None = None, cache: dict | None = None):
        reason = self.unavailable(drafters)
        if reason is not None:
            raise ValueError(reason)
        key = (tuple((n, id(d)) for n, d in drafters.items()), tuple(weights) if weights is not None else None)
        if cache is not None and key in cache:
            averaged = cache[key]
        else:
            averaged = average_drafters(drafters, weights)
            if cache is not None:
                cache[key] = averaged
        Single.__init__(self, {"averaged": averaged}, "averaged")
