"""The fast decoder's plan of a model (docs/design.md "The cost of a step"): what a forward of
runtime/decoder.py and of the server's batched forward (serve/batch.py) reads from the model,
resolved once, and the layer loop both run, so that their arithmetic is one.

A one-token forward of a small target is mostly overhead, not kernels: per layer seven linears,
each with its module, hook and packed-weight checks and its padding to MIN_ROWS, two norm
modules, two rotations and dozens of module attribute lookups. The plan holds per layer the
packed weights (q|k|v as one, gate|up as one: four linears instead of seven, bit-identical to
the separate ones), the norms' weights and epsilon, and the activation; the hidden state is
padded once per forward (runtime.prepacked.padded_rows) instead of at every linear, and q and k
are rotated in one call. Norms and rotation are transformers' ops, op for op.

What is not a plain piece (a module with forward hooks, a wrapper such as an adapted linear or
norm, a non-gated MLP, gradients on, a CUDA model, $SPECMUX_PREPACK=0) runs its module's own
forward on the real rows, as [1, n, ...] as the module would see them.

The plan is rebuilt whenever it is stale, which `Plan.current` checks at every forward (about
30-60 µs on SmolLM2's 30 layers): a module or parameter swapped for another (looked up by
identity in its parent), a layer added or removed, a hook registered on a module the plan runs
without its forward (or a global hook), or a packed weight or bias changed in place (its version
counter). Rebuilding reuses the packed weights whose tensors did not change."""
from __future__ import annotations

from operator import attrgetter
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

from . import native_layer, prepacked

_VERSION = attrgetter("_version")

RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
SILU = ("SiLU", "SiLUActivation")


class SlotWatch:
    """What a compiled forward read, checked unchanged in C-level maps (a plan before every target
    forward, drafters.compiled's members before every drafting level): each slot (a parent's
    `_modules` / `_parameters` / `_buffers` dict, a name) still holds the same object (kept alive
    here, so an id is never a freed object's reused one), each tensor its version (in-place
    edits; inference tensors cannot change outside inference mode), each hook dict still empty.
    ~0.2 ms over the default target's ~900 slots, where list comprehensions cost ~1 ms."""

    __slots__ = ("dicts", "names", "held", "ids", "tensors", "versions", "hooks")

    def __init__(self, slots: list[tuple[dict, str]], tensors, hooks: list[dict]):
        self.dicts, self.names = [d for d, _ in slots], [name for _, name in slots]
        self.held = list(map(dict.get, self.dicts, self.names))
        self.ids = list(map(id, self.held))
        self.tensors = [t for t in tensors if not t.is_inference()]
        self.versions = list(map(_VERSION, self.tensors))
        self.hooks = list(hooks)

    @classmethod
    def whole(cls, model: nn.Module) -> "SlotWatch":
        """Every submodule, parameter and buffer slot of `model`, its tensors and hook dicts."""
        modules = list(model.modules())
        slots = [(d, name) for m in modules for d in (m._modules, m._parameters, m._buffers) for name in d]
        tensors = [d[name] for d, name in slots if isinstance(d[name], torch.Tensor)]
        return cls(slots, tensors, [h for m in modules for h in (m._forward_hooks, m._forward_pre_hooks)])

    def unchanged(self) -> bool:
        return (list(map(id, map(dict.get, self.dicts, self.names))) == self.ids
                and list(map(_VERSION, self.tensors)) == self.versions and not any(self.hooks))


class Packed:
    """Linears over one input on one packed weight (their outputs side by side)."""

    __slots__ = ("weight", "bias")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor, n: int) -> torch.Tensor:
        if x.shape[0] == prepacked.padded_rows(x.shape[0], x.dtype):  # a layer's state: padded already
            return prepacked.apply(x, self.weight, self.bias)
        return prepacked.apply(prepacked.pad_rows(x), self.weight, self.bias)[: x.shape[0]]


class Norm:
    """transformers' RMSNorm of the Llama family (LlamaRMSNorm.forward), op for op."""

    __slots__ = ("weight", "eps")

    def __init__(self, weight: torch.Tensor, eps: float):
        self.weight, self.eps = weight, eps

    def __call__(self, x: torch.Tensor, n: int) -> torch.Tensor:
        x32 = x.to(torch.float32)
        variance = x32.pow(2).mean(-1, keepdim=True)
        return self.weight * (x32 * torch.rsqrt(variance + self.eps)).to(x.dtype)


class ModuleCall:
    """A module's own forward on the first n rows, as [1, n, ...]; padding rows come back zero."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, x: torch.Tensor, n: int) -> torch.Tensor:
        y = self.module(x[None, :n])[0]
        if x.shape[0] == n:
            return y
        return torch.cat([y, y.new_zeros(x.shape[0] - n, *y.shape[1:])])


class GatedMLP:
    """down(act(gate(x)) * up(x)) with gate|up on one packed weight."""

    __slots__ = ("gate_up", "half", "act", "down")

    def __init__(self, gate_up: Packed, half: int, act: Callable, down: Callable):
        self.gate_up, self.half, self.act, self.down = gate_up, half, act, down

    def __call__(self, x: torch.Tensor, n: int) -> torch.Tensor:
        gu = self.gate_up(x, n)
        return self.down(self.act(gu[:, : self.half]) * gu[:, self.half :], n)


class LayerPlan:
    __slots__ = ("input_norm", "qkv", "q", "k", "v", "q_norm", "k_norm", "o", "post_norm", "mlp", "fused")

    def __init__(self, **parts):
        for name in self.__slots__:
            setattr(self, name, parts.get(name))


class Plan:
    """A model's plan; `Plan(model, packed, dtype, heads, kv_heads, head_dim)`. packed: use packed
    linears (the caller's check: CPU, gradients off); they take weights of the state's dtype."""

    def __init__(self, model: nn.Module, packed: bool, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int,
                 scale: float | None = None):
        self.model, self.dtype = model, dtype
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.scale = head_dim ** -0.5 if scale is None else scale  # the attention's
        self._slots: list[tuple[dict, str]] = []  # (a parent's _modules or _parameters, name) looked up
        self._hooks: list[dict] = []  # hook dicts of modules run without their forward
        self._versioned: list[torch.Tensor] = []  # packed weights and biases (in-place edits)
        body = self._child(model, "model")
        self._layer_list = self._child(body, "layers")._modules
        self.embed = self._child(body, "embed_tokens")
        self.rotary = self._child(body, "rotary_emb")
        self.rotations = RotaryTable(self.rotary, dtype) if RotaryTable.fits(self.rotary) else None
        if self.rotations is not None:
            self._bypass(self.rotary)
        self.layers = [self._layer(self._child(self._layer_list, str(i)), packed) for i in range(len(self._layer_list))]
        self.norm = self._norm(self._child(body, "norm"))
        self.fused = any(layer.fused is not None for layer in self.layers)
        self.head = self._linears([self._child(model, "lm_head")], packed)
        self._watch = SlotWatch(self._slots, self._versioned, self._hooks)
        self._layer_count = len(self._layer_list)

    def current(self) -> bool:
        """Whether the model still is what the plan was built from (module doc). Checked before
        every forward over ~900 slots of the default target: in C-level maps (~0.2 ms, where
        the list comprehensions cost ~1 ms, a tenth of a one-token forward on 4-bit weights)."""
        return (self._watch.unchanged() and len(self._layer_list) == self._layer_count
                and not (torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks))

    def run(self, ids: torch.Tensor, positions: torch.Tensor, n: int, attend: Callable, wanted=frozenset(),
            direct: native_layer.DirectCache | None = None):
        """The layers over `ids` / `positions` [P] (P = padded_rows(n); rows past n are padding,
        their attention output zero). attend(i, q, k, v) -> [P, heads * head_dim]: layer i's
        attention of the rotated q [P, heads, hd], k, v [P, kv_heads, hd] (it writes the cache).
        direct: the one cache the rows attend with the exact kernel (runtime.native_layer.DirectCache),
        where they do: a compiled layer not in its `skip` then runs whole (FusedLayer.forward).
        Returns the final normed state of the n real rows and {layer: its input's n rows} for
        the layer indices in `wanted` (len(layers): the final normed state)."""
        rows = ids.shape[0]
        h = self.embed(ids.view(1, rows))
        if self.rotations is not None:
            cos, sin = self.rotations(h, positions)
        else:
            cos, sin = rotation_tables(*self.rotary(h, positions.view(1, rows)))
        h = h[0]
        captured = {}
        if self.fused:  # the compiled layers update h in place: captures are copies, rotations rows
            h = h.contiguous()
            rows_cos, rows_sin = (t.reshape(rows, -1).to(self.dtype).contiguous() for t in (cos, sin))
        heads, kv = self.heads, self.kv_heads
        for i, layer in enumerate(self.layers):
            if i in wanted:
                captured[i] = h[:n].clone() if self.fused else h[:n]
            if layer.fused is not None:
                if direct is not None and i not in direct.skip:
                    layer.fused.forward(h, rows_cos, rows_sin, direct, i)
                    continue
                qkv = layer.fused.pre(h, rows_cos, rows_sin)
                layer.fused.post(h, attend(i, qkv[:, :heads], qkv[:, heads : heads + kv], qkv[:, heads + kv :]))
                continue
            q, k, v = self._project(layer, layer.input_norm(h, n), n, cos, sin)
            h = h + layer.o(attend(i, q, k, v), n)
            h = h + layer.mlp(layer.post_norm(h, n), n)
        h = self.norm(h[:n], n)
        if len(self.layers) in wanted:
            captured[len(self.layers)] = h
        return h, captured

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        return self.head(rows, rows.shape[0]).float()

    def _project(self, layer: LayerPlan, x: torch.Tensor, n: int, cos, sin):
        """q, k (rotated) and v of a layer: [P, heads or kv_heads, head_dim]."""
        rows, heads, kv, hd = x.shape[0], self.heads, self.kv_heads, self.head_dim
        if layer.qkv is not None:
            qkv = layer.qkv(x, n).view(rows, heads + 2 * kv, hd)
            q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv], qkv[:, heads + kv :]
        else:
            q, k, v = (f(x, n).view(rows, -1, hd) for f in (layer.q, layer.k, layer.v))
        if layer.q_norm is not None:  # qwen3: RMSNorm over each head, before the rotation
            q, k = layer.q_norm(q, n), layer.k_norm(k, n)
        elif layer.qkv is not None:  # q and k side by side: one rotation (elementwise, the same bits)
            qk = rotate(qkv[:, : heads + kv], cos, sin)
            return qk[:, :heads], qk[:, heads:], v
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    # --- building -------------------------------------------------------------------------------
    def _child(self, parent: nn.Module | dict, name: str):
        """parent's submodule `name`, remembered for `current`."""
        modules = parent if isinstance(parent, dict) else parent._modules
        self._slots.append((modules, name))
        child = modules.get(name)
        if child is None:
            raise ValueError(f"the fast decoder needs a module {name!r} (the Llama module layout)")
        return child

    def _param(self, module: nn.Module, name: str) -> torch.Tensor | None:
        self._slots.append((module._parameters, name))
        return module._parameters.get(name)

    @staticmethod
    def _plain(module: nn.Module) -> bool:
        return not (module._forward_hooks or module._forward_pre_hooks)

    def _bypass(self, *modules: nn.Module) -> None:
        """The plan runs these without their forward: a hook registered on one later makes it stale."""
        for m in modules:
            self._hooks += [m._forward_hooks, m._forward_pre_hooks]

    def _layer(self, layer: nn.Module, packed: bool) -> LayerPlan:
        attn, mlp = self._child(layer, "self_attn"), self._child(layer, "mlp")
        q, k, v = (self._child(attn, name) for name in ("q_proj", "k_proj", "v_proj"))
        qkv = self._linears([q, k, v], packed)
        parts = dict(qkv=qkv) if isinstance(qkv, Packed) else dict(q=self._linears([q], packed),
                                                                    k=self._linears([k], packed),
                                                                    v=self._linears([v], packed))
        if "q_norm" in attn._modules:
            parts.update(q_norm=self._norm(self._child(attn, "q_norm")), k_norm=self._norm(self._child(attn, "k_norm")))
        plan = LayerPlan(input_norm=self._norm(self._child(layer, "input_layernorm")),
                         o=self._linears([self._child(attn, "o_proj")], packed),
                         post_norm=self._norm(self._child(layer, "post_attention_layernorm")),
                         mlp=self._mlp(mlp, packed), **parts)
        plan.fused = self._fused(plan)  # None where no compiled layer takes the dtype (native_layer.kernel_for)
        return plan

    def _fused(self, layer: LayerPlan) -> "native_layer.FusedLayer | None":
        """The compiled layer (runtime/native_layer.py: bf16 on AMX, float32 on our float32
        linears) where every piece around the attention is a plain one it computes; None: the
        layer runs op by op."""
        mlp = layer.mlp
        if not (isinstance(layer.input_norm, Norm) and isinstance(layer.post_norm, Norm) and isinstance(layer.qkv, Packed)
                and isinstance(layer.o, Packed) and layer.q_norm is None and isinstance(mlp, GatedMLP)
                and mlp.act is F.silu and isinstance(mlp.down, Packed)):
            return None
        parts = (layer.input_norm, layer.qkv, layer.o, layer.post_norm, mlp.gate_up, mlp.down,
                 self.heads, self.kv_heads, self.head_dim)
        return native_layer.FusedLayer(*parts, self.scale) if native_layer.FusedLayer.fits(*parts) else None

    def _mlp(self, mlp: nn.Module, packed: bool):
        names = ("gate_proj", "up_proj", "down_proj", "act_fn")
        if not all(name in mlp._modules for name in names):
            return ModuleCall(mlp)  # not the gated MLP: its own forward
        gate, up, down, act = (self._child(mlp, name) for name in names)
        gate_up = self._linears([gate, up], packed)
        if not isinstance(gate_up, Packed):
            return ModuleCall(mlp)
        act_fn = act
        if type(act).__name__ in SILU and self._plain(act):
            act_fn = F.silu
            self._bypass(act)
        return GatedMLP(gate_up, gate.out_features, act_fn, self._linears([down], packed))

    def _linears(self, modules: list[nn.Module], packed: bool):
        """Packed over the modules' joint weight where each is a plain nn.Linear, else (one
        module) its own forward; None for several modules that cannot be one."""
        if packed and all(type(m) is nn.Linear and self._plain(m) for m in modules):
            weights = [self._param(m, "weight") for m in modules]
            biases = [self._param(m, "bias") for m in modules]
            same = all(t.dtype == self.dtype for t in (*weights, *biases) if t is not None)
            group = prepacked.packed_group(weights, biases) if same else None
            if group is not None:
                self._bypass(*modules)
                self._versioned += [t for t in (*weights, *biases) if t is not None]
                return Packed(*group)
        return ModuleCall(modules[0]) if len(modules) == 1 else None

    def _norm(self, module: nn.Module):
        if type(module).__name__ in RMS_NORMS and self._plain(module):
            self._bypass(module)
            return Norm(self._param(module, "weight"), module.variance_epsilon)
        return ModuleCall(module)


class RotaryTable:
    """The rotary module's `rotation_tables` at positions 0 .. n - 1, made by the module itself
    (one call over them all) and grown by doubling; a forward gathers its rows' entries (the
    module's per-forward call cost ~1.5% of a drafted step on 4-bit weights). Taken for rotary
    modules whose values depend on the position alone (transformers' rope types other than the
    dynamic ones, which rescale with the sequence length). The module's values are elementwise in
    the position, so a gathered row is the bits a call at that position gives: checked at every
    growth against a call at the positions of the forward that grew it (where they differ, the
    module is called per forward again)."""

    __slots__ = ("rotary", "dtype", "cos", "sin", "key")

    def __init__(self, rotary: nn.Module, dtype: torch.dtype):
        self.rotary, self.dtype = rotary, dtype
        self.cos = self.sin = self.key = None

    @staticmethod
    def fits(rotary: nn.Module) -> bool:
        rope = getattr(rotary, "rope_type", None)
        return (isinstance(rope, str) and "dynamic" not in rope and rope != "longrope"
                and isinstance(getattr(rotary, "inv_freq", None), torch.Tensor)
                and not (rotary._forward_hooks or rotary._forward_pre_hooks))

    def __call__(self, h: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [1, P, d] (its dtype and device), positions [P] -> cos, signed sin [P, 1, hd]."""
        if self.key == "off":
            return rotation_tables(*self.rotary(h, positions.view(1, -1)))
        inv = self.rotary.inv_freq
        key = (inv.data_ptr(), None if inv.is_inference() else inv._version, h.dtype, h.device)
        need = int(positions.max()) + 1
        if self.cos is not None and (key != self.key or self.cos.shape[0] < need):
            self.cos = None
        if self.cos is None:
            n = max(256, 1 << (need - 1).bit_length())
            cos, sin = rotation_tables(*self.rotary(h[:, :1], torch.arange(n, device=h.device).view(1, n)))
            alone = rotation_tables(*self.rotary(h, positions.view(1, -1)))
            if not (torch.equal(cos[positions], alone[0]) and torch.equal(sin[positions], alone[1])):
                self.key = "off"  # (never seen: the module's values are not elementwise in the position)
                return alone
            self.cos, self.sin, self.key = cos, sin, key
        return self.cos[positions], self.sin[positions]


def rotation_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary embedding's cos, sin [1, P, hd] as `rotate` takes them: [P, 1, hd] (against
    [P, heads, hd]), rotate_half's minus moved onto the first half of sin."""
    half = cos.shape[-1] // 2
    return cos[0, :, None], torch.cat([-sin[0, :, None, :half], sin[0, :, None, half:]], dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """RoPE as transformers applies it, x * cos + rotate_half(x) * sin, to the bit: rotate_half(x)
    is x rolled by half with its first half negated, and (-a) * b == a * (-b) exactly, so the
    minus sits on sin (`rotation_tables`) and the roll is one op. x [P, heads, hd]."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
