"""DVI (Draft, Verify & Improve, arXiv 2510.05421): a self-speculative drafter that learns while it
serves (docs/design.md "DVI: a drafter that learns while it serves").

The drafter is `early-exit:K` (the target's first K layers, frozen and shared, its final norm
and head) plus adapters: a LoRA on the exit head and an exit adapter (a translator h -> h + W h + b
on the exit layer's output, or a LoRA on the exit layer's MLP down projection, or none). Every
adapter starts at zero, so a fresh `dvi:K` drafts exactly like `early-exit:K`. While drafting it
taps the adapter inputs at every node it expands; after each verification (`observe`) the nodes
the verifier visited become training examples for the online learner (drafters/dvi_learner.py). The
adapters sit after the last drafted layer's attention, so the drafter's KV cache never goes
stale: learning only moves the exit distribution.

The exit head may cover a draft vocabulary instead of the target's (`draft_vocab`: the shipped
drafters' d2t, e.g. 3,584 of SmolLM2's 49,152 tokens): the frozen head is then the target's rows
for those tokens, the LoRA is that narrow, the tree builder reads sparse logits, and the learner
fits the target's distribution renormalised over them. On a small target the full head is the
largest part of a draft level (docs/design.md "DVI: a drafter that learns while it serves").

Adapters are saved per domain as a folder: adapter.safetensors + config.json (validated) +
learner.safetensors (optimizer moments and buffered examples: a reload goes on learning exactly).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from runtime import atomic
from trees import SparseLogits, StepFeedback

from .checkpoint import read_weights, target_fingerprint
from .dvi_adapter import (ADAPTER_FORMAT, CONFIG_FILE, DRAFT_IDS, LEARNER_FILE, WEIGHTS_FILE, AdaptedLinear,
                          DVIConfig, ExitNorm, LoRA, read_adapter_config, resolve_draft_ids, shallow_clone)
from .dvi_learner import Example, OnlineLearner
from .heads import TruncatedHead
from .lm import EarlyExitDrafter


class DVIDrafter(EarlyExitDrafter):
    """`dvi:K`: early-exit:K with exit adapters learned online from verification (see the module doc)."""

    def __init__(self, target: PreTrainedModel, exit_layer: int, config: DVIConfig | None = None,
                 name: str | None = None, draft_ids: torch.Tensor | None = None):
        """`draft_ids` (target ids, ascending) sets the exit head's vocabulary directly (a reload
        passes the saved one); else `config.draft_vocab` says where to find it."""
        n_layers = int(target.config.num_hidden_layers)
        if not isinstance(exit_layer, int) or not 1 <= exit_layer < n_layers:
            raise ValueError(f"dvi exit layer must be an integer in [1, {n_layers - 1}] for this "
                             f"{n_layers}-layer target, got {exit_layer!r}")
        super().__init__(target, exit_layer, name or f"dvi-{exit_layer}")
        self.config = config or DVIConfig()
        self.fingerprint = target_fingerprint(target)
        generator = torch.Generator().manual_seed(self.config.seed)
        body, c = self.model.model, self.model.config
        self.draft_ids = resolve_draft_ids(self.config.draft_vocab, target) if draft_ids is None else draft_ids.long()
        base, width = self.model.lm_head, c.vocab_size
        if self.draft_ids is not None:  # the target head's rows for the draft vocabulary (a copy: small)
            truncated = TruncatedHead(c.hidden_size, self.draft_ids, c.vocab_size, init_weight=base.weight.detach())
            base, width = truncated.proj.to(self.decoder.dtype).requires_grad_(False), truncated.proj.out_features
            self._column = torch.full((c.vocab_size,), -1, dtype=torch.long)  # target id -> head column
            self._column[self.draft_ids] = torch.arange(width)
        self.head = AdaptedLinear(base, LoRA(c.hidden_size, width, self.config.rank, self.config.alpha, generator,
                                             self.decoder.dtype))
        self.model.lm_head = self.head  # the drafter's own shallow model: the target keeps its head
        self.exit_mlp = self._adapt_exit_mlp(generator) if self.config.exit_adapter == "lora" else None
        self.exit_norm: ExitNorm | None = None
        if self.config.exit_adapter != "none":  # the exit adapters need the exit layer's output tapped
            translator = self._translator() if self.config.exit_adapter == "translator" else None
            self.exit_norm = body.norm = ExitNorm(body.norm, translator)
        for p in self.adapter_parameters().values():
            p.requires_grad_(True)
        self.learner = OnlineLearner(list(self.adapter_parameters().values()), self.train_logits, self.config.learning)
        self._keys: dict[int, tuple[int, ...]] = {}  # growing-tree node -> token path from the root
        self._expanded: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}  # token path -> features
        self._drafted = None  # the tree of the last propose
        self.learn_seconds = 0.0  # wall time in observe (example building and optimizer steps)

    def _adapt_exit_mlp(self, generator: torch.Generator) -> AdaptedLinear:
        """LoRA on the exit layer's MLP down projection, in shallow clones of the layer and its
        MLP (the target's layer keeps its own projection)."""
        body = self.model.model
        layer = shallow_clone(body.layers[-1])
        layer.mlp = shallow_clone(layer.mlp)
        down = layer.mlp.down_proj
        adapted = AdaptedLinear(down, LoRA(down.in_features, down.out_features, self.config.rank, self.config.alpha,
                                           generator, self.decoder.dtype))
        layer.mlp.down_proj = adapted
        body.layers[-1] = layer
        return adapted

    def _translator(self) -> nn.Linear:
        d = self.model.config.hidden_size
        translator = nn.utils.skip_init(nn.Linear, d, d, dtype=self.decoder.dtype)
        nn.init.zeros_(translator.weight), nn.init.zeros_(translator.bias)
        return translator

    # --- the adapter ----------------------------------------------------------------------------
    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        params = {"head.down": self.head.lora.down, "head.up": self.head.lora.up}
        if self.exit_mlp is not None:
            params |= {"exit_mlp.down": self.exit_mlp.lora.down, "exit_mlp.up": self.exit_mlp.lora.up}
        if self.exit_norm is not None and self.exit_norm.translator is not None:
            params |= {"translator.weight": self.exit_norm.translator.weight, "translator.bias": self.exit_norm.translator.bias}
        return params

    def train_logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Draft logits [B, V] at tapped nodes, as a function of the adapter (with gradients)."""
        if self.exit_norm is None:  # the head's input is fixed: only the LoRA delta needs computing
            return features["base"] + self.head.lora(features["hn"])
        h = features["h"] if self.exit_mlp is None else features["h_frozen"] + self.exit_mlp.lora(features["u"])
        return self.head(self.exit_norm(h))

    def architecture_key(self) -> tuple:
        vocab = None if self.draft_ids is None else hashlib.sha1(self.draft_ids.numpy().tobytes()).hexdigest()
        return (*super().architecture_key(), self.exit_layer, tuple(self.config.shape().items()), vocab)

    @property
    def learning(self) -> bool:
        return self.config.learn

    # --- drafting with taps -------------------------------------------------------------------------
    def propose(self, root_token, tree, sampling, generator=None):
        self._keys, self._expanded = {}, {}
        self._set_tapping(self.learning)
        try:
            self._drafted = super().propose(root_token, tree, sampling, generator)
        finally:
            self._set_tapping(False)
        return self._drafted

    def _set_tapping(self, on: bool) -> None:
        for m in (self.head, self.exit_mlp, self.exit_norm):
            if m is not None:
                m.tapping, m.tap = on, None

    def _step(self, tree, frontier: torch.Tensor) -> torch.Tensor | SparseLogits:
        logits = super()._step(tree, frontier)
        if self.learning:
            self._record(tree, frontier)
        return logits

    def _vocab_logits(self, logits: torch.Tensor) -> torch.Tensor | SparseLogits:
        if self.draft_ids is None:
            return super()._vocab_logits(logits)
        return SparseLogits(logits, self.draft_ids, self.vocab_size)

    def columns(self, tokens: torch.Tensor) -> torch.Tensor:
        """The exit head's logit column of each target token (-1: outside its draft vocabulary)."""
        return tokens if self.draft_ids is None else self._column[tokens]

    def _record(self, tree, frontier: torch.Tensor) -> None:
        """Keep the adapter inputs of the frontier rows (the last F query rows of this forward)."""
        f = frontier.numel()
        if self.exit_norm is None:
            hn, base = self.head.tap
            rows = {"hn": hn[0, -f:], "base": base[0, -f:]}
        elif self.exit_mlp is None:
            rows = {"h": self.exit_norm.tap[0, -f:]}
        else:  # the exit layer's output less its LoRA delta, and the delta's input
            u = self.exit_mlp.tap[0][0, -f:]
            rows = {"h_frozen": self.exit_norm.tap[0, -f:] - self.exit_mlp.lora(u), "u": u}
        for row, (node, parent, token) in enumerate(zip(frontier.tolist(), tree.parents[frontier].tolist(),
                                                        tree.tokens[frontier].tolist())):
            key = self._keys.get(parent, ()) + (token,)
            self._keys[node] = key
            self._expanded[key] = {k: v[row] for k, v in rows.items()}

    # --- learning from verification -------------------------------------------------------------------
    def observe(self, feedback: StepFeedback) -> None:
        """Turn the verified nodes this drafter expanded into examples for the online learner."""
        if not self.learning or not self._expanded:
            return
        t0 = time.perf_counter()
        examples = self.examples(feedback)
        self._expanded, self._keys = {}, {}
        self.learner.observed(examples)
        self.learn_seconds += time.perf_counter() - t0

    def examples(self, feedback: StepFeedback) -> list[Example]:
        tokens = feedback.tokens.tolist()
        following = tokens[1:] + [int(feedback.bonus)]  # the target's token after each path node
        verified = _token_paths(feedback.tree)
        on_path = {tuple(tokens[: j + 1]): j for j in range(len(tokens))}
        mine = _children_by_path(self._drafted)
        nodes = feedback.path.tolist() if self.config.learning.train_on == "path" else range(len(verified))
        out = []
        for node in nodes:
            key = verified[node]
            features = self._expanded.get(key)
            if features is None:
                continue
            children = torch.tensor(mine.get(key, []), dtype=torch.long)
            j = on_path.get(key)
            rewards = None if j is None else (children == following[j]).float()
            if rewards is not None and self.config.learning.reward_missed and not rewards.any():
                missed = torch.tensor([following[j]])
                if self.columns(missed)[0] >= 0:  # a token outside the draft vocabulary cannot be learned
                    children, rewards = torch.cat([children, missed]), torch.cat([rewards, torch.ones(1)])
            target = feedback.logits[node] if self.draft_ids is None else feedback.logits[node, self.draft_ids]
            # clones: rows of this step's [N, V] tensors, which must not be kept alive until the update
            out.append(Example({k: v.clone() for k, v in features.items()}, target.clone(), self.columns(children),
                               rewards))
        return out

    # --- save / load ------------------------------------------------------------------------------
    def save_adapter(self, folder: str | Path, domain: str | None = None) -> Path:
        """Write adapter.safetensors and config.json; the folder is replaced as a unit (a reader
        finds the old adapter or the new one, never a mix)."""
        folder = Path(folder)
        meta = {
            "format": ADAPTER_FORMAT, "version": 1, "domain": domain, "exit_layer": self.exit_layer,
            "target": self._target_facts(), "dvi": self.config.model_dump(mode="json"), "state": self.learner.state(),
        }
        weights = {k: p.detach() for k, p in self.adapter_parameters().items()}
        if self.draft_ids is not None:
            weights[DRAFT_IDS] = self.draft_ids
        with atomic.replaced_folder(folder, keep_others=False) as staged:
            atomic.save_tensors(staged / WEIGHTS_FILE, weights)
            atomic.save_tensors(staged / LEARNER_FILE, self.learner.pending_tensors())
            atomic.write_json(staged / CONFIG_FILE, meta)
        return folder

    def load_adapter(self, folder: str | Path) -> dict:
        """Load a saved adapter into this drafter, checking it was made for this target, exit layer
        and adapter shape. Returns the saved metadata."""
        folder = atomic.recover_folder(Path(folder))  # finish a save a crash interrupted
        meta = read_adapter_config(folder)
        saved = DVIConfig.model_validate(meta["dvi"])
        if meta["exit_layer"] != self.exit_layer:
            raise ValueError(f"{folder}: the adapter is for exit layer {meta['exit_layer']}, this drafter exits "
                             f"at layer {self.exit_layer}")
        if saved.shape() != self.config.shape():
            raise ValueError(f"{folder}: adapter shape {saved.shape()} differs from this drafter's {self.config.shape()}")
        facts = self._target_facts()
        if meta["target"] != facts:
            raise ValueError(f"{folder}: the adapter was learned for another target ({meta['target']}); "
                             f"this target is {facts}")
        state = read_weights(folder / WEIGHTS_FILE)
        saved_ids = state.pop(DRAFT_IDS, None)
        if (saved_ids is None) != (self.draft_ids is None) or (
                saved_ids is not None and not torch.equal(saved_ids.long(), self.draft_ids)):
            raise ValueError(f"{folder}: the adapter's exit head covers another vocabulary than this drafter's "
                             f"({_vocab_name(saved_ids)} vs {_vocab_name(self.draft_ids)})")
        params = self.adapter_parameters()
        if set(state) != set(params):
            raise ValueError(f"{folder / WEIGHTS_FILE}: tensors {sorted(state)}, expected {sorted(params)}")
        for k, p in params.items():
            if state[k].shape != p.shape:
                raise ValueError(f"{folder / WEIGHTS_FILE}: {k!r} has shape {tuple(state[k].shape)}, expected {tuple(p.shape)}")
            if not torch.isfinite(state[k]).all():
                raise ValueError(f"{folder / WEIGHTS_FILE}: {k!r} has non-finite values (corrupt adapter)")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k].to(p.dtype))
        self.learner.load_state(meta.get("state", {}))
        if (folder / LEARNER_FILE).exists():  # older adapters have none: fresh optimizer moments
            self.learner.load_pending_tensors(read_weights(folder / LEARNER_FILE))
        return meta

    @classmethod
    def from_adapter(cls, target: PreTrainedModel, folder: str | Path, exit_layer: int | None = None,
                     name: str | None = None) -> "DVIDrafter":
        """A drafter shaped and configured as the saved adapter, with its weights and learner
        state (it goes on learning). `exit_layer`, when given, must be the adapter's."""
        folder = atomic.recover_folder(Path(folder))
        meta = read_adapter_config(folder)
        layer = exit_layer if exit_layer is not None else meta["exit_layer"]
        saved_ids = read_weights(folder / WEIGHTS_FILE).get(DRAFT_IDS)  # the saved vocabulary, wherever it came from
        drafter = cls(target, layer, DVIConfig.model_validate(meta["dvi"]), name=name,
                      draft_ids=None if saved_ids is None else saved_ids.long())
        drafter.load_adapter(folder)
        return drafter

    def _target_facts(self) -> dict:
        c = self.model.config
        return {"fingerprint": self.fingerprint, "vocab_size": int(c.vocab_size), "hidden_size": int(c.hidden_size)}


def _vocab_name(ids: torch.Tensor | None) -> str:
    return "the full vocabulary" if ids is None else f"a {ids.numel()}-token draft vocabulary"


def _token_paths(tree) -> list[tuple[int, ...]]:
    """Each node's token path from the root (parents precede children)."""
    keys: list[tuple[int, ...]] = []
    for token, parent in zip(tree.tokens.tolist(), tree.parents.tolist()):
        keys.append((keys[parent] if parent >= 0 else ()) + (token,))
    return keys


def _children_by_path(tree) -> dict[tuple[int, ...], list[int]]:
    """Token path of a node -> the tokens of its children in `tree`."""
    out: dict[tuple[int, ...], list[int]] = {}
    keys = _token_paths(tree)
    for node, parent in enumerate(tree.parents.tolist()):
        if parent >= 0:
            out.setdefault(keys[parent], []).append(int(tree.tokens[node]))
    return out
