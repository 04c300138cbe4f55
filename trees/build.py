"""Building one drafter's tree from a step function.

`step_fn(tree, frontier) -> logits [F, V]`: given the partial tree built so far and the int64
indices of the F frontier nodes to expand (all already in `tree`), return the drafter's next-token
logits (raw, float) at each of them. The drafter owns its model state (e.g. a KV cache of the
nodes it has been fed); every frontier node is fed exactly once, parents before children.
"""
from __future__ import annotations

from typing import Callable

import torch

from .spec import SamplingSpec, TreeSpec
from .tree import DraftTree

StepFn = Callable[[DraftTree, torch.Tensor], torch.Tensor]


def build_tree(
    root_token: int,
    step_fn: StepFn,
    spec: TreeSpec,
    sampling: SamplingSpec | None = None,
    generator: torch.Generator | None = None,
    drafter_name: str = "draft",
) -> DraftTree:
    """EAGLE-2 dynamic tree (spec.sampled False) or sampled tree (spec.sampled True, children
    drawn without replacement from process_logits(logits, sampling), proposals recorded)."""
    raise NotImplementedError


def build_chain(root_token: int, step_fn: StepFn, depth: int, drafter_name: str = "draft") -> DraftTree:
    """Top-1 chain of `depth` draft nodes."""
    raise NotImplementedError
