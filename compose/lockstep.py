"""Which drafters draft together: feature drafters of one architecture form a lockstep group
(drafters.FeatureDrafterGroup: one batched forward per tree level, a shared head once); any
other drafter drafts on its own. Used by the strategies where every drafter drafts each step."""
from __future__ import annotations

import dataclasses
import weakref
from typing import Mapping, Sequence

import torch

from drafters import FeatureDrafter, FeatureDrafterGroup
from drafters.base import Drafter
from trees import DraftTree, SamplingSpec, TreeSpec


@dataclasses.dataclass
class DraftUnit:
    """Drafter names served by one runner: a Drafter (one name per registration of the same
    object) or a FeatureDrafterGroup (one name per member)."""

    names: list[str]
    runner: Drafter | FeatureDrafterGroup

    def draft(self, root: int, tree: TreeSpec, sampling: SamplingSpec, generator) -> dict[str, DraftTree]:
        if isinstance(self.runner, FeatureDrafterGroup):
            return dict(zip(self.names, self.runner.draft(root, tree, sampling, generator, self.names)))
        one = self.runner.propose(root, tree, sampling, generator)
        return {name: dataclasses.replace(one, drafter_names=(name,)) for name in self.names}


def draft_units(drafters: Mapping[str, Drafter], lockstep: bool) -> list[DraftUnit]:
    """Group the named drafters into runners (a group, with its stacked weights, is made once
    per set of member objects and reused by later generations)."""
    by_object: dict[int, DraftUnit] = {}
    for name, d in drafters.items():
        by_object.setdefault(id(d), DraftUnit([], d)).names.append(name)
    units = list(by_object.values())
    if not lockstep:
        return units
    kinds: dict[tuple, list[DraftUnit]] = {}
    for u in units:
        if isinstance(u.runner, FeatureDrafter) and len(u.names) == 1:
            kinds.setdefault(u.runner.architecture_key(), []).append(u)
    for same in kinds.values():
        if len(same) < 2:
            continue
        group = _group(tuple(u.runner for u in same))
        units = [u for u in units if u not in same] + [DraftUnit([u.names[0] for u in same], group)]
    return units


_GROUPS: dict[tuple[int, ...], tuple[list[weakref.ref], FeatureDrafterGroup]] = {}


def _group(members: Sequence[FeatureDrafter]) -> FeatureDrafterGroup:
    key = tuple(id(m) for m in members)
    hit = _GROUPS.get(key)
    if hit is None or any(ref() is not m for ref, m in zip(hit[0], members)):
        for k in [k for k, (refs, _) in _GROUPS.items() if any(r() is None for r in refs)]:
            del _GROUPS[k]  # groups whose members are gone
        hit = ([weakref.ref(m) for m in members], FeatureDrafterGroup(members))
        _GROUPS[key] = hit
    return hit[1]


def draft_with(units: Sequence[DraftUnit], names: Sequence[str], root: int, tree: TreeSpec,
               sampling: SamplingSpec, generator: torch.Generator | None) -> dict[str, DraftTree]:
    """Trees of the named drafters, in `names` order (each unit that serves one drafts once)."""
    trees: dict[str, DraftTree] = {}
    for u in units:
        if any(n in names for n in u.names):
            trees.update(u.draft(root, tree, sampling, generator))
    return {n: trees[n] for n in names}
