"""The feature-level drafter network (EAGLE-1/2, HASS and EAGLE-3 styles), nanoGPT-style.

input at drafter position t:  token x_{t+1} and a feature f_t (the target's hidden state at t,
or, deeper in a draft, the drafter's own output at the parent position)
  eagle1:  h = fc([emb(x); f])                      -> decoder layer (hidden wide)
  eagle3:  h = fc(f) if f comes from the target else f
           decoder layer attends over [norm(emb(x)); norm(h)] (2 x hidden wide)
output:    o (fed back as the next feature) and logits = head(norm(o)).
The token embedding is the target's, frozen (a non-persistent buffer, never saved).
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .config import DrafterConfig
from .heads import LowRankHead, TargetHead, TruncatedHead, head_operands
from runtime.kv import KVCache
from runtime.prepacked import linear
from .repspec import apply_repspec, merge_repspec
from .ttt_attention import TTTMask, ttt_attention


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Rotary(nn.Module):
    """RoPE exactly as the target computes it (default, or any transformers rope type)."""

    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        if cfg.rope_scaling is None:
            inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
            scaling = 1.0
        else:
            from transformers import LlamaConfig
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            rope = {**cfg.rope_scaling, "rope_theta": cfg.rope_theta}
            lc = LlamaConfig(hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
                             head_dim=cfg.head_dim, max_position_embeddings=cfg.max_position_embeddings,
                             rope_parameters=rope)
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope["rope_type"]](lc, None)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.scaling = float(scaling)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # [B, T, hd/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, hd]; cos/sin [B, T, hd]."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: DrafterConfig, in_features: int):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(in_features, self.n_head * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(in_features, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(in_features, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.hd, cfg.hidden_size, bias=cfg.o_bias)

    def forward(self, x, cos, sin, mask, past=None):
        """x [B, T, in]; mask additive [B|1, 1, T, S]. past: None, the earlier (k, v)
        [B, n_kv, S-T, hd] (training), or a KVCache (inference: this call's entries are written
        in place at its length). Returns the output and this call's (k, v) (RoPE applied)."""
        B, T, _ = x.shape
        q = linear(self.q_proj, x).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = linear(self.k_proj, x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = linear(self.v_proj, x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is None:
            keys, values = k, v
        elif isinstance(past, KVCache):
            keys, values = past.write(0, k, v)
        else:
            keys, values = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        rep = self.n_head // self.n_kv
        if torch.is_grad_enabled() and rep > 1:  # training: the GQA path's backward is not on every device
            keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
        if isinstance(mask, TTTMask):  # the training unroll's structured mask (drafters/ttt_attention.py)
            y = ttt_attention(q, keys, values, mask.step)
        else:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=keys.shape[1] != self.n_head)
        return linear(self.o_proj, y.transpose(1, 2).reshape(B, T, -1)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return linear(self.down_proj, F.silu(linear(self.gate_proj, x)) * linear(self.up_proj, x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        self.eagle3 = cfg.style == "eagle3"
        self.norm_before_residual = cfg.norm_before_residual
        d = cfg.hidden_size
        # eagle3: norms the embedding; eagle1 "prenorm": norms fc's output; eagle1 "eagle": none
        # (EAGLE-1 and vLLM skip the first layer's input norm)
        self.input_layernorm = RMSNorm(d, cfg.rms_norm_eps) if self.eagle3 or is_prenorm(cfg) else nn.Identity()
        if self.eagle3:
            self.hidden_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, 2 * d if self.eagle3 else d)
        self.post_attention_layernorm = RMSNorm(d, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, h, emb, cos, sin, mask, past=None):
        if self.eagle3:
            normed = self.hidden_norm(h)
            residual = normed if self.norm_before_residual else h
            attn_in = torch.cat([self.input_layernorm(emb), normed], dim=-1)
        else:
            residual, attn_in = h, self.input_layernorm(h)
        a, kv = self.self_attn(attn_in, cos, sin, mask, past)
        h = residual + a
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, kv


class FeatureDrafterModel(nn.Module):
    def __init__(self, cfg: DrafterConfig, embed_weight: torch.Tensor, head_weight: torch.Tensor | None = None,
                 draft_ids: torch.Tensor | None = None):
        """embed_weight: the target's input embedding [V, d] (kept frozen). head_weight: the
        target's LM head [V, d] (the frozen head, and the initialisation of the others)."""
        super().__init__()
        if tuple(embed_weight.shape) != (cfg.vocab_size, cfg.hidden_size):
            raise ValueError(
                f"target embedding has shape {tuple(embed_weight.shape)}, the drafter config expects "
                f"({cfg.vocab_size}, {cfg.hidden_size})"
            )
        self.config = cfg
        self.register_buffer("embed_weight", embed_weight.detach(), persistent=False)
        fc_in = 2 * cfg.hidden_size if cfg.style == "eagle1" else cfg.feature_size
        self.fc = nn.Linear(fc_in, cfg.hidden_size, bias=is_prenorm(cfg))
        self.layers = nn.ModuleList([DecoderLayer(cfg)])
        # EAGLE-1 feeds the layer's output to the head as is; eagle3 and "prenorm" norm it first
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if cfg.style == "eagle3" or is_prenorm(cfg) else nn.Identity()
        self.rotary = Rotary(cfg)
        self.head = make_head(cfg, head_weight, draft_ids)
        if cfg.repspec != "off":
            apply_repspec(self.layers, cfg.repspec, cfg.repspec_branches, cfg.hybrid_rank)

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    def fuse(self, input_ids, features, from_target: bool):
        """-> (decoder input h [B, T, d], token embeddings for eagle3 or None)."""
        emb = F.embedding(input_ids, self.embed_weight).to(self.dtype)
        features = features.to(self.dtype)
        if self.config.style == "eagle1":
            return linear(self.fc, torch.cat([emb, features], dim=-1)), None
        return (linear(self.fc, features) if from_target else features), emb

    def forward(self, input_ids, features, from_target: bool, positions, mask, past=None, layer=None):
        """input_ids [B, T]; features [B, T, feature_size] (target) or [B, T, d] (own outputs);
        positions [B, T]; mask additive [B|1, 1, T, S]. Returns (outputs [B, T, d], (k, v)).
        `layer`: a stand-in for the decoder layer (the training unroll's compiled one)."""
        h, emb = self.fuse(input_ids, features, from_target)
        cos, sin = self.rotary(positions, self.dtype)
        return (layer or self.layers[0])(h, emb, cos, sin, mask, past)

    def logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """Logits over the head's own vocabulary (the draft vocabulary for a truncated head)."""
        return self.head(self.norm(outputs))

    def head_operands(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, weight) with logits(outputs) == x @ weight.T (heads.head_operands)."""
        return head_operands(self.head, self.norm(outputs))

    def cast(self, dtype: torch.dtype) -> "FeatureDrafterModel":
        """This drafter in `dtype`; the frozen target embedding and head are converted once per
        target and dtype and shared by every drafter (so a lockstep group still shares its head)."""
        self.embed_weight = frozen_cast(self.embed_weight, dtype)
        if isinstance(self.head, TargetHead):
            self.head.weight = frozen_cast(self.head.weight, dtype)
        return self.to(dtype)

    def merge_repspec(self) -> "FeatureDrafterModel":
        """Fold RepSpec branches for deployment (same function, plain linears)."""
        merge_repspec(self.layers)
        merged_mode = {"off": "off", "repspec": "off", "hybrid": "hybrid_merged", "hybrid_merged": "hybrid_merged"}
        self.config = self.config.model_copy(update={"repspec": merged_mode[self.config.repspec]})
        return self


def is_prenorm(cfg: DrafterConfig) -> bool:
    return cfg.style == "eagle1" and cfg.eagle1_layout == "prenorm"


_FROZEN_CASTS: dict[tuple[int, torch.dtype], tuple[weakref.ref, torch.Tensor]] = {}


def frozen_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` in `dtype`, one copy per (frozen tensor, dtype) while `t` lives."""
    if t.dtype == dtype:
        return t
    key = (id(t), dtype)
    hit = _FROZEN_CASTS.get(key)
    if hit is None or hit[0]() is not t:
        hit = (weakref.ref(t, lambda _, k=key: _FROZEN_CASTS.pop(k, None)), t.detach().to(dtype))
        _FROZEN_CASTS[key] = hit
    return hit[1]


def fast_draft_dtype(device: torch.device | str = "cpu") -> torch.dtype | None:
    """bfloat16 where it is fast (CUDA with bf16, a CPU with native bf16 matmuls: AVX512-BF16 /
    AMX), else None (keep the target's dtype). Drafting cost is mostly reading weights, so half
    the bytes is close to half the time; a drafter's proposals only move speed, never the law."""
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


def make_head(cfg: DrafterConfig, head_weight: torch.Tensor | None, draft_ids: torch.Tensor | None) -> nn.Module:
    if head_weight is not None and tuple(head_weight.shape) != (cfg.vocab_size, cfg.hidden_size):
        raise ValueError(
            f"target LM head has shape {tuple(head_weight.shape)}, the drafter config expects "
            f"({cfg.vocab_size}, {cfg.hidden_size})"
        )
    if cfg.head == "target":
        if head_weight is None:
            raise ValueError("the frozen target head needs the target's LM head weight")
        return TargetHead(head_weight)
    if cfg.head == "truncated":
        if draft_ids is None:  # placeholder map; a checkpoint's d2t / t2d overwrite it on load
            draft_ids = torch.arange(cfg.draft_vocab_size)
        if int(draft_ids.numel()) != cfg.draft_vocab_size:
            raise ValueError(f"draft vocabulary has {draft_ids.numel()} ids, config says {cfg.draft_vocab_size}")
        return TruncatedHead(cfg.hidden_size, draft_ids, cfg.vocab_size, head_weight)
    return LowRankHead(cfg.hidden_size, cfg.head_rank, cfg.vocab_size, head_weight)


def build_drafter_model(cfg: DrafterConfig, target, draft_ids: torch.Tensor | None = None) -> FeatureDrafterModel:
    """A fresh drafter for a loaded transformers target (embedding and head taken from it)."""
    embed = target.get_input_embeddings().weight
    head = target.get_output_embeddings().weight
    model = FeatureDrafterModel(cfg, embed, head, draft_ids)
    return model.to(dtype=embed.dtype)
