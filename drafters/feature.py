"""Feature-level drafters at inference: `FeatureDrafter` (one model) and `FeatureDrafterGroup`
(several models of one architecture drafting in lockstep), over one static KV cache.

Bookkeeping (EAGLE terms): drafter entry t is (x_{t+1}, f_t) at position t. `start` and
`advance` only queue committed entries; the next `propose` feeds them together with the root
entry (root, f_last) in one forward, then the tree build feeds each expanded frontier node once
(feature = its parent's output) under a tree mask over the cache. After the build the tree's
KV is dropped (the cache is cut back to the committed length), so the cache only ever holds
entries built from the target's own features.

A group stacks its members' weights (torch.func.stack_module_state) and runs one vmapped
forward per tree level for all of them; a head they share (the target's frozen head) runs once
over the stacked frontiers. Members see the same committed tokens and target features, so the
committed part of the cache has one length for all; frontiers of unequal size are padded with
rows no node ever attends.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from trees import (DraftTree, SamplingSpec, SparseLogits, TreeSpec, ancestor_matrix, attention_mask,
                   build_lockstep, new_build)

from .base import Drafter
from .heads import TargetHead, TruncatedHead
from .kv import KVCache
from .model import FeatureDrafterModel


class _FeatureDrafting:
    """Committed-entry queue, cache and tree bookkeeping for m >= 1 same-architecture models."""

    def __init__(self, models: Sequence[FeatureDrafterModel]):
        self.models = [m.eval() for m in models]
        cfg = self.models[0].config
        self.feature_size = cfg.feature_size
        self.vocab_size = cfg.vocab_size
        self.target_hidden_size = cfg.target_hidden_size
        self.target_layers = list(cfg.target_layers)
        self.reset()

    @property
    def size(self) -> int:
        return len(self.models)

    @property
    def dtype(self) -> torch.dtype:
        return self.models[0].dtype

    @property
    def device(self) -> torch.device:
        return self.models[0].embed_weight.device

    def reset(self) -> None:
        cfg = self.models[0].config
        self.cache = KVCache(1, cfg.num_key_value_heads, cfg.head_dim, self.dtype, self.device, batch=self.size)
        self._queued_ids: list[torch.Tensor] = []  # committed entries not yet fed
        self._queued_features: list[torch.Tensor] = []
        self._last_feature: torch.Tensor | None = None  # target feature pairing with the next root
        self._committed = None

    @torch.inference_mode()
    def start(self, prompt_ids: torch.Tensor, hidden: torch.Tensor | None) -> None:
        ids, feats = _as_rows(prompt_ids, hidden, self.feature_size)
        self.reset()
        self._queue(ids[1:], feats[:-1])
        self._last_feature = feats[-1:]

    def advance(self, tokens: torch.Tensor, hidden: torch.Tensor | None) -> None:
        ids, feats = _as_rows(tokens, hidden, self.feature_size)
        if self._last_feature is None:
            raise ValueError("advance() before start()")
        self._queue(ids, torch.cat([self._last_feature, feats[:-1]]))
        self._last_feature = feats[-1:]

    @torch.inference_mode()
    def draft(self, root_token: int, tree: TreeSpec, sampling: SamplingSpec,
              generator: torch.Generator | None, names: Sequence[str]) -> list[DraftTree]:
        """One tree per model, built in lockstep."""
        self.begin_tree(root_token)
        try:
            builds = [new_build(root_token, tree, sampling, generator, name) for name in names]
            return build_lockstep(builds, self.step_many)
        finally:
            self.end_tree()

    # --- tree drafting ------------------------------------------------------------------------
    def begin_tree(self, root_token: int) -> None:
        if self._last_feature is None:
            raise ValueError("propose() before start()")
        self._root_token = int(root_token)
        self._fed: list[list[int]] = [[] for _ in self.models]  # member -> node at slot committed + j (-1: padding)
        self._outputs: list[dict[int, torch.Tensor]] = [{} for _ in self.models]  # member -> node -> output [d]
        self._committed = None

    def end_tree(self) -> None:
        """Drop the tree's KV: the cache keeps only committed entries."""
        if self._committed is not None:
            self.cache.crop(self._committed)
        self._committed = None

    @torch.inference_mode()
    def step_many(self, trees: Sequence[DraftTree], frontiers: Sequence[torch.Tensor | None]) -> list:
        """trees' lockstep step: feed every member's frontier once (one forward for all; None: a
        finished member, fed padding), return each member's next-token logits (SparseLogits for
        a truncated head; None for a finished member)."""
        if len(trees) != self.size:
            raise ValueError(f"lockstep drafting feeds all {self.size} members at every level, got {len(trees)}")
        sizes = [0 if f is None else f.numel() for f in frontiers]
        if self._committed is None:
            outputs, logits = self._feed_root()
            nodes = [[0] for _ in trees]
        else:
            width = max(sizes)
            nodes = [(f.tolist() if f is not None else []) + [-1] * (width - k) for f, k in zip(frontiers, sizes)]
            outputs, logits = self._feed_nodes(trees, nodes)  # -1: a padding row no node ever attends
        for b, row_nodes in enumerate(nodes):
            self._fed[b] += row_nodes
            for n, o in zip(row_nodes, outputs[b]):
                if n >= 0:
                    self._outputs[b][n] = o
        return [_first_rows(out, k) if k else None for out, k in zip(logits, sizes)]

    def _feed_root(self) -> tuple[torch.Tensor, list]:
        """Committed queue + root in one forward (causal): the root's outputs [m, 1, d] and logits."""
        dev, m = self.device, self.size
        ids = torch.cat(self._queued_ids + [torch.tensor([self._root_token])]).to(dev)
        feats = torch.cat(self._queued_features + [self._last_feature]).to(dev)
        self._queued_ids, self._queued_features = [], []
        start, n = self.cache.length, int(ids.numel())
        positions = torch.arange(start, start + n, device=dev)
        mask = attention_mask(torch.ones(n, n, dtype=torch.bool, device=dev).tril(), start, self.dtype)
        out, logits = self.forward(ids.expand(m, n), feats.expand(m, n, -1), True, positions.expand(m, n),
                                   mask.expand(m, -1, -1), last=1)
        self._committed = start + n - 1  # the root is slot 0 of the tree part
        return out[:, -1:], logits

    def _feed_nodes(self, trees: Sequence[DraftTree], nodes: list[list[int]]) -> tuple[torch.Tensor, list]:
        dev, committed = self.device, self._committed
        ids, feats, positions, masks = [], [], [], []
        for b, (tree, row_nodes) in enumerate(zip(trees, nodes)):
            rows = torch.tensor([max(n, 0) for n in row_nodes])  # a padding row repeats the root's inputs
            cols = torch.tensor(self._fed[b] + row_nodes)
            allowed = ancestor_matrix(tree.parents, tree.depths)[rows][:, cols.clamp(min=0)] & (cols >= 0)
            masks.append(attention_mask(allowed, committed, self.dtype))
            ids.append(tree.tokens[rows])
            parents = [int(tree.parents[n]) if n >= 0 else 0 for n in row_nodes]  # padding: the root's output
            feats.append(torch.stack([self._outputs[b][p] for p in parents]))
            positions.append(committed + tree.depths[rows])
        stack = lambda xs: torch.stack(xs).to(dev)  # noqa: E731
        return self.forward(stack(ids), stack(feats), False, stack(positions), stack(masks))

    def forward(self, ids, feats, from_target: bool, positions, mask, last: int | None = None) -> tuple[torch.Tensor, list]:
        """Every member's forward after the cache's live entries, which the new ones join.
        ids [m, T], feats [m, T, *], positions [m, T], mask additive [m, T, S] -> (outputs
        [m, T, d], each member's logits at its last `last` rows (default all))."""
        n = ids.shape[1]
        self.cache.reserve(n)
        out, _ = self.models[0](ids, feats, from_target, positions, mask[:, None], self.cache)
        self.cache.advance(n)
        return out, [head_logits(self.models[0], out[0, -(last or n):])]

    def _queue(self, ids: torch.Tensor, feats: torch.Tensor) -> None:
        if ids.numel():
            self._queued_ids.append(ids.cpu())
            self._queued_features.append(feats.to(self.dtype))


class FeatureDrafter(_FeatureDrafting, Drafter):
    """The Drafter protocol around one FeatureDrafterModel."""

    def __init__(self, model: FeatureDrafterModel, name: str = "eagle"):
        super().__init__([model])
        self.model = self.models[0]
        self.name = name

    def architecture_key(self) -> tuple:
        return self.model.config.architecture_key()

    def propose(self, root_token: int, tree: TreeSpec, sampling: SamplingSpec,
                generator: torch.Generator | None = None) -> DraftTree:
        return self.draft(root_token, tree, sampling, generator, [self.name])[0]

    def step(self, tree: DraftTree, frontier: torch.Tensor) -> torch.Tensor | SparseLogits:
        """trees' step_fn for this drafter alone."""
        return self.step_many([tree], [frontier])[0]


class FeatureDrafterGroup(_FeatureDrafting):
    """Feature drafters of one architecture drafting in lockstep: stacked weights, one vmapped
    forward per tree level, the shared frozen head once over the stacked frontiers. The weights
    are copied when the group is made (later changes to the members are not seen)."""

    def __init__(self, drafters: Sequence[FeatureDrafter]):
        keys = {d.architecture_key() for d in drafters}
        if len(drafters) < 2 or len(keys) != 1:
            raise ValueError(f"a drafter group needs at least two drafters of one architecture, got {len(keys)} kinds")
        super().__init__([d.model for d in drafters])
        self.names = [d.name for d in drafters]
        self.name = "+".join(self.names)
        self._shared_head = _shared_target_head(self.models)
        self._base = _Level(copy.deepcopy(self.models[0]).to("meta"), head=self._shared_head is None)  # structure only
        stacked, self._shared = _stack_weights(self.models)
        self._stacked = {f"model.{k}": v for k, v in stacked.items()}
        self._shared = {f"model.{k}": v for k, v in self._shared.items()}
        self._batched = {flag: vmap(self._member_level(flag)) for flag in (True, False)}

    def forward(self, ids, feats, from_target: bool, positions, mask, last: int | None = None) -> tuple[torch.Tensor, list]:
        n, length = ids.shape[1], self.cache.length
        self.cache.reserve(n)
        past = (self.cache.keys[0, :, None, :, :length], self.cache.values[0, :, None, :, :length])
        out, (k, v), head_in = self._batched[from_target](self._stacked, ids, feats, positions, mask, *past)
        self.cache.write(0, k[:, 0], v[:, 0])
        self.cache.advance(n)
        rows = head_in[:, 0, -(last or n):]
        if self._shared_head is not None:  # one matmul over every member's frontier
            return out[:, 0], list(F.linear(rows, self._shared_head).float())
        return out[:, 0], [_as_logits(m, r) for m, r in zip(self.models, rows)]

    def _member_level(self, from_target: bool):
        def one(weights, ids, feats, positions, mask, past_k, past_v):
            args = (ids[None], feats[None], from_target, positions[None], mask[None, None], (past_k, past_v))
            return functional_call(self._base, {**weights, **self._shared}, args)
        return one


class _Level(nn.Module):
    """One drafting level of a model: its forward, the final norm and (unless the head is shared
    and applied outside) the head, so a group's vmap covers all of it in one call."""

    def __init__(self, model: FeatureDrafterModel, head: bool):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, ids, feats, from_target, positions, mask, past):
        out, kv = self.model(ids, feats, from_target, positions, mask, past)
        normed = self.model.norm(out)
        return out, kv, (self.model.head(normed) if self.head else normed)


def head_logits(model: FeatureDrafterModel, outputs: torch.Tensor) -> torch.Tensor | SparseLogits:
    """Float logits at `outputs`: over the draft vocabulary (with its target ids) for a
    truncated head, so that top-k never touches the full vocabulary; else over the target's."""
    return _as_logits(model, model.logits(outputs))


def _as_logits(model: FeatureDrafterModel, head_out: torch.Tensor) -> torch.Tensor | SparseLogits:
    if isinstance(model.head, TruncatedHead):
        return SparseLogits(head_out.float(), model.head.draft_ids, model.config.vocab_size)
    return head_out.float()


def _first_rows(out: torch.Tensor | SparseLogits, k: int) -> torch.Tensor | SparseLogits:
    if isinstance(out, SparseLogits):
        return SparseLogits(out.logits[:k], out.vocab_ids, out.vocab_size)
    return out[:k]


def _stack_weights(models: Sequence[FeatureDrafterModel]) -> tuple[dict, dict]:
    """(stacked: name -> [m, ...] for weights that differ between members, shared: name ->
    tensor for those all members hold as the same tensor, e.g. the target's embedding)."""
    params, buffers = stack_module_state(list(models))
    first = dict(models[0].named_buffers())
    shared = {k: t for k, t in first.items()
              if all(dict(m.named_buffers())[k] is t for m in models[1:])}
    stacked = {**params, **{k: v for k, v in buffers.items() if k not in shared}}
    return {k: v.detach() for k, v in stacked.items()}, shared


def _shared_target_head(models: Sequence[FeatureDrafterModel]) -> torch.Tensor | None:
    heads = [m.head for m in models]
    if all(isinstance(h, TargetHead) for h in heads) and all(h.weight is heads[0].weight for h in heads):
        return heads[0].weight
    return None


def _as_rows(ids: torch.Tensor, hidden: torch.Tensor | None, feature_size: int):
    if hidden is None:
        raise ValueError("a feature-level drafter needs the target's hidden states")
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if hidden.shape != (ids.numel(), feature_size):
        raise ValueError(f"expected target features of shape ({ids.numel()}, {feature_size}), got {tuple(hidden.shape)}")
    return ids, hidden
