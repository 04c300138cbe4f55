from __future__ import annotations

from typing import Literal, Sequence

from .tree import DraftTree


def merge_trees(
    trees: Sequence[DraftTree],
    mode: Literal["sum", "equal"] = "sum",
    budget: int | None = None,
) -> DraftTree:
    """Trie union under the shared root keyed on the full token path. drafter_names of the
    result = concatenation of the inputs' names (must be distinct); proposers are remapped.
    `equal`: rerank the union down to `budget` draft nodes (ancestor-closed); a cut that looks at
    scores drops the proposal table so verification falls back to the match rule."""
    raise NotImplementedError


def cut_to_budget(tree: DraftTree, budget: int) -> DraftTree:
    """Keep the best `budget` draft nodes by score (ancestor-closed, root always kept)."""
    raise NotImplementedError
