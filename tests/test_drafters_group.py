"""Lockstep drafting: a FeatureDrafterGroup drafts exactly the trees its members draft alone."""
from __future__ import annotations

import pytest
import torch

from drafter_fixtures import assert_group_drafts_members_trees, target_features, tiny_drafter_model, tiny_target
from drafters import FeatureDrafter, FeatureDrafterGroup
from trees import SamplingSpec, TreeSpec


@pytest.fixture(scope="module")
def target():
    return tiny_target()


def members(target, style="eagle1", head="target", n=3):
    return [FeatureDrafter(tiny_drafter_model(target, style, head=head, seed=10 + i), name=f"d{i}") for i in range(n)]


def assert_same_tree(a, b):
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("style, head", [("eagle1", "target"), ("eagle3", "target"), ("eagle1", "truncated"),
                                         ("eagle1", "lowrank")])
def test_group_trees_equal_members_alone(target, style, head):
    extra = {"head_rank": 16} if head == "lowrank" else {}
    drafters = [FeatureDrafter(tiny_drafter_model(target, style, head=head, seed=10 + i, **extra), name=f"d{i}")
                for i in range(3)]
    assert_group_drafts_members_trees(target, drafters, FeatureDrafterGroup(drafters), seed=5)


def test_group_sampled_trees_are_valid(target):
    group = FeatureDrafterGroup(members(target))
    seq = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(6))
    group.start(seq, target_features(target, seq, group.target_layers))
    trees = group.draft(3, TreeSpec(depth=3, top_k=3, budget=7, sampled=True), SamplingSpec(temperature=0.9),
                        torch.Generator().manual_seed(0), group.names)
    for tree in trees:
        tree.validate(96)
        assert tree.proposals is not None and len(tree.proposals) == len(tree) - 1


def test_group_refuses_mixed_architectures(target):
    mixed = [FeatureDrafter(tiny_drafter_model(target, "eagle1")), FeatureDrafter(tiny_drafter_model(target, "eagle3"))]
    with pytest.raises(ValueError, match="one architecture"):
        FeatureDrafterGroup(mixed)


def test_unequal_frontiers_are_padded_without_changing_any_member(target):
    """Members whose frontiers differ in size (or who finished) are fed in one forward with
    padding rows that no node attends: each member's logits equal its logits alone."""
    from trees import DraftTree
    from trees.build import dense_logits

    drafters = members(target)
    group = FeatureDrafterGroup(drafters)
    seq = torch.randint(0, 96, (10,), generator=torch.Generator().manual_seed(7))
    feats = target_features(target, seq, group.target_layers)
    tree = DraftTree.from_lists([int(seq[9]), 4, 8, 15, 16], [-1, 0, 0, 2, 1])
    levels = {0: [[0], [1, 2], [3, 4]], 1: [[0], [1], [4]], 2: [[0], [2], None]}  # member -> frontiers
    for d in [*drafters, group]:
        d.start(seq[:9], feats[:9])
    alone = {}
    for b, d in enumerate(drafters):
        d.begin_tree(int(seq[9]))
        alone[b] = [dense_logits(d.step(tree, torch.tensor(f))) if f else None for f in levels[b]]
        d.end_tree()
    group.begin_tree(int(seq[9]))
    for level in range(3):
        frontiers = [None if levels[b][level] is None else torch.tensor(levels[b][level]) for b in range(3)]
        outs = group.step_many([tree] * 3, frontiers)
        for b in range(3):
            if frontiers[b] is None:
                assert outs[b] is None
            else:
                torch.testing.assert_close(dense_logits(outs[b]), alone[b][level], atol=1e-4, rtol=1e-4)
    group.end_tree()


@pytest.mark.parametrize("head", ["target", "truncated"])
def test_group_trees_are_bit_identical_to_members_alone(target, head):
    """Scores too, to the bit: every member's rows go through the same kernels alone and together."""
    drafters = members(target, head=head)
    group = FeatureDrafterGroup(drafters)
    seq = torch.randint(0, 96, (30,), generator=torch.Generator().manual_seed(8))
    feats = target_features(target, seq, group.target_layers)
    for d in [*drafters, group]:
        d.start(seq[:20], feats[:20])
    spec = TreeSpec(depth=5, top_k=4, budget=16)
    together = group.draft(int(seq[20]), spec, SamplingSpec(), None, group.names)
    for d, tree in zip(drafters, together):
        alone = d.propose(int(seq[20]), spec, SamplingSpec())
        for field in ("tokens", "parents", "scores", "depths"):
            assert torch.equal(getattr(tree, field), getattr(alone, field)), field


def test_incremental_masks_are_the_tree_ancestor_masks(target, monkeypatch):
    """The masks a group builds level by level (parent's row plus itself, padding rows seeing the
    root alone) are the ancestor-matrix masks over the fed nodes."""
    from drafters import feature
    from trees import DraftTree, ancestor_matrix, attention_mask

    group = FeatureDrafterGroup(members(target))
    seq = torch.randint(0, 96, (10,), generator=torch.Generator().manual_seed(9))
    group.start(seq[:9], target_features(target, seq[:9], group.target_layers))
    tree = DraftTree.from_lists([int(seq[9]), 4, 8, 15, 16, 23, 42], [-1, 0, 0, 2, 1, 3, 3])
    levels = [[[0], [0], [0]], [[1, 2], [2], [1]], [[3, 4], [3], None], [[5, 6], [6], None]]
    seen = []
    real_forward = feature._FeatureDrafting.forward
    monkeypatch.setattr(feature._FeatureDrafting, "forward",
                        lambda self, *a, **kw: seen.append(a[4]) or real_forward(self, *a, **kw))
    group.begin_tree(int(seq[9]))
    fed = [[0], [0], [0]]
    anc = ancestor_matrix(tree.parents, tree.depths)
    for level, frontiers in enumerate(levels):
        group.step_many([tree] * 3, [None if f is None else torch.tensor(f) for f in frontiers])
        if level == 0:
            continue
        width = max(len(f or []) for f in frontiers)
        for b, f in enumerate(frontiers):
            rows = (f or []) + [-1] * (width - len(f or []))
            fed[b] += rows
            cols = torch.tensor(fed[b])
            allowed = anc[torch.tensor(rows).clamp(min=0)][:, cols.clamp(min=0)] & (cols >= 0)
            assert torch.equal(seen[-1][b], attention_mask(allowed, group._committed, group.dtype))
    group.end_tree()
