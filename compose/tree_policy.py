"""The tree-shape policy: what decides each step's draft tree (depth, top-k, budget), and what it
learns from. Two policies behind one protocol: FixedTree (the user's TreeOptions) and AutoTree
(tree="auto", compose/autotree.py: sized to the machine's costs and the running acceptance).
The engine and the server only call `choose` and `observe`; which policy a generation gets, and
which AutoTree a Composer keeps across generations, is decided here (`tree_policy`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import torch

from trees import DraftTree, TreeSpec

from .autotree import AutoTree
from .costs import machine_profile
from .options import GenerateOptions


@dataclass(frozen=True)
class StepTimes:
    """Seconds one step spent: drafting, the target's verify forward, everything else (packing,
    verification, cache compaction, advancing the drafters)."""

    draft: float
    forward: float
    other: float


class TreePolicy(Protocol):
    def choose(self) -> TreeSpec | None:
        """This step's tree shape (None: verify the root alone, no drafting)."""

    def observe(self, spec: TreeSpec | None, tree: DraftTree, path: torch.Tensor, times: StepTimes) -> None:
        """After a verification: the tree `spec` gave, the accepted path, what the step cost."""


class FixedTree:
    """One tree shape every step (the user's TreeOptions); learns nothing."""

    def __init__(self, spec: TreeSpec):
        self.spec = spec

    def choose(self) -> TreeSpec:
        return self.spec

    def observe(self, spec, tree, path, times) -> None:
        pass


def tree_policy(composer, strategy_name: str, strategy, opts: GenerateOptions,
                strategy_args: Mapping[str, Any]) -> FixedTree | AutoTree:
    """The fixed tree, or (tree="auto") the Composer's AutoTree for the strategy, its options
    (single:math and single:chat learn apart) and drafters, kept in its strategy cache across
    generations so what it learns carries over. A first AutoTree measures the machine."""
    # the profile times one unit's drafting: a network's, when there is one beside a drafter
    # whose drafting is almost free (the suffix drafter), else auto thinks every drafter is free
    units = sorted(strategy.draft_units(), key=lambda u: u.runner.almost_free)
    if not opts.tree.auto or not units:
        return FixedTree(opts.tree.spec())
    cache = composer.strategy_cache
    key = ("autotree", strategy_name, tuple(sorted((k, str(v)) for k, v in strategy_args.items())),
           tuple(sorted(composer.drafters)), opts.tree.merge_budget, opts.tree.sampled, opts.temperature == 0)
    if key not in cache:
        costs = machine_profile(composer.target, units[0])  # measured once per machine, then read
        # drafting costs one profiled unit per network unit (a lockstep group drafts as one)
        network_units = sum(not u.runner.almost_free for u in units)
        cache[key] = AutoTree(costs, width=strategy.tree_width(), sampled=opts.tree.sampled,
                              drafters=[n for u in units for n in u.names], draft_units=network_units)
    return cache[key]
