"""The general path: any transformers causal LM through its OWN forward and its own cache
(docs/design.md "The fast decoder and the general path").

runtime/decoder.py runs the families it knows (llama, mistral, qwen2, qwen3) on a plain-PyTorch
forward over a preallocated cache. Every other causal LM runs here, lossless the same way: the
model's forward gets the tree as transformers takes it — position ids = prefix + depth and an
additive 4D mask in the model dtype (0 where a row attends, the dtype's most negative value
elsewhere; a 4D mask is used as given, no causal merge) — against a transformers DynamicCache,
and after verification every layer keeps exactly prefix + accepted path (selected along the
sequence axis, since transformers has no API to keep arbitrary positions).

Sliding windows: the cache holds every layer in full (a sliding-window cache layer drops old
entries by slot count, which a tree's siblings would push out of the window early), and each
layer's window is applied in its mask by position, as plain decoding hides keys (a query at p
sees a key at k only if p - k < W). Which layers slide, and by how much, is what transformers'
own DynamicCache(config=...) decides for plain decoding. Models whose layers share one window
(or none) get one mask; hybrid models (`layer_types` with sliding and full layers) get a dict
{layer type: mask}, which their forward routes to each layer. A layer whose cache is not
per-token keys and values (recurrent or linear attention, chunked attention, shared KV) has no
tree forward here and is refused with its type named; so is a model whose forward fails the
tree check every GeneralDecoder runs when it is built (e.g. ALiBi biases by cache slot).
The model's own linears run on prepacked weights (PrepackedLinears), as the fast decoder's do."""
from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from trees import attention_mask, within_window

from .decoder import SUPPORTED_MODEL_TYPES, Decoder, DecoderOutput
from .prepacked import matmul

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")  # they take an additive float 4D mask as given
SIBLINGS = 16  # children of the root in the tree every GeneralDecoder checks its model on


def make_decoder(model: PreTrainedModel, invariant: bool | None = None,
                 target: bool = False) -> "Decoder | GeneralDecoder":
    """The fast Decoder for the families it knows (runtime.decoder.SUPPORTED_MODEL_TYPES), the
    general path through the model's own forward for every other causal LM. `.kind` says which
    ("fast" or "general"); a model that is not a causal LM is refused.
    invariant: the fast decoder's batch-invariant attention (None: its default); the general
    path has none, so asking it for one is an error. target: the forward verifies trees, so a
    16-bit model on the general path is refused (its rows move with the rows beside them by an
    ulp, and near-ties flip: docs/design.md "Exact bf16"); a drafter's forward may be inexact."""
    name = require_causal_lm(model)
    if model.config.model_type in SUPPORTED_MODEL_TYPES:
        return Decoder(model, invariant=invariant)
    if invariant:
        raise ValueError(f"a batch-invariant forward exists for model types {', '.join(SUPPORTED_MODEL_TYPES)} only, "
                         f"not {model.config.model_type!r} (it runs on the general path)")
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    if target and torch.finfo(dtype).bits < 32:
        raise ValueError(f"{name} in {dtype} as the target: the general path has no batch-invariant forward, so "
                         "greedy output would not always equal plain decoding; load it in float32 "
                         f"(Composer(..., dtype='float32')); a {dtype} target is exact on the fast path only "
                         f"({', '.join(SUPPORTED_MODEL_TYPES)})")
    return GeneralDecoder(model)


def require_causal_lm(model) -> str:
    """`model`'s name for messages; a ValueError unless it is a decoder-only LM with a head."""
    config = getattr(model, "config", None)
    name = f"{type(model).__name__} (model type {getattr(config, 'model_type', None)!r})"
    if (not isinstance(model, PreTrainedModel) or not model.can_generate()
            or getattr(config, "is_encoder_decoder", False)):
        raise ValueError(f"{name} is not a causal LM: specmux needs a decoder-only model with an LM head "
                         "(e.g. loaded with transformers' AutoModelForCausalLM)")
    return name


class ModelCache:
    """The model's own transformers cache (full, non-sliding layers) and each slot's token
    position (tree nodes share positions; sliding-window masks need them)."""

    def __init__(self):
        self.hf = DynamicCache()  # layers appear as the model writes them, all DynamicLayer
        self.positions = torch.zeros(0, dtype=torch.long)

    @property
    def length(self) -> int:
        return int(self.positions.numel())

    def append(self, positions: torch.Tensor) -> None:
        self.positions = torch.cat([self.positions, positions.reshape(-1).cpu().to(torch.long)])

    def crop(self, length: int) -> None:
        """Keep the first `length` positions."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        self._select(slice(0, length))

    def keep(self, start: int, tail: torch.Tensor) -> None:
        """Keep positions [0, start) plus `start + tail` (increasing offsets), in every layer."""
        tail = tail.reshape(-1).cpu().to(torch.long)
        n = int(tail.numel())
        if n and int(tail[-1]) >= self.length - start:
            raise ValueError(f"cannot keep offset {int(tail[-1])} past position {start} of a cache of length {self.length}")
        if torch.equal(tail, torch.arange(n)):  # a chain accepted in order: a crop
            self._select(slice(0, start + n))
        else:
            self._select(torch.cat([torch.arange(start), start + tail]))

    def _select(self, index: slice | torch.Tensor) -> None:
        for i, layer in enumerate(self.hf.layers):
            if not getattr(layer, "is_initialized", True) or layer.keys is None:
                continue
            if layer.keys.shape[-2] != self.length:
                raise RuntimeError(f"cache layer {i} holds {layer.keys.shape[-2]} positions, expected {self.length}")
            if isinstance(index, slice):
                layer.keys, layer.values = layer.keys[..., index, :], layer.values[..., index, :]
            else:
                rows = index.to(layer.keys.device)
                layer.keys, layer.values = layer.keys.index_select(-2, rows), layer.values.index_select(-2, rows)
        self.positions = self.positions[index]


class GeneralDecoder:
    """`GeneralDecoder(model)`: the Decoder interface (new_cache, forward -> DecoderOutput) over
    `model`'s own forward. Not batch-invariant: a bfloat16 model's rows may differ with the
    number of rows beside them (docs/design.md "Exact bf16"), so a target runs it in float32
    (make_decoder(..., target=True) refuses 16-bit ones); a drafter may run it in any dtype."""

    kind = "general"
    invariant = False

    def __init__(self, model: PreTrainedModel):
        config = model.config
        name = require_causal_lm(model)
        attn = getattr(config, "_attn_implementation", None)
        if attn not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"{name} uses attn_implementation={attn!r}; specmux's tree forward needs one that takes an "
                             f"additive 4D mask as given: load it with attn_implementation='sdpa' or 'eager'")
        self.model = model
        self.dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        self.device = next(model.parameters()).device
        self.num_layers = int(config.get_text_config(decoder=True).num_hidden_layers)
        self.windows, self.layer_types = layer_windows(model)
        self._keeps_rows = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._check_tree_forward(name)

    def new_cache(self, capacity: int = 256) -> ModelCache:
        """A fresh cache (`capacity` is the fast decoder's preallocation; this one grows as it goes)."""
        return ModelCache()

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: ModelCache,
        mask: torch.Tensor | None,
        hidden_layers: Sequence[int] = (),
        logits_rows: slice | torch.Tensor | None = None,
    ) -> DecoderOutput:
        """As Decoder.forward: `input_ids` [n] at `positions` [n] join the cache; mask additive
        [n, cache.length + n] in the model dtype, or None (causal after the whole cache)."""
        n = int(input_ids.numel())
        query_positions = positions.reshape(-1).cpu().to(torch.long)
        key_positions = torch.cat([cache.positions, query_positions])
        if mask is None:
            allowed = torch.ones(n, n, dtype=torch.bool).tril()
            mask = attention_mask(allowed, cache.length, self.dtype)
        if tuple(mask.shape) != (n, cache.length + n):
            raise ValueError(f"mask of shape {tuple(mask.shape)} for {n} rows after {cache.length} cached positions")
        mask = mask.to(self.device, self.dtype)
        rows = torch.arange(n)[logits_rows] if logits_rows is not None else torch.arange(n)
        options = {}
        if self._keeps_rows:  # the head over the asked-for rows only (the last k as an int: every model takes it)
            suffix = rows.numel() > 0 and torch.equal(rows, torch.arange(n - rows.numel(), n))
            options["logits_to_keep"] = int(rows.numel()) if suffix else rows.to(self.device)
        with PrepackedLinears():
            out = self.model(
                input_ids=input_ids.reshape(1, n).to(self.device),
                position_ids=query_positions.view(1, n).to(self.device),
                attention_mask=self._layer_masks(mask, query_positions, key_positions),
                past_key_values=cache.hf, use_cache=True, output_hidden_states=bool(hidden_layers), **options,
            )
        cache.append(query_positions)
        logits = out.logits[0] if self._keeps_rows else out.logits[0, rows.to(self.device)]
        hidden = {}
        for i in hidden_layers:
            hidden[i] = out.hidden_states[self.num_layers if i == -1 else i][0]
        return DecoderOutput(logits=logits.float(), hidden_states=hidden)

    def _check_tree_forward(self, name: str) -> None:
        """Refuse a model whose forward does not take a tree as given (ALiBi biases built from
        cache slots or from a 2D padding mask, positions counted from the cache length, ...):
        after a 3-token prefix, a tree of a root, SIBLINGS children and one grandchild under the
        last child (so its path's slots run SIBLINGS - 1 past its positions); keep that path and
        feed one more token. Every row on the path must match a plain causal forward of the same
        tokens: exactly but for rounding (float32), within the rounding of 16-bit types, which a
        slot-for-position error of SIBLINGS - 1 exceeds by far."""
        vocab = int(self.model.config.get_text_config(decoder=True).vocab_size)
        n = SIBLINGS + 2  # tree nodes: root, the children, the grandchild
        ids = (torch.arange(3 + n + 1) * 7 + 3) % vocab
        parents = [-1] + [0] * SIBLINGS + [SIBLINGS]
        allowed = torch.eye(n, dtype=torch.bool)
        for node, parent in enumerate(parents):
            if parent >= 0:
                allowed[node] |= allowed[parent]
        depths = allowed.sum(1) - 1
        path = torch.tensor([0, SIBLINGS, SIBLINGS + 1])
        try:
            with torch.inference_mode():
                cache, plain = self.new_cache(), self.new_cache()
                self.forward(ids[:3], torch.arange(3), cache, None)
                tree = self.forward(ids[3:3 + n], 3 + depths, cache, attention_mask(allowed, 3, self.dtype))
                cache.keep(3, path)
                after = self.forward(ids[-1:], torch.tensor([6]), cache, None)
                tokens = torch.cat([ids[:3], ids[3 + path], ids[-1:]])
                want = self.forward(tokens, torch.arange(7), plain, None, logits_rows=slice(3, None)).logits
        except Exception as e:  # the model's own forward, e.g. an ALiBi built from a 2D mask
            raise ValueError(f"{name}: its forward cannot run a draft tree (an additive 4D mask and position ids "
                             f"against its cache), so specmux cannot verify trees on it: {type(e).__name__}: {e}") from e
        got = torch.cat([tree.logits[path], after.logits])
        error, scale = float((got - want).abs().max()), float(want.abs().max())
        # of the logits' scale; seen on tiny models of 11 families: float32 <= 3.4e-6, bfloat16 <= 0.016,
        # MPT's slot-for-position error 0.39 in either
        tolerance = 1e-3 if torch.finfo(self.dtype).bits >= 32 else 0.1
        if not error <= tolerance * scale:
            raise ValueError(
                f"{name}: a draft tree through its forward does not give the logits of plain decoding (they differ by "
                f"{error:.3g} on a scale of {scale:.3g}): it does not take positions from position_ids and the 4D mask "
                "alone (e.g. ALiBi biases by cache slot), so specmux cannot verify trees on it losslessly")

    def _layer_masks(self, mask: torch.Tensor, query_positions, key_positions) -> torch.Tensor | dict:
        """The 4D mask every layer gets: one tensor where every layer has the same window, else
        {layer type: tensor} (a hybrid model's forward picks each layer's by its type)."""
        by_window = {w: (mask if w is None else within_window(mask, query_positions, key_positions, w))[None, None]
                     for w in set(self.windows)}
        if len(by_window) == 1:  # one window for all (models whose forward takes one mask: llama, mistral, phi3, ...)
            return by_window[self.windows[0]]
        return {t: by_window[self.windows[self.layer_types.index(t)]] for t in set(self.layer_types)}


class PrepackedLinears(TorchFunctionMode):
    """Within it, every F.linear (the model's own nn.Linear layers) runs runtime.prepacked.matmul:
    on a weight reordered once, at inference on the CPU (else F.linear itself), as the fast
    decoder's linears do (docs/design.md "The cost of a step")."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            given = {**dict(zip(("input", "weight", "bias"), args)), **kwargs}
            return matmul(given["input"], given["weight"], given.get("bias"))
        return func(*args, **kwargs)


def layer_windows(model: PreTrainedModel) -> tuple[list[int | None], list[str] | None]:
    """(each layer's sliding window or None, the config's layer types or None), as transformers
    sets up plain decoding (the cache layers DynamicCache(config=...) builds). Refuses a layer
    whose cache is not per-token keys and values, and windows a single mask cannot carry."""
    config = model.config.get_text_config(decoder=True)
    n_layers = int(config.num_hidden_layers)
    name = f"{type(model).__name__} (model type {model.config.model_type!r})"
    types = getattr(config, "layer_types", None)
    types = list(types[:n_layers]) if types is not None else None
    layers = DynamicCache(config=config).layers
    windows: list[int | None] = []
    for i in range(n_layers):
        layer = layers[i] if i < len(layers) else DynamicLayer()
        kind = types[i] if types is not None else None
        if type(layer) is DynamicLayer and kind in (None, "full_attention"):
            windows.append(None)
        elif type(layer) is DynamicSlidingWindowLayer and kind in (None, "sliding_attention"):
            windows.append(int(layer.sliding_window))
        else:
            raise ValueError(
                f"{name}: layer {i} is {kind or type(layer).__name__!r} (cache {type(layer).__name__}); specmux's "
                "general path verifies trees on layers with per-token keys and values (full or sliding-window "
                "attention) only")
    if types is None and len(set(windows)) > 1:
        raise ValueError(f"{name}: its layers have different windows {sorted(set(windows), key=str)} but the "
                         "model takes one mask for all (no layer_types)")
    if types is not None:
        for t in set(types):
            if len({w for w, k in zip(windows, types) if k == t}) > 1:
                raise ValueError(f"{name}: layers of type {t!r} have different windows")
    return windows, types
