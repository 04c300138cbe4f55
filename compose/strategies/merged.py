"""merged_tree: every drafter drafts, the trees are merged as a trie (trees.merge_trees) and
verified in one target forward (docs/design.md "Composition strategies")."""
from __future__ import annotations

from trees import merge_trees

from .base import ComposedTree, MultiDrafterStrategy


class MergedTree(MultiDrafterStrategy):
    """Every drafter drafts; the trees are merged as a trie and verified in one forward.
    `sum`: every drafter keeps its budget; `equal`: the union is cut to one drafter's budget."""

    name = "merged_tree"
    lockstep = True

    @classmethod
    def create(cls, drafters, tree, cache, **options):
        return cls(drafters, merge_budget=tree.merge_budget, **options)

    def __init__(self, drafters, merge_budget: str = "sum"):
        super().__init__(drafters)
        if merge_budget not in ("sum", "equal"):
            raise ValueError(f"merge_budget must be 'sum' or 'equal', got {merge_budget!r}")
        self.merge_budget = merge_budget

    def tree_width(self) -> int:
        """`sum`: every network drafter's budget. A drafter whose drafting is almost free (the
        suffix drafter) is not counted: it drafts only the nodes its match makes likely (a few,
        often none), so counting it as a full budget made tree="auto" shrink the networks' trees
        for nodes that never came (docs/design.md "The suffix drafter")."""
        if self.merge_budget == "equal":
            return 1
        return max(1, sum(not d.almost_free for d in self.drafters.values()))

    def compose_tree(self, root, tree, sampling, generator) -> ComposedTree:
        trees = self.draft_all(list(self.drafters), root, tree, sampling, generator)
        budget = tree.budget if self.merge_budget == "equal" else None
        merged = merge_trees(list(trees.values()), mode=self.merge_budget, budget=budget)
        return ComposedTree(merged, drafter_trees=trees, draft_groups=self.draft_groups(list(self.drafters)))
