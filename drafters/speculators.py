"""Export to and import from the vLLM speculators `eagle3` format (served by vLLM and SGLang).

Folder: config.json (speculators_model_type "eagle3", transformer_layer_config, draft_vocab_size,
target_hidden_size, eagle_aux_hidden_state_layer_ids, norm_before_residual, speculators_config)
and model.safetensors with fc.weight, layers.0.* (decoder layer), norm.weight, lm_head.weight
[draft_vocab, hidden], d2t (int64 offsets) and t2d (bool), optionally embed_tokens.weight.
`eagle_aux_hidden_state_layer_ids` use the same indices as ours (transformers' hidden_states
tuple: vLLM captures the input of decoder layer i); -1 (final normed state) has no equivalent.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import atomic_save_tensors, atomic_write_bytes, read_weights
from .config import DrafterConfig
from .model import FeatureDrafterModel, build_drafter_model

SPECULATORS_VERSION = "0.3.0"


def export_speculators(model: FeatureDrafterModel, path: str | Path, verifier: str,
                       include_embeddings: bool = False, speculative_tokens: int = 3,
                       dtype: torch.dtype | None = None) -> Path:
    cfg = model.config
    _check_exportable(cfg)
    path = Path(path)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    lm_head, d2t, t2d = _head_as_draft_vocab(model)
    state.update({"lm_head.weight": lm_head, "d2t": d2t, "t2d": t2d})
    if include_embeddings:
        state["embed_tokens.weight"] = model.embed_weight
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    atomic_save_tensors(state, path / "model.safetensors", metadata={"format": "pt"})
    config = {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "speculators_version": SPECULATORS_VERSION,
        "transformer_layer_config": _layer_config(cfg),
        "draft_vocab_size": int(lm_head.shape[0]),
        "norm_before_residual": cfg.norm_before_residual,
        "target_hidden_size": cfg.target_hidden_size,
        "eagle_aux_hidden_state_layer_ids": list(cfg.target_layers),
        "torch_dtype": str(dtype or model.dtype).removeprefix("torch."),
        "speculators_config": {
            "algorithm": "eagle3",
            "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": speculative_tokens,
                                  "verifier_accept_k": 1, "accept_tolerance": 0.0}],
            "verifier": {"name_or_path": verifier, "architectures": ["LlamaForCausalLM"]},
        },
        "specmux_target_name": cfg.target_name,
    }
    atomic_write_bytes(path / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    return path


def import_speculators(path: str | Path, target, target_name: str | None = None) -> FeatureDrafterModel:
    """An eagle3 drafter from a speculators folder. Its lm_head becomes a trainable head over
    its draft vocabulary (`truncated`, covering the whole vocabulary when d2t is all zero)."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a speculators config.json: {e}") from None
    if config.get("speculators_model_type") != "eagle3":
        raise ValueError(f"{path}: speculators_model_type is {config.get('speculators_model_type')!r}, expected 'eagle3'")
    layer = config["transformer_layer_config"]
    if layer.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"{path}: only one-layer eagle3 drafters are supported")
    state = read_weights(path / "model.safetensors")
    for key in ("fc.weight", "lm_head.weight", "norm.weight", "d2t", "t2d"):
        if key not in state:
            raise ValueError(f"{path}: missing tensor {key!r}")
    if "fc.bias" in state:
        raise ValueError(f"{path}: an fc bias is not part of the eagle3 layout served by vLLM")
    tc = target.config
    draft_vocab = int(config["draft_vocab_size"])
    cfg = DrafterConfig(
        style="eagle3",
        target_name=target_name or config.get("specmux_target_name") or config["speculators_config"]["verifier"]["name_or_path"],
        target_model_type=getattr(tc, "model_type", "llama"),
        vocab_size=int(layer["vocab_size"]),
        target_hidden_size=int(config.get("target_hidden_size") or layer["hidden_size"]),
        target_num_layers=int(tc.num_hidden_layers),
        target_layers=list(config["eagle_aux_hidden_state_layer_ids"]),
        hidden_size=int(layer["hidden_size"]),
        num_attention_heads=int(layer["num_attention_heads"]),
        num_key_value_heads=int(layer.get("num_key_value_heads") or layer["num_attention_heads"]),
        head_dim=int(layer.get("head_dim") or layer["hidden_size"] // layer["num_attention_heads"]),
        intermediate_size=int(layer["intermediate_size"]),
        rms_norm_eps=float(layer.get("rms_norm_eps", 1e-6)),
        rope_theta=float(layer.get("rope_theta", 10000.0)),
        rope_scaling=layer.get("rope_scaling"),
        max_position_embeddings=int(layer.get("max_position_embeddings", 8192)),
        qkv_bias=bool(layer.get("attention_bias", False)),
        o_bias=bool(layer.get("attention_bias", False)),
        norm_before_residual=bool(config.get("norm_before_residual", False)),
        head="truncated",
        draft_vocab_size=draft_vocab,
    )
    if int(tc.hidden_size) != cfg.target_hidden_size or int(tc.vocab_size) != cfg.vocab_size:
        raise ValueError(
            f"{path}: drafter built for hidden size {cfg.target_hidden_size} / vocabulary {cfg.vocab_size}, "
            f"target has {tc.hidden_size} / {tc.vocab_size}"
        )
    d2t, t2d = state.pop("d2t").long(), state.pop("t2d").bool()
    draft_ids = torch.arange(draft_vocab) + d2t
    if not torch.equal(t2d.nonzero().flatten(), draft_ids):
        raise ValueError(f"{path}: d2t and t2d describe different draft vocabularies")
    model = build_drafter_model(cfg, target, draft_ids)
    emb = state.pop("embed_tokens.weight", None)
    if emb is not None and not torch.allclose(emb.float(), model.embed_weight.float(), atol=1e-3):
        raise ValueError(f"{path}: embed_tokens differ from the target's embedding (specmux shares the target's)")
    state["head.proj.weight"] = state.pop("lm_head.weight")
    state["head.d2t"], state["head.t2d"] = d2t, t2d
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: tensor names do not match the eagle3 layout (missing {missing}, unexpected {unexpected})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model


def _check_exportable(cfg: DrafterConfig) -> None:
    if cfg.style != "eagle3":
        raise ValueError("the speculators eagle3 format holds eagle3-style drafters; this one is "
                         f"{cfg.style!r} (train with style='eagle3' to serve it with vLLM / SGLang)")
    if any(i < 0 for i in cfg.target_layers):
        raise ValueError("eagle_aux_hidden_state_layer_ids cannot express -1 (the final normed state)")
    if cfg.repspec not in ("off",):
        raise ValueError(f"merge RepSpec first (repspec={cfg.repspec!r}); a hybrid branch has no eagle3 equivalent")
    if cfg.qkv_bias != cfg.o_bias:
        raise ValueError("the eagle3 layer has one attention_bias for q, k, v and o; this drafter differs")


@torch.no_grad()
def _head_as_draft_vocab(model: FeatureDrafterModel):
    cfg, head = model.config, model.head
    if cfg.head == "truncated":
        return head.proj.weight, head.d2t, head.t2d
    weight = head.weight if cfg.head == "target" else head.up.weight @ head.down.weight
    return weight, torch.zeros(cfg.vocab_size, dtype=torch.long), torch.ones(cfg.vocab_size, dtype=torch.bool)


def _layer_config(cfg: DrafterConfig) -> dict:
    out = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": 1,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": cfg.hidden_act,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling,
        "attention_bias": cfg.qkv_bias,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    }
    return out
