"""Drafters that are causal LMs over the target's tokenizer: an independent smaller model, or
the target's own first k layers plus its head (self-speculative early exit, no training).

Each keeps its own KV cache of committed tokens. Accepted tokens are not fed eagerly: they wait
in `pending` and go in front of the next root in the first drafting forward, so a decode step
costs the drafter `depth` forwards, never one extra."""
from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from trees import DraftTree, SamplingSpec, TreeSpec, build_tree

from .base import Drafter
from .kv import cache_length, truncate_cache


class CausalLMDrafter(Drafter):
    """An independent causal LM with the target's tokenizer, drafting trees over its own cache."""

    target_layers = None
    target_hidden_size = None

    def __init__(self, model: PreTrainedModel, vocab_size: int, name: str = "lm"):
        self.model = model.eval().requires_grad_(False)
        self.vocab_size = vocab_size  # the target's logit width; ours is padded/sliced to it
        self.name = name
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.cache: DynamicCache | None = None
        self.pending: list[int] = []

    # --- protocol ---------------------------------------------------------------------------
    def start(self, prompt_ids: torch.Tensor, hidden: torch.Tensor | None = None) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.pending = []
        with torch.inference_mode():
            self.model(input_ids=prompt_ids.view(1, -1).to(self.device), past_key_values=self.cache, use_cache=True)

    def advance(self, tokens: torch.Tensor, hidden: torch.Tensor | None = None) -> None:
        self.pending.extend(tokens.tolist())

    def propose(
        self,
        root_token: int,
        tree: TreeSpec,
        sampling: SamplingSpec,
        generator: torch.Generator | None = None,
    ) -> DraftTree:
        if self.cache is None:
            raise RuntimeError(f"drafter {self.name!r}: start() must be called before propose()")
        self._slots: dict[int, int] = {}
        with torch.inference_mode():
            draft = build_tree(root_token, self._step, tree, sampling, generator, drafter_name=self.name)
        truncate_cache(self.cache, self._base)  # drop the tree's KV; the accepted path comes back via pending
        return draft

    def architecture_key(self) -> tuple:
        c = self.model.config
        return (type(self).__name__, type(self.model).__name__, c.hidden_size, c.num_hidden_layers, c.vocab_size)

    # --- one drafting forward over the frontier --------------------------------------------
    def _step(self, tree: DraftTree, frontier: torch.Tensor) -> torch.Tensor:
        cached = cache_length(self.cache)
        pending, self.pending = self.pending, []
        if not self._slots:  # first level of this build: committed tokens go in first
            self._base = cached + len(pending)
        base = self._base
        q_tokens = pending + tree.tokens[frontier].tolist()
        n_q, total = len(q_tokens), cached + len(q_tokens)

        allowed = torch.zeros(n_q, total, dtype=torch.bool)
        allowed[:, :cached] = True
        npend = len(pending)
        allowed[:npend, cached:cached + npend] = torch.ones(npend, npend, dtype=torch.bool).tril()
        allowed[npend:, cached:cached + npend] = True
        positions = list(range(cached, cached + npend))
        for row, node in enumerate(frontier.tolist(), start=npend):
            ancestors = tree.path_to(node)[:-1]
            allowed[row, [self._slots[a] for a in ancestors]] = True
            allowed[row, cached + row] = True
            self._slots[node] = cached + row
            positions.append(base + int(tree.depths[node]))

        mask = torch.zeros(n_q, total, dtype=self.dtype).masked_fill_(~allowed, torch.finfo(self.dtype).min)
        out = self.model(
            input_ids=torch.tensor([q_tokens], device=self.device),
            position_ids=torch.tensor([positions], device=self.device),
            attention_mask=mask.to(self.device)[None, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        logits = out.logits[0, npend:].float()
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
    its LM head, sharing the target's weights (no copy)."""
    n_layers = target.config.num_hidden_layers
    if not 1 <= exit_layer < n_layers:
        raise ValueError(f"early-exit layer must be in [1, {n_layers - 1}] for this target, got {exit_layer}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = exit_layer
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types[:exit_layer])
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        shallow = type(target)(config)
    body, target_body = shallow.model, target.model
    body.embed_tokens = target_body.embed_tokens
    body.layers = nn.ModuleList(list(target_body.layers[:exit_layer]))
    body.norm = target_body.norm
    body.rotary_emb = target_body.rotary_emb
    shallow.lm_head = target.lm_head
    leftover = [n for n, t in [*shallow.named_parameters(), *shallow.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"early exit for {type(target).__name__} left tensors unshared: {leftover[:3]}")
    return shallow.eval()


class EarlyExitDrafter(CausalLMDrafter):
    """Self-speculative drafter: the target's first k layers + its head."""

    def __init__(self, target: PreTrainedModel, exit_layer: int, name: str | None = None):
        super().__init__(early_exit_model(target, exit_layer), target.config.vocab_size, name or f"early-exit-{exit_layer}")
        self.exit_layer = exit_layer
