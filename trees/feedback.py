"""What one verification computed, handed back to the strategy and the drafters after each
decode step (online routing and online-learning drafters read it; nothing here changes what
is emitted)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .sampling import process_logits
from .spec import SamplingSpec
from .tree import DraftTree


@dataclass
class StepFeedback:
    """One decode step, after verification.

    tree: the verified tree. path: its accepted node indices, root first (path[0] == 0).
    tokens: their tokens (tokens[0] is the root, already emitted by the previous step).
    bonus: the token emitted after the path (the next step's root).
    logits: the target's raw logits at every node of `tree` [N, V] (row i = next-token logits
    after the path to node i). sampling: how they are processed (`probs`).
    drafter_trees: each drafter's own tree this step, by drafter name (the verified tree may be one
    of them, a merge of them, or a match-rule copy); empty when nothing was drafted.
    hidden_states: the target's hidden states at the tree's nodes [N, H], keyed by the
    transformers hidden_states index of each layer the active drafters read (-1: final normed),
    or None when none reads target features.
    prefix_length: target positions before the root (the root's position)."""

    tree: DraftTree
    path: torch.Tensor
    tokens: torch.Tensor
    bonus: int
    logits: torch.Tensor
    sampling: SamplingSpec
    drafter_trees: dict[str, DraftTree] = field(default_factory=dict)
    hidden_states: dict[int, torch.Tensor] | None = None
    prefix_length: int = 0

    @property
    def accepted(self) -> int:
        """Accepted draft tokens (root and bonus excluded)."""
        return int(self.path.numel()) - 1

    @property
    def continuation(self) -> torch.Tensor:
        """The verified continuation after the root: accepted draft tokens, then the bonus."""
        return torch.cat([self.tokens[1:], torch.tensor([self.bonus], dtype=self.tokens.dtype)])

    def probs(self, nodes: torch.Tensor | None = None) -> torch.Tensor:
        """The target's processed distributions (temperature, top-k, top-p; one-hot argmax when
        greedy) at `nodes` (default: the accepted path) [len(nodes), V], float32."""
        nodes = self.path if nodes is None else nodes
        return process_logits(self.logits[nodes.to(self.logits.device)], self.sampling).cpu()
