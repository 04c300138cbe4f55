"""Drafters that are causal LMs over the target's tokenizer: an independent smaller model, or
the target's own first k layers plus its head (self-speculative early exit, no training).

Each runs through runtime.decoder with its own static KV cache. The tree's entries stay in the
cache after drafting; `advance` keeps the ones on the accepted path (compacted in place, found by
matching the accepted tokens against the nodes it fed), so accepted tokens are never fed twice.
Accepted tokens it never fed (a leaf, or another drafter's node) wait in `pending` and go in
front of the next root in the first drafting forward."""
from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel

from trees import DraftTree, SamplingSpec, SparseLogits, TreeSpec, ancestor_matrix, attention_mask, build_tree

from .base import Drafter
from runtime.hf_decoder import make_decoder


class CausalLMDrafter(Drafter):
    """An independent causal LM with the target's tokenizer, drafting trees over its own cache."""

    target_layers = None
    target_hidden_size = None

    def __init__(self, model: PreTrainedModel, vocab_size: int, name: str = "lm"):
        self.model = model.eval().requires_grad_(False)
        self.decoder = make_decoder(self.model)
        self.vocab_size = vocab_size  # the target's logit width; ours is padded/sliced to it
        self.name = name
        self.cache = None
        self.pending: list[int] = []
        self._fed: list[int] = []  # tree node fed at cache slot base + j, for the current tree

    # --- protocol ---------------------------------------------------------------------------
    def start(self, prompt_ids: torch.Tensor, hidden: torch.Tensor | None = None) -> None:
        ids = prompt_ids.reshape(-1)
        self.cache = self.decoder.new_cache(int(ids.numel()) + 256)
        self.pending, self._fed, self._tree = [], [], None
        with torch.inference_mode():
            self.decoder.forward(ids, torch.arange(ids.numel()), self.cache, None, logits_rows=slice(0, 0))

    def advance(self, tokens: torch.Tensor, hidden: torch.Tensor | None = None) -> None:
        """Keep the fed tree entries along the accepted `tokens` (root first); queue the rest."""
        tokens = tokens.tolist()
        slots = self._accepted_slots(tokens)
        if slots:
            self.cache.keep(self._base, torch.tensor(slots, dtype=torch.long))
        else:
            self._drop_tree()
        self.pending.extend(tokens[len(slots):])
        self._fed, self._tree = [], None

    def propose(
        self,
        root_token: int,
        tree: TreeSpec,
        sampling: SamplingSpec,
        generator: torch.Generator | None = None,
    ) -> DraftTree:
        if self.cache is None:
            raise RuntimeError(f"drafter {self.name!r}: start() must be called before propose()")
        self._drop_tree()  # a tree never followed by advance()
        self._base = self.cache.length + len(self.pending)  # root slot
        with torch.inference_mode():
            draft = build_tree(root_token, self._step, tree, sampling, generator, drafter_name=self.name)
        return draft

    def architecture_key(self) -> tuple:
        c = self.model.config
        return (type(self).__name__, type(self.model).__name__, c.hidden_size, c.num_hidden_layers, c.vocab_size)

    # --- cache bookkeeping ------------------------------------------------------------------
    def _drop_tree(self) -> None:
        if self._fed:
            self.cache.crop(self._base)
        self._fed, self._tree = [], None

    def _accepted_slots(self, tokens: list[int]) -> list[int]:
        """Offsets past the root slot of the fed nodes along the accepted token path."""
        tree = self._tree
        if tree is None or not self._fed or tokens[0] != int(tree.tokens[0]):
            return []
        slot_of = {node: j for j, node in enumerate(self._fed)}
        parents, toks = tree.parents.tolist(), tree.tokens.tolist()
        node, slots = 0, [slot_of[0]]
        for t in tokens[1:]:
            node = next((c for c in slot_of if parents[c] == node and toks[c] == t), None)
            if node is None:
                break
            slots.append(slot_of[node])
        return slots

    # --- one drafting forward over the frontier --------------------------------------------
    def _step(self, tree: DraftTree, frontier: torch.Tensor) -> torch.Tensor | SparseLogits:
        """Feed the frontier (after the pending committed tokens at the first level) once."""
        pending, self.pending = self.pending, []
        nodes = frontier.tolist()
        ids = torch.tensor(pending + tree.tokens[frontier].tolist())
        start = self.cache.length
        if not self._fed:  # first level: pending + root, a causal chain after the cache
            positions, mask = torch.arange(start, start + len(pending) + 1), None
        else:
            anc = ancestor_matrix(tree.parents, tree.depths)
            allowed = anc[frontier][:, torch.tensor(self._fed + nodes)]
            positions = self._base + tree.depths[frontier]
            mask = attention_mask(allowed, self._base, self.decoder.dtype)
        self._fed += nodes
        self._tree = tree
        out = self.decoder.forward(ids, positions, self.cache, mask, logits_rows=slice(len(pending), None))
        return self._vocab_logits(out.logits)

    def _vocab_logits(self, logits: torch.Tensor) -> torch.Tensor | SparseLogits:
        """The head's logits as the tree builder reads them (the target's vocabulary)."""
        return _fit_vocab(logits, self.vocab_size)


def _fit_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Models sharing a tokenizer may pad their embedding tables differently: rows past the
    tokenizer are never real tokens, so slice or pad (with -inf) to the target's width."""
    width = logits.shape[-1]
    if width >= vocab_size:
        return logits[..., :vocab_size]
    pad = logits.new_full((*logits.shape[:-1], vocab_size - width), float("-inf"))
    return torch.cat([logits, pad], dim=-1)


def early_exit_model(target: PreTrainedModel, exit_layer: int) -> PreTrainedModel:
    """A causal LM made of the target's first `exit_layer` decoder layers, its final norm and
    its LM head, sharing the target's modules (no copy), for any transformers causal LM whose
    decoder layers sit in one module list."""
    n_layers = target.config.num_hidden_layers
    if not 1 <= exit_layer < n_layers:
        raise ValueError(f"early-exit layer must be in [1, {n_layers - 1}] for this target, got {exit_layer}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = exit_layer
    derived = isinstance(getattr(type(config), "layer_types", None), property)  # follows num_hidden_layers itself
    if getattr(config, "layer_types", None) is not None and not derived:
        config.layer_types = list(config.layer_types[:exit_layer])
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        shallow = type(target)(config)
    _share_modules(shallow, target)
    leftover = [n for n, t in [*shallow.named_parameters(), *shallow.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"early exit for {type(target).__name__} left tensors unshared: {leftover[:3]}")
    return shallow.eval()


def _share_modules(shallow: nn.Module, target: nn.Module) -> None:
    """Point each submodule of `shallow` (same class, fewer layers) at `target`'s module of the
    same name: a module list (the decoder layers) takes the target's first entries, a module
    holding one is walked into, any other (embedding, norm, rotary embedding, head) is shared,
    and so are the tensors held directly by a walked module (e.g. a causal-mask buffer)."""
    for store in ("_parameters", "_buffers"):
        own = getattr(shallow, store)
        for name in own:
            own[name] = getattr(target, store)[name]
    for name, child in list(shallow.named_children()):
        source = getattr(target, name)
        if isinstance(child, nn.ModuleList):
            setattr(shallow, name, nn.ModuleList(list(source)[: len(child)]))
        elif any(isinstance(m, nn.ModuleList) for m in child.modules()):
            _share_modules(child, source)
        else:
            setattr(shallow, name, source)


class EarlyExitDrafter(CausalLMDrafter):
    """Self-speculative drafter: the target's first k layers + its head."""

    def __init__(self, target: PreTrainedModel, exit_layer: int, name: str | None = None):
        super().__init__(early_exit_model(target, exit_layer), target.config.vocab_size, name or f"early-exit-{exit_layer}")
        self.exit_layer = exit_layer
