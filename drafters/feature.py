"""FeatureDrafter: the Drafter protocol around a FeatureDrafterModel, with its own KV cache.

Bookkeeping (EAGLE terms): drafter entry t is (x_{t+1}, f_t) at position t. `start` and
`advance` only queue committed entries; the next `propose` feeds them together with the root
entry (root, f_last) in one forward, then the tree build feeds each expanded frontier node once
(feature = its parent's output) under a tree mask over the cache. After the build the tree's
KV is dropped (the cache is cut back to the committed length), so the cache only ever holds
entries built from the target's own features.
"""
from __future__ import annotations

import torch

from trees import DraftTree, SamplingSpec, TreeSpec, build_tree

from .base import Drafter
from .model import FeatureDrafterModel


class DrafterKVCache:
    """Keys / values of one decoder layer for one sequence, [1, n_kv, S, hd], grown by doubling."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0

    def view(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.k is None or self.length == 0:
            return None
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        n = k.shape[2]
        if self.k is None or self.length + n > self.k.shape[2]:
            capacity = max(64, 2 * (self.length + n))
            new_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            new_v = v.new_empty(new_k.shape)
            if self.k is not None:
                new_k[:, :, : self.length] = self.k[:, :, : self.length]
                new_v[:, :, : self.length] = self.v[:, :, : self.length]
            self.k, self.v = new_k, new_v
        self.k[:, :, self.length : self.length + n] = k
        self.v[:, :, self.length : self.length + n] = v
        self.length += n

    def crop(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        self.length = length


class FeatureDrafter(Drafter):
    def __init__(self, model: FeatureDrafterModel, name: str = "eagle"):
        self.model = model.eval()
        cfg = model.config
        self.name = name
        self.vocab_size = cfg.vocab_size
        self.target_hidden_size = cfg.target_hidden_size
        self.target_layers = list(cfg.target_layers)
        self.reset()

    def architecture_key(self) -> tuple:
        return self.model.config.architecture_key()

    # --- protocol -----------------------------------------------------------------------------
    def reset(self) -> None:
        self.cache = DrafterKVCache()
        self._queued_ids: list[torch.Tensor] = []  # committed entries not yet fed
        self._queued_features: list[torch.Tensor] = []
        self._last_feature: torch.Tensor | None = None  # target feature pairing with the next root

    def start(self, prompt_ids: torch.Tensor, hidden: torch.Tensor | None) -> None:
        ids, feats = _as_rows(prompt_ids, hidden, self.model.config.feature_size)
        self.reset()
        self._queue(ids[1:], feats[:-1])
        self._last_feature = feats[-1:]

    def advance(self, tokens: torch.Tensor, hidden: torch.Tensor | None) -> None:
        ids, feats = _as_rows(tokens, hidden, self.model.config.feature_size)
        if self._last_feature is None:
            raise ValueError("advance() before start()")
        self._queue(ids, torch.cat([self._last_feature, feats[:-1]]))
        self._last_feature = feats[-1:]

    def propose(self, root_token: int, tree: TreeSpec, sampling: SamplingSpec,
                generator: torch.Generator | None = None) -> DraftTree:
        self.begin_tree(root_token)
        try:
            return build_tree(root_token, self.step, tree, sampling, generator, self.name)
        finally:
            self.end_tree()

    # --- tree drafting ------------------------------------------------------------------------
    def begin_tree(self, root_token: int) -> None:
        if self._last_feature is None:
            raise ValueError("propose() before start()")
        self._root_token = int(root_token)
        self._slot: dict[int, int] = {}  # tree node -> slot in the tree part of the cache
        self._outputs: dict[int, torch.Tensor] = {}  # tree node -> drafter output [d]
        self._committed = None

    def end_tree(self) -> None:
        """Drop the tree's KV: the cache keeps only committed entries."""
        if self._committed is not None:
            self.cache.crop(self._committed)
        self._slot, self._outputs = {}, {}

    @torch.no_grad()
    def step(self, tree: DraftTree, frontier: torch.Tensor) -> torch.Tensor:
        """trees' step_fn: feed the frontier nodes once each, return logits [F, V_target]."""
        nodes = frontier.tolist()
        if nodes == [0]:
            outputs = self._feed_root(int(tree.tokens[0]))
        else:
            outputs = self._feed_nodes(tree, nodes)
        for n, o in zip(nodes, outputs):
            self._outputs[n] = o
        return self.model.target_logits(outputs).float()

    def _feed_root(self, root_token: int) -> torch.Tensor:
        """Committed queue + root in one forward (causal); returns the root's output [1, d]."""
        dev = self.model.embed_weight.device
        ids = torch.cat(self._queued_ids + [torch.tensor([root_token])]).to(dev)
        feats = torch.cat(self._queued_features + [self._last_feature]).to(dev)
        self._queued_ids, self._queued_features = [], []
        start, n = self.cache.length, int(ids.numel())
        positions = torch.arange(start, start + n, device=dev)
        mask = _causal_mask(start, n, self.model.dtype, dev)
        out, (k, v) = self.model(ids[None], feats[None], True, positions[None], mask, self.cache.view())
        self.cache.append(k, v)
        self._committed = start + n - 1  # the root is slot 0 of the tree part
        self._slot[0] = 0
        return out[0, -1:]

    def _feed_nodes(self, tree: DraftTree, nodes: list[int]) -> torch.Tensor:
        dev = self.model.embed_weight.device
        committed, n_tree = self._committed, self.cache.length - self._committed
        for i, n in enumerate(nodes):
            self._slot[n] = n_tree + i
        mask = torch.full((len(nodes), self.cache.length + len(nodes)), torch.finfo(self.model.dtype).min,
                          dtype=self.model.dtype, device=dev)
        mask[:, :committed] = 0
        parents = tree.parents.tolist()
        for row, n in enumerate(nodes):
            a = n
            while a != -1:  # the node itself and every ancestor (all fed earlier in this build)
                mask[row, committed + self._slot[a]] = 0
                a = parents[a]
        ids = tree.tokens[nodes].to(dev)
        feats = torch.stack([self._outputs[parents[n]] for n in nodes])
        positions = committed + tree.depths[nodes].to(dev)
        out, (k, v) = self.model(ids[None], feats[None], False, positions[None], mask[None, None], self.cache.view())
        self.cache.append(k, v)
        return out[0]

    def _queue(self, ids: torch.Tensor, feats: torch.Tensor) -> None:
        if ids.numel():
            self._queued_ids.append(ids.cpu())
            self._queued_features.append(feats.to(self.model.dtype))


def _as_rows(ids: torch.Tensor, hidden: torch.Tensor | None, feature_size: int):
    if hidden is None:
        raise ValueError("a feature-level drafter needs the target's hidden states")
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if hidden.shape != (ids.numel(), feature_size):
        raise ValueError(f"expected target features of shape ({ids.numel()}, {feature_size}), got {tuple(hidden.shape)}")
    return ids, hidden


def _causal_mask(past: int, n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive [1, 1, n, past + n]: every new row sees the whole past and the rows before it."""
    mask = torch.full((n, past + n), torch.finfo(dtype).min, dtype=dtype, device=device)
    mask[:, :past] = 0
    mask[:, past:] = mask[:, past:].triu(1)
    return mask[None, None]
