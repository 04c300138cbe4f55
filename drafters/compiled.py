"""Feature drafters' inference forward on the compiled layer (runtime/layer_kernel.c in bf16 on
AMX, runtime/layer_f32.c in float32 elsewhere; docs/design.md "The cost of a step").

A drafting level of two shipped EAGLE-3 drafters in lockstep ran ~100 torch ops around its
linears (norms, the concatenation, rotation, SDPA, residuals, the head's norm), about as much
time as reading the members' weights. Here each member's level is two compiled calls: its layer
(q|k|v over [norm(emb) | norm(h)], rotation, the cache write, attention, o, MLP, residuals:
`layer_forward` with the embedding's norm) and its final norm with the head (`norm_linear`).

Drafts move speed, never the output law, so this arithmetic need not be the torch path's; it is
close to it (the same bf16 roundings, tests/test_drafters_compiled.py) and row-invariant, so a
lockstep group still drafts each member's tree exactly as the member alone does.

Taken where every piece is the plain one: bf16 on a CPU with AMX or float32 on our float32
linears (runtime/native_layer.py), EAGLE-3 style without norm_before_residual, plain nn.Linear
layers (RepSpec merged), a frozen target or truncated head, no hooks, head dim a multiple of 32.
Otherwise (training, an eagle1 drafter, a low-rank head) the drafter runs its module forward as
before. On a CPU without native bf16 (AVX2) a drafting level ran ~100 float32 torch ops, 2-5 ms
for a 7M-parameter layer; the float32 calls are the same two per member.
"""
from __future__ import annotations

import ctypes
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from runtime import native_layer, native_linear, prepacked
from runtime.native import PARALLEL_WORK
from runtime.plan import SlotWatch
from runtime.kv import KVCache

from .heads import TargetHead, TruncatedHead
from .model import FeatureDrafterModel, RMSNorm


class CompiledMember:
    """One drafter's weights as the compiled calls take them, with the state they were read from."""

    __slots__ = ("state", "seen", "weights", "keep", "fc", "head", "norm", "__weakref__")

    def __init__(self, model: FeatureDrafterModel, state: tuple):
        layer, cfg = model.layers[0], model.config
        attn, mlp = layer.self_attn, layer.mlp
        packed = lambda linears: _native([m.weight for m in linears], [m.bias for m in linears], model.dtype)  # noqa: E731
        qkv = packed([attn.q_proj, attn.k_proj, attn.v_proj])
        o, gate_up, down = packed([attn.o_proj]), packed([mlp.gate_proj, mlp.up_proj]), packed([mlp.down_proj])
        self.fc = packed([model.fc])
        head = model.head.weight if isinstance(model.head, TargetHead) else model.head.proj.weight
        self.head = _native([head], [None], model.dtype)
        norms = [n.weight.detach().contiguous() for n in (layer.hidden_norm, layer.post_attention_layernorm,
                                                          layer.input_layernorm, model.norm)]
        biases = [None if b is None else b.detach().float().contiguous() for b in (qkv[1], o[1], down[1])]
        self.norm = (norms[3], float(model.norm.eps))
        self.keep = (norms, biases, qkv, o, gate_up, down)  # alive while pointed to
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        self.weights = ctypes.byref(native_layer.LayerWeights(
            ptr(norms[0]), qkv[0].pointer, o[0].pointer, ptr(norms[1]), gate_up[0].pointer,
            down[0].pointer, *(ptr(b) for b in biases), float(layer.hidden_norm.eps),
            float(layer.post_attention_layernorm.eps), cfg.head_dim ** -0.5, cfg.hidden_size, cfg.intermediate_size,
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, ptr(norms[2])))
        self.state = state
        self.seen = SlotWatch.whole(model)


def _native(weights: list[torch.Tensor], biases: list, dtype: torch.dtype) -> tuple:
    """(packed weight, joint bias) of weights side by side on our kernel of `dtype` (AMX bf16 or
    float32); _NotCompiled where they are not."""
    group = prepacked.packed_group(weights, biases)
    kind = native_linear.AmxWeight if dtype == torch.bfloat16 else native_linear.F32Weight
    if group is None or not isinstance(group[0], kind):
        raise _NotCompiled
    return group


class _NotCompiled(Exception):
    pass


_MEMBERS: "weakref.WeakKeyDictionary[FeatureDrafterModel, CompiledMember | None]" = weakref.WeakKeyDictionary()


def compiled_members(models) -> list[CompiledMember] | None:
    """Every model's CompiledMember (made on first use, remade when a weight changed), or None
    where one of them does not fit (they then all run their module forward)."""
    if torch.is_grad_enabled() or any(native_layer.kernel_for(model.dtype) is None for model in models):
        return None
    members = []
    for model in models:
        hit = _MEMBERS.get(model)
        if hit is not None and hit.seen.unchanged():
            members.append(hit)
            continue
        state = _state(model)
        if state is None:
            return None
        if hit is not None and hit.state == state:
            hit.seen = SlotWatch.whole(model)  # something it does not read changed
        else:
            try:
                hit = CompiledMember(model, state) if _fits(model) else None
            except _NotCompiled:
                hit = None
            if hit is None:
                return None
            _MEMBERS[model] = hit
        members.append(hit)
    return members


def _state(model: FeatureDrafterModel) -> tuple | None:
    """What a CompiledMember read: the modules' and tensors' identities and the tensors' versions
    (in-place edits); None where a module it reads is not there or has gained a hook."""
    try:
        layer = model.layers[0]
        attn, mlp, head = layer.self_attn, layer.mlp, model.head
        modules = [model, layer, attn, mlp, attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj,
                   mlp.up_proj, mlp.down_proj, model.fc, layer.input_layernorm, layer.hidden_norm,
                   layer.post_attention_layernorm, model.norm, head, *([head.proj] if isinstance(head, TruncatedHead) else [])]
        head_weight = head.proj.weight if isinstance(head, TruncatedHead) else head.weight
        tensors = [m.weight for m in modules[4:16]] + [m.bias for m in modules[4:12] if m.bias is not None] + [
            head_weight, model.embed_weight]
    except (AttributeError, IndexError):
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in modules):
        return None
    return (*map(id, modules), *((id(t), prepacked._version(t)) for t in tensors))


def _fits(model: FeatureDrafterModel) -> bool:
    cfg, dtype = model.config, model.dtype
    if (native_layer.kernel_for(dtype) is None or model.embed_weight.device.type != "cpu" or cfg.style != "eagle3"
            or cfg.norm_before_residual or cfg.head_dim % 32 or cfg.head_dim > 256 or cfg.hidden_size % 32
            or cfg.intermediate_size % 16):
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()) or prepacked._global_hooks():
        return False
    layer = model.layers[0]
    linears = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
               layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj, model.fc]
    norms = [layer.input_layernorm, layer.hidden_norm, layer.post_attention_layernorm, model.norm]
    head = model.head
    return (all(type(m) is nn.Linear and m.weight.dtype == dtype for m in linears)
            and all(type(n) is RMSNorm and n.weight.dtype == dtype for n in norms)
            and (isinstance(head, TargetHead) or (isinstance(head, TruncatedHead) and type(head.proj) is nn.Linear))
            and model.embed_weight.dtype == dtype)


def compiled_forward(members: list[CompiledMember], model: FeatureDrafterModel, ids: torch.Tensor, feats: torch.Tensor,
                     from_target: bool, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache,
                     last: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every member's forward after the cache's live entries (space reserved by the caller, which
    advances it): ids [m, T], feats [m, T, *], positions [m, T], mask additive [m, T, S] in the
    model's dtype -> (outputs [m, T, d], each member's head output at its last `last` rows)."""
    dtype = model.dtype
    lib = native_layer.kernel_for(dtype)
    layer_forward, norm_linear = ((lib.f32_layer_forward, lib.f32_norm_linear) if dtype == torch.float32
                                  else (lib.layer_forward, lib.norm_linear))
    m, rows = ids.shape
    emb = F.embedding(ids, model.embed_weight)
    if from_target:
        h = torch.stack([prepacked.apply(f.to(dtype).contiguous(), *member.fc) for f, member in zip(feats, members)])
    else:
        h = feats.to(dtype).contiguous().clone()
    cos, ssin = _rotations(model, positions, dtype)
    if mask.stride(-1) != 1:
        mask = mask.contiguous()
    keys, values, length = cache.keys[0], cache.values[0], cache.length
    threads = torch.get_num_threads()
    heads = model.config.num_attention_heads
    attention_threads = threads if rows * heads * (length + rows) >= PARALLEL_WORK else 1
    outs = []
    for b, member in enumerate(members):
        k, v = keys[b], values[b]
        _check(layer_forward(h[b].data_ptr(), emb[b].data_ptr(), rows, member.weights, cos[b].data_ptr(), ssin[b].data_ptr(),
                             k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1), length, mask[b].data_ptr(), mask.stride(1),
                             threads, attention_threads))
        head = member.head[0]
        out = torch.empty(last, head.shape[0], dtype=dtype)
        _check(norm_linear(h[b, rows - last :].data_ptr(), last, h.shape[-1], member.norm[0].data_ptr(),
                           member.norm[1], head.pointer, head.shape[0], out.data_ptr(), threads))
        outs.append(out)
    return h, outs


_ROTATIONS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _rotations(model: FeatureDrafterModel, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin (rotate_half's minus on the first half) at positions [m, T]: rows of a
    table the model's rotary made over positions 0 .. n - 1 (grown by doubling; its values are
    elementwise in the position), where a call per level cost ~1.5% of a drafted step."""
    rotary = model.rotary
    need = int(positions.max()) + 1
    hit = _ROTATIONS.get(rotary)
    key = (dtype, rotary.inv_freq.data_ptr(), rotary.scaling)
    if hit is None or hit[0] != key or hit[1].shape[0] < need:
        n = max(256, 1 << (need - 1).bit_length())
        cos, sin = rotary(torch.arange(n, device=positions.device), dtype)
        half = cos.shape[-1] // 2
        hit = _ROTATIONS[rotary] = (key, cos.contiguous(), torch.cat([-sin[..., :half], sin[..., half:]], dim=-1))
    return hit[1][positions], hit[2][positions]


def _check(status: int) -> None:
    if status == -2:
        raise ValueError("a drafter row sees no key (its mask hides every key)")
    native_layer._check(status)
