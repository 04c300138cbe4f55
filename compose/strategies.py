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


def match_rule(tree: DraftTree) -> DraftTree:
    """`tree` to be verified by the match rule (its proposal rows dropped). A choice or cut that
    looked at drawn values (scores, entropies or tokens of sampled children) leaves rows that are
    no longer draws from their q, and rejection sampling over them is lossy; the match rule is
    lossless however the children were chosen (docs/design.md "Verify")."""
    return tree if tree.proposals is None else dataclasses.replace(tree, proposals=None)


class Strategy(ABC):
    name: str = ""
    min_drafters: int = 0

    def __init__(self, drafters: Mapping[str, Drafter]):
        if len(drafters) < self.min_drafters:
            raise ValueError(
                f"strategy {self.name!r} needs at least {self.min_drafters} drafter(s), got {len(drafters)}"
            )
        self.drafters = dict(drafters)

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
    """One named drafter's tree."""

    name = "single"
    min_drafters = 1

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
        return Proposal(draft, self.chosen, {self.chosen: draft})
