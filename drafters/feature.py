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

from trees import DraftTree, SamplingSpec, SparseLogits, TreeSpec, ancestor_matrix, attention_mask, build_tree

from .base import Drafter
from .heads import TruncatedHead
from .kv import KVCache
from .model import FeatureDrafterModel


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
        cfg, p = self.model.config, next(self.model.parameters())
        self.cache = KVCache(1, cfg.num_key_value_heads, cfg.head_dim, p.dtype, p.device)
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
        self._fed: list[int] = []  # tree node fed at cache slot committed + j
        self._outputs: dict[int, torch.Tensor] = {}  # tree node -> drafter output [d]
        self._committed = None

    def end_tree(self) -> None:
        """Drop the tree's KV: the cache keeps only committed entries."""
        if self._committed is not None:
            self.cache.crop(self._committed)
        self._fed, self._outputs = [], {}

    @torch.no_grad()
    def step(self, tree: DraftTree, frontier: torch.Tensor) -> torch.Tensor | SparseLogits:
        """trees' step_fn: feed the frontier nodes once each, return their next-token logits
        (over the draft vocabulary, with its target ids, for a truncated head)."""
        nodes = frontier.tolist()
        if nodes == [0]:
            outputs = self._feed_root(int(tree.tokens[0]))
        else:
            outputs = self._feed_nodes(tree, frontier)
        self._fed += nodes
        for n, o in zip(nodes, outputs):
            self._outputs[n] = o
        return head_logits(self.model, outputs)

    def _feed_root(self, root_token: int) -> torch.Tensor:
        """Committed queue + root in one forward (causal); returns the root's output [1, d]."""
        dev = self.model.embed_weight.device
        ids = torch.cat(self._queued_ids + [torch.tensor([root_token])]).to(dev)
        feats = torch.cat(self._queued_features + [self._last_feature]).to(dev)
        self._queued_ids, self._queued_features = [], []
        start, n = self.cache.length, int(ids.numel())
        positions = torch.arange(start, start + n, device=dev)
        causal = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
        out = self._forward(ids, feats, True, positions, attention_mask(causal, start, self.model.dtype))
        self._committed = start + n - 1  # the root is slot 0 of the tree part
        return out[0, -1:]

    def _feed_nodes(self, tree: DraftTree, frontier: torch.Tensor) -> torch.Tensor:
        dev = self.model.embed_weight.device
        anc = ancestor_matrix(tree.parents, tree.depths)
        allowed = anc[frontier][:, torch.tensor(self._fed + frontier.tolist())]
        mask = attention_mask(allowed, self._committed, self.model.dtype).to(dev)
        feats = torch.stack([self._outputs[p] for p in tree.parents[frontier].tolist()])
        positions = self._committed + tree.depths[frontier].to(dev)
        return self._forward(tree.tokens[frontier].to(dev), feats, False, positions, mask)[0]

    def _forward(self, ids, feats, from_target: bool, positions, mask) -> torch.Tensor:
        """One drafter forward after the cache's live entries, which the new ones join."""
        n = int(ids.numel())
        self.cache.reserve(n)
        out, _ = self.model(ids[None], feats[None], from_target, positions[None], mask[None, None], self.cache)
        self.cache.advance(n)
        return out

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


def head_logits(model: FeatureDrafterModel, outputs: torch.Tensor) -> torch.Tensor | SparseLogits:
    """Float logits at `outputs`: over the draft vocabulary (with its target ids) for a
    truncated head, so that top-k never touches the full vocabulary; else over the target's."""
    logits = model.logits(outputs).float()
    if isinstance(model.head, TruncatedHead):
        return SparseLogits(logits, model.head.draft_ids, model.config.vocab_size)
    return logits
