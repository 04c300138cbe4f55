"""Composition strategies: how the drafters' proposals become the one tree the target verifies.

A strategy sees the target only through hidden states the engine hands it, and the drafters
only through the Drafter protocol. Each `propose` returns the tree plus the routing choice."""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping

import torch

from drafters.base import Drafter
from trees import DraftTree, SamplingSpec, StepFeedback, TreeSpec

from .target import select_features


@dataclass
class Proposal:
    tree: DraftTree  # what the target verifies
    drafter: str | None = None  # routing choice recorded in the step stats
    proposed: dict[str, DraftTree] = dataclasses.field(default_factory=dict)  # each drafter's own tree
    draft_groups: list[list[str]] | None = None  # drafter names per drafting call (lockstep groups share one)


def match_rule(tree: DraftTree) -> DraftTree:
    """`tree` to be verified by the match rule (its proposal rows dropped). A choice or cut that
    looked at drawn values (scores, entropies or tokens of sampled children) leaves rows that are
    no longer draws from their q, and rejection sampling over them is lossy; the match rule is
    lossless however the children were chosen (docs/design.md "Verification rules")."""
    return tree if tree.proposals is None else dataclasses.replace(tree, proposals=None)


class Strategy(ABC):
    """A composition strategy. The class declares what it takes, so callers (the Composer, eval's
    plan) can tell without trying: `min_drafters`; `takes_drafter` (a `drafter=` option naming
    one drafter: eval runs it once per drafter); `options` (the generate() keywords passed to the
    constructor); `unavailable(drafters, cache)` (why it cannot run with these drafters and the
    Composer's routing assets, e.g. a fitted domain router, or None)."""

    name: str = ""
    min_drafters: int = 0
    takes_drafter: bool = False
    options: tuple[str, ...] = ()

    def __init__(self, drafters: Mapping[str, Drafter]):
        reason = self.unavailable(drafters)
        if reason is not None:
            raise ValueError(reason)
        self.drafters = dict(drafters)

    @classmethod
    def unavailable(cls, drafters: Mapping[str, Drafter], cache: Mapping | None = None) -> str | None:
        """Why this strategy cannot run with `drafters` and the Composer's strategy cache (None: it can)."""
        if len(drafters) < cls.min_drafters:
            return f"strategy {cls.name!r} needs at least {cls.min_drafters} drafter(s), got {len(drafters)}"
        return None

    @classmethod
    def create(cls, drafters: Mapping[str, Drafter], tree, cache: dict, **options) -> "Strategy":
        """Build for one generation. `tree`: the validated TreeOptions; `cache`: a dict owned by
        the Composer where strategies keep state across generations (derived drafters, routing
        statistics); `options`: the generate() keywords named in `options`."""
        return cls(drafters, **options)

    # layers of target hidden states any active drafter reads (union, order kept)
    @property
    def target_layers(self) -> list[int]:
        layers: list[int] = []
        for d in self.active_drafters():
            for i in d.target_layers or ():
                if i not in layers:
                    layers.append(i)
        return layers

    def active_drafters(self) -> list[Drafter]:
        return list(self.drafters.values())

    def start(self, prompt_ids: torch.Tensor, hidden_states) -> None:
        for d in self.active_drafters():
            d.start(prompt_ids, _features(d, hidden_states, slice(None)))

    def advance(self, tokens: torch.Tensor, hidden_states, rows: torch.Tensor) -> None:
        for d in self.active_drafters():
            d.advance(tokens, _features(d, hidden_states, rows))

    @abstractmethod
    def propose(
        self, root: int, tree: TreeSpec, sampling: SamplingSpec, generator: torch.Generator | None
    ) -> Proposal: ...

    def observe(self, feedback: StepFeedback) -> None:
        """Called by the engine after every verification (after `advance`) with what it
        computed (trees.StepFeedback). The default forwards it to every active drafter that
        has an `observe(feedback)` method (drafters without one are skipped): the hook for
        drafters that learn online. Strategies that learn from outcomes extend this."""
        for d in self.active_drafters():
            hook = getattr(d, "observe", None)
            if hook is not None:
                hook(feedback)


def _features(drafter: Drafter, hidden_states, rows) -> torch.Tensor | None:
    if not drafter.target_layers:
        return None
    return select_features(hidden_states, drafter.target_layers, rows)


class Autoregressive(Strategy):
    """No drafting: the root alone, one token per target forward. The baseline."""

    name = "autoregressive"

    def active_drafters(self) -> list[Drafter]:
        return []

    def propose(self, root, tree, sampling, generator) -> Proposal:
        return Proposal(DraftTree.root_only(root))


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

    def propose(self, root, tree, sampling, generator) -> Proposal:
        draft = self.drafters[self.chosen].propose(root, tree, sampling, generator)
        return Proposal(draft, self.chosen, {self.chosen: draft}, [[self.chosen]])
