"""The drafter protocol: the only surface the decode engine talks to.

Token bookkeeping (all ids are in the TARGET vocabulary):
- `start(prompt_ids, hidden)`: the target has just prefilled `prompt_ids` (all committed).
  `hidden` holds the target's hidden states for those positions (see `target_layers`), or None
  when `target_layers` is None.
- `propose(root_token, tree, sampling, generator)`: `root_token` is the next token (sampled by
  the target, not yet committed). Return a validated `trees.DraftTree` rooted at it.
- `advance(tokens, hidden)`: `tokens` is the accepted path, root first (root + accepted draft
  tokens); they are now committed. `hidden` are the target's hidden states at those positions.
  The next `propose` gets the bonus token as its root.
- `observe(feedback)`: after every verification (after `advance`), what the engine computed
  (trees.StepFeedback). A no-op unless the drafter learns online (drafters/dvi.py).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import nn

from trees import DraftTree, SamplingSpec, StepFeedback, TreeSpec


class Drafter(ABC):
    #: name used in stats and routing records
    name: str = "draft"
    #: size of the target vocabulary this drafter proposes into (checked against the target)
    vocab_size: int
    #: hidden size of the target it was built for (None: does not read target features)
    target_hidden_size: int | None = None
    #: indices into transformers' `hidden_states` tuple (output_hidden_states=True) whose
    #: states the drafter reads, concatenated on the feature axis; -1 = final normed state.
    #: None = the drafter needs no target features.
    target_layers: Sequence[int] | None = None
    #: drafting costs next to nothing (the suffix drafter): tree="auto" then profiles another
    #: drafter's drafting, whose cost stands for the step's
    almost_free: bool = False

    @abstractmethod
    def start(self, prompt_ids: torch.Tensor, hidden: torch.Tensor | None) -> None: ...

    @abstractmethod
    def propose(
        self,
        root_token: int,
        tree: TreeSpec,
        sampling: SamplingSpec,
        generator: torch.Generator | None = None,
    ) -> DraftTree: ...

    @abstractmethod
    def advance(self, tokens: torch.Tensor, hidden: torch.Tensor | None) -> None: ...

    def observe(self, feedback: StepFeedback) -> None:
        """The hook for drafters that learn online from each verification; the default ignores it."""

    def architecture_key(self) -> tuple:
        """Drafters with equal keys can be weight-averaged and batch-drafted together."""
        return (type(self).__name__,)

    def weight_module(self) -> nn.Module:
        """The module whose weights define this drafter (what `averaged` averages)."""
        module = getattr(self, "model", None)
        if not isinstance(module, nn.Module):
            raise ValueError(f"drafter {self.name!r} ({type(self).__name__}) has no weights to average")
        return module
