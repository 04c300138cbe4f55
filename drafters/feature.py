"""Feature-level drafters at inference: `FeatureDrafter` (one model) and `FeatureDrafterGroup`
(several models of one architecture drafting in lockstep), over one static KV cache.

Bookkeeping (EAGLE terms): drafter entry t is (x_{t+1}, f_t) at position t. `start` and
`advance` only queue committed entries; the next `propose` feeds them together with the root
entry (root, f_last) in one forward, then the tree build feeds each expanded frontier node once
(feature = its parent's output) under a tree mask over the cache. After the build the tree's
KV is dropped (the cache is cut back to the committed length), so the cache only ever holds
entries built from the target's own features.

A group stacks its members' weights (each linear applies each member's weights to its rows) and runs one
forward per tree level for all of them, the members as the batch; a head they share (the
target's frozen head) runs once over the stacked frontiers. Members see the same committed
tokens and target features, so the committed part of the cache has one length for all;
frontiers of unequal size are padded with rows no node ever attends.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from trees import DraftTree, SamplingSpec, SparseLogits, TreeSpec, attention_mask, build_lockstep, new_build

from .base import Drafter
from .compiled import compiled_forward, compiled_members
from .heads import TargetHead, TruncatedHead
from runtime.kv import KVCache
from .model import FeatureDrafterModel, RMSNorm
from runtime.prepacked import linear, plain_linears, stacked_matmul


class _FeatureDrafting:
    """Committed-entry queue, cache and tree bookkeeping for m >= 1 same-architecture models."""

    def __init__(self, models: Sequence[FeatureDrafterModel]):
        self.models = [m.eval() for m in models]
        self.runner = self.models[0]  # the module that runs all members (a group's: stacked weights)
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
        # the tree part of the cache, every member at once (slot j sits at cache position committed + j):
        self._slot_of = torch.zeros(self.size, 0, dtype=torch.long)  # [m, nodes] member's node -> its slot (-1: not fed)
        self._sees = torch.zeros(self.size, 0, 0, dtype=torch.bool)  # [m, slots, slots] slot -> the slots it attends
        self._slot_outputs: torch.Tensor | None = None  # [m, slots, d] each slot's output (its children's feature)
        self._vocab_ids = [_vocab_ids(m) for m in self.models]  # read once per tree, not per level
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
            nodes = torch.zeros(self.size, 1, dtype=torch.long)
        else:  # -1: a padding row no node ever attends
            nodes = pad_sequence([f.reshape(-1).cpu() if f is not None else torch.zeros(0, dtype=torch.long)
                                  for f in frontiers], batch_first=True, padding_value=-1)
            outputs, logits = self._feed_nodes(trees, nodes)
        self._record_slots(nodes, outputs)
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
        self._sees = torch.ones(m, 1, 1, dtype=torch.bool)
        return out[:, -1:], logits

    def _feed_nodes(self, trees: Sequence[DraftTree], nodes: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Feed `nodes` [m, W] (member b's frontier in row b, -1 padding) after the fed slots, all
        members in one forward. A node attends its parent's slots and its own (its parent's
        row of `_sees` plus itself: the tree's ancestor rows, built incrementally); a padding
        row repeats the root's inputs and attends the root alone, and nothing attends it."""
        m, width = nodes.shape
        real = nodes >= 0
        rows = nodes.clamp(min=0)
        member = torch.arange(m)[:, None]
        tokens, parents, depths = (pad_sequence([getattr(t, f) for t in trees], batch_first=True).gather(1, rows)
                                   for f in ("tokens", "parents", "depths"))
        self._grow_slot_map(max(len(t) for t in trees))
        parent_slots = self._slot_of.gather(1, parents.clamp(min=0))  # padding rows: the root's parent -1 -> slot 0
        if bool((parent_slots < 0).any()):
            raise ValueError("a frontier node's parent was never fed: feed parents before their children")
        sees = torch.cat([self._sees[member, parent_slots], torch.diag_embed(real)], dim=-1)  # [m, W, slots + W]
        self._sees = torch.cat([nn.functional.pad(self._sees, (0, width)), sees], dim=1)
        dev = self.device
        mask = attention_mask(sees.reshape(m * width, -1), self._committed, self.dtype).view(m, width, -1)
        feats = self._slot_outputs[member.to(dev), parent_slots.to(dev)]
        return self.forward(tokens.to(dev), feats, False, (self._committed + depths).to(dev), mask.to(dev))

    def _record_slots(self, nodes: torch.Tensor, outputs: torch.Tensor) -> None:
        """The fed rows take the next slots: their outputs (children's features) and node -> slot."""
        first = 0 if self._slot_outputs is None else self._slot_outputs.shape[1]
        self._slot_outputs = outputs if self._slot_outputs is None else torch.cat([self._slot_outputs, outputs], 1)
        self._grow_slot_map(int(nodes.max()) + 1)
        member, column = (nodes >= 0).nonzero(as_tuple=True)
        self._slot_of[member, nodes[member, column]] = first + column

    def _grow_slot_map(self, n_nodes: int) -> None:
        if self._slot_of.shape[1] < n_nodes:
            self._slot_of = nn.functional.pad(self._slot_of, (0, n_nodes - self._slot_of.shape[1]), value=-1)

    def forward(self, ids, feats, from_target: bool, positions, mask, last: int | None = None) -> tuple[torch.Tensor, list]:
        """Every member's forward after the cache's live entries, which the new ones join.
        ids [m, T], feats [m, T, *], positions [m, T], mask additive [m, T, S] -> (outputs
        [m, T, d], each member's logits at its last `last` rows (default all))."""
        n = ids.shape[1]
        self.cache.reserve(n)
        members = compiled_members(self.models) if ids.device.type == "cpu" else None
        if members is not None:  # each member's level in two compiled calls (drafters/compiled.py)
            out, heads = compiled_forward(members, self.models[0], ids, feats, from_target, positions, mask, self.cache,
                                          last or n)
            self.cache.advance(n)
            return out, [_as_logits(m, h, v) for m, h, v in zip(self.models, heads, self._vocab_ids)]
        out, _ = self.runner(ids, feats, from_target, positions, mask[:, None], self.cache)
        self.cache.advance(n)
        head_out = self.runner.logits(out[:, -(last or n):])  # one head call for every member
        return out, [_as_logits(m, h, v) for m, h, v in zip(self.models, head_out, self._vocab_ids)]

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
    """Feature drafters of one architecture drafting in lockstep: one model whose linears apply
    each member's own weights to its row of the batch and whose norm weights are stacked, run with
    the members as the batch, so a tree level is one forward for all of them and a head they
    share (the target's frozen head) is one matmul over every member's frontier. The weights are
    copied when the group is made (later changes to the members are not seen)."""

    almost_free = False  # as its members (Drafter.almost_free)

    def __init__(self, drafters: Sequence[FeatureDrafter]):
        keys = {d.architecture_key() for d in drafters}
        if len(drafters) < 2 or len(keys) != 1:
            raise ValueError(f"a drafter group needs at least two drafters of one architecture, got {len(keys)} kinds")
        super().__init__([d.model for d in drafters])
        self.names = [d.name for d in drafters]
        self.name = "+".join(self.names)
        self.runner = stacked_model(self.models)

    def observe(self, feedback) -> None:
        """Feature drafters do not learn online (Drafter.observe): nothing to pass on."""


class StackedLinear(nn.Module):
    """Several Linears of one shape applied member by member: x [m, T, in] -> [m, T, out]. One
    linear per member on its prepacked weight (runtime.prepacked) beats one batched matmul over
    the stacked weights, which repacks them every call (docs/design.md "Measurements behind the code")."""

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        self.members = nn.ModuleList(copy.deepcopy(list(linears)))

    @property
    def weight(self) -> torch.Tensor:
        """The first member's weight (its dtype and device are everyone's)."""
        return self.members[0].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if plain_linears(self.members):
            out = stacked_matmul(x, [m.weight for m in self.members], [m.bias for m in self.members])
            if out is not None:
                return out
        return torch.stack([linear(member, row) for member, row in zip(self.members, x)])


def stacked_model(models: Sequence[FeatureDrafterModel]) -> FeatureDrafterModel:
    """Member 0's module with every Linear a StackedLinear and every norm weight stacked
    [m, 1, d]; the frozen target embedding and head stay shared. Any other weight must be equal
    in all members (else ValueError: they then draft one after another); a truncated head's
    vocabulary maps may differ, each member's own are read when its logits are mapped."""
    frozen = [models[0].embed_weight] + ([models[0].head.weight] if isinstance(models[0].head, TargetHead) else [])
    stacked = copy.deepcopy(models[0], memo={id(t): t for t in frozen})
    for name, module in list(stacked.named_modules()):
        members = [m.get_submodule(name) for m in models]
        if isinstance(module, nn.Linear):
            parent, _, leaf = name.rpartition(".")
            setattr(stacked.get_submodule(parent), leaf, StackedLinear(members))
        elif isinstance(module, RMSNorm):
            module.weight = nn.Parameter(torch.stack([m.weight.detach() for m in members])[:, None], requires_grad=False)
    own = [n for n, m in stacked.named_modules() if isinstance(m, (StackedLinear, RMSNorm, TruncatedHead))]
    for name, module in stacked.named_modules():
        if any(name == n or name.startswith(n + ".") for n in own):  # per-member weights by design
            continue
        for leaf, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            others = [getattr(m.get_submodule(name), leaf) for m in models[1:]]
            if not all(o is t or torch.equal(o, t) for o in others):
                raise ValueError(f"cannot stack drafter weight {name}.{leaf}: it differs between members "
                                 "and is neither a linear's nor a norm's")
    return stacked


def _vocab_ids(model: FeatureDrafterModel) -> torch.Tensor | None:
    """The target id of each column of the model's head output (None: the target's vocabulary)."""
    return model.head.draft_ids if isinstance(model.head, TruncatedHead) else None


def _as_logits(model: FeatureDrafterModel, head_out: torch.Tensor, vocab_ids: torch.Tensor | None) -> torch.Tensor | SparseLogits:
    if vocab_ids is not None:
        return SparseLogits(head_out.float(), vocab_ids, model.config.vocab_size)
    return head_out.float()


def _first_rows(out: torch.Tensor | SparseLogits, k: int) -> torch.Tensor | SparseLogits:
    if isinstance(out, SparseLogits):
        return SparseLogits(out.logits[:k], out.vocab_ids, out.vocab_size)
    return out[:k]


def _as_rows(ids: torch.Tensor, hidden: torch.Tensor | None, feature_size: int):
    if hidden is None:
        raise ValueError("a feature-level drafter needs the target's hidden states")
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if hidden.shape != (ids.numel(), feature_size):
        raise ValueError(f"expected target features of shape ({ids.numel()}, {feature_size}), got {tuple(hidden.shape)}")
    return ids, hidden
