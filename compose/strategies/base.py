"""What every composition strategy is: how the drafters' trees become the one tree the target
verifies, and what a strategy needs from the Composer, declared rather than guessed from its name.

A strategy sees the target only through hidden states the engine hands it, and the drafters
only through the Drafter protocol. Each `compose_tree` returns the tree plus the routing choice."""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from drafters.base import Drafter
from trees import DraftTree, SamplingSpec, StepFeedback, TreeSpec

from ..lockstep import DraftUnit, draft_units, draft_with
from ..target import drafter_features, layers_read


@dataclass
class ComposedTree:
    """One step's composition: the tree the target verifies and how it came about."""

    tree: DraftTree  # what the target verifies
    drafter: str | None = None  # routing choice recorded in the step stats
    drafter_trees: dict[str, DraftTree] = dataclasses.field(default_factory=dict)  # each drafter's own tree
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
    Composer's routing assets, e.g. a fitted domain router, or None).

    What it needs from the Composer, per generation: `target_layers` (hidden states the target
    must return), `draft_units()` (who drafts: tree="auto" profiles one of them), `tree_width()`
    (how many drafters' trees one verified tree holds: tree="auto" sizes each by it), and
    `routing_log` (the routing choices, recorded in the stats; empty for strategies that do not route)."""

    name: str = ""
    min_drafters: int = 0
    takes_drafter: bool = False
    options: tuple[str, ...] = ()

    def __init__(self, drafters: Mapping[str, Drafter]):
        reason = self.unavailable(drafters)
        if reason is not None:
            raise ValueError(reason)
        self.drafters = dict(drafters)
        self.routing_log: list[str] = []

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

    @property
    def target_layers(self) -> list[int]:
        return layers_read(self.active_drafters())

    def active_drafters(self) -> list[Drafter]:
        return list(self.drafters.values())

    def draft_units(self) -> list[DraftUnit]:
        """The drafting calls a step makes (each a drafter, or a lockstep group of them)."""
        return [DraftUnit([d.name], d) for d in self.active_drafters()]

    def tree_width(self) -> int:
        """How many drafters' trees of one budget a verified tree holds."""
        return 1

    def start(self, prompt_ids: torch.Tensor, hidden_states) -> None:
        for d in self.active_drafters():
            d.start(prompt_ids, drafter_features(d, hidden_states, slice(None)))

    def advance(self, tokens: torch.Tensor, hidden_states, rows: torch.Tensor) -> None:
        for d in self.active_drafters():
            d.advance(tokens, drafter_features(d, hidden_states, rows))

    @abstractmethod
    def compose_tree(
        self, root: int, tree: TreeSpec, sampling: SamplingSpec, generator: torch.Generator | None
    ) -> ComposedTree: ...

    def observe(self, feedback: StepFeedback) -> None:
        """Called by the engine after every verification (after `advance`) with what it
        computed (trees.StepFeedback). The default passes it to every active drafter
        (Drafter.observe: the hook for drafters that learn online). Strategies that learn from
        outcomes extend this."""
        for d in self.active_drafters():
            d.observe(feedback)


class MultiDrafterStrategy(Strategy):
    """Several named drafters. One drafter object registered under several names drafts once
    and is advanced once (its tree is shared by its names). With `lockstep` (strategies where
    every drafter drafts each step), feature drafters of one architecture draft together in one
    batched forward per level (compose/lockstep.py); the others one after another."""

    min_drafters = 2
    lockstep = False

    def __init__(self, drafters: Mapping[str, Drafter]):
        super().__init__(drafters)
        self.units = draft_units(self.drafters, self.lockstep)

    def active_drafters(self) -> list:
        return [u.runner for u in self.units]

    def draft_units(self) -> list[DraftUnit]:
        return self.units

    def draft_all(self, names: Sequence[str], root, tree, sampling, generator) -> dict[str, DraftTree]:
        return draft_with(self.units, names, root, tree, sampling, generator)

    def draft_groups(self, names: Sequence[str]) -> list[list[str]]:
        """The drafting calls serving `names`: one list of names per call (recorded per step)."""
        return [u.names for u in self.units if any(n in names for n in u.names)]
