from __future__ import annotations

from dataclasses import dataclass

import torch

from .spec import SamplingSpec
from .tree import DraftTree


@dataclass
class VerifyResult:
    path: torch.Tensor  # int64 node indices from the root (path[0] == 0) to the last accepted node
    tokens: torch.Tensor  # int64 tokens of `path` (tokens[0] is the root token)
    bonus: int  # the extra token emitted at the last accepted node (next step's root)

    @property
    def accepted(self) -> int:
        """Number of accepted draft tokens (root and bonus not counted)."""
        return int(self.path.numel()) - 1


def verify(
    tree: DraftTree,
    target_logits: torch.Tensor,
    sampling: SamplingSpec,
    generator: torch.Generator | None = None,
) -> VerifyResult:
    """target_logits [N, V]: the target's raw logits at every node (row i = next-token logits
    after the path to node i). Greedy, match rule (no proposal table) or recursive rejection
    sampling (proposal table present) per DESIGN.md."""
    raise NotImplementedError
