"""Export drafters in the formats vLLM and SGLang serve, and import them back
(docs/design.md "Checkpoints and serving formats").

- eagle3: the speculators `eagle3` folder (speculators 0.9.0, vLLM `method: "eagle3"`, SGLang):
  config.json (speculators_model_type "eagle3", transformer_layer_config, draft_vocab_size,
  target_hidden_size, eagle_aux_hidden_state_layer_ids, norm_before_residual, speculators_config)
  and model.safetensors with fc.weight, layers.0.*, norm.weight, lm_head.weight [draft_vocab,
  hidden], embed_tokens.weight, and d2t / t2d only for a draft vocabulary smaller than the target's.
- eagle1 (layout "eagle"): vLLM's native EAGLE folder (`method: "eagle"`; speculators 0.9.0 has
  no eagle1 type): a one-layer llama config.json and fc.weight, layers.0.* without the input norm;
  vLLM takes the embedding and the LM head from the target.
Auxiliary layer ids are transformers' hidden_states indices, which equal vLLM's below L (the
drafter config guarantees that).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError

from runtime.atomic import replaced_folder, save_tensors, write_json
from .checkpoint import read_weights
from .config import DrafterConfig
from .model import FeatureDrafterModel, build_drafter_model

SPECULATORS_VERSION = "0.9.0"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
EAGLE1_ARCHITECTURES = ("LlamaForCausalLM", "EagleLlamaForCausalLM")


# --- export -----------------------------------------------------------------------------------------
def export_speculators(model: FeatureDrafterModel, path: str | Path, verifier: str,
                       speculative_tokens: int = 3, dtype: torch.dtype | None = None,
                       verifier_architectures: list[str] | None = None) -> Path:
    """Write `model` as a folder vLLM serves: speculators eagle3 for eagle3 drafters, vLLM's
    EAGLE folder for eagle1 ones. `verifier`: the target's name or path recorded for the server."""
    cfg = model.config
    check_exportable(cfg)
    if cfg.style == "eagle3":
        state, config = eagle3_files(model, verifier, speculative_tokens, verifier_architectures or ["LlamaForCausalLM"])
    else:
        state, config = eagle1_files(model)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    config["torch_dtype"] = str(dtype or model.dtype).removeprefix("torch.")
    config["specmux_target_name"] = cfg.target_name
    with replaced_folder(path) as folder:
        save_tensors(folder / WEIGHTS_FILE, state, metadata={"format": "pt"})
        write_json(folder / CONFIG_FILE, config)
    return Path(path)


def check_exportable(cfg: DrafterConfig) -> None:
    if cfg.repspec != "off":
        raise ValueError(f"merge RepSpec first (repspec={cfg.repspec!r}); a hybrid branch has no served equivalent")
    if cfg.style == "eagle1":
        if cfg.eagle1_layout != "eagle":
            raise ValueError(
                "this eagle1 drafter has the 'prenorm' layout (an fc bias, a norm on the layer input and before "
                "the head), which vLLM's EAGLE model cannot express; retrain it with the default layout "
                "(eagle1_layout='eagle') or train an eagle3 drafter"
            )
        if cfg.head != "target":
            raise ValueError(f"vLLM's EAGLE model reads the target's LM head; this eagle1 drafter has a {cfg.head!r} head")
        return
    if cfg.qkv_bias != cfg.o_bias:
        raise ValueError("the eagle3 layer has one attention_bias for q, k, v and o; this drafter differs")


def eagle3_files(model: FeatureDrafterModel, verifier: str, speculative_tokens: int,
                 verifier_architectures: list[str]) -> tuple[dict, dict]:
    cfg = model.config
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    lm_head, draft_ids = head_over_draft_vocab(model)
    state["lm_head.weight"] = lm_head
    # speculators leaves a missing embedding zero-filled: always ship it
    state["embed_tokens.weight"] = model.embed_weight
    if draft_ids.numel() < cfg.vocab_size:  # vLLM refuses d2t / t2d for the full vocabulary
        state["d2t"] = draft_ids - torch.arange(draft_ids.numel())
        state["t2d"] = torch.zeros(cfg.vocab_size, dtype=torch.bool).index_fill_(0, draft_ids, True)
    config = {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "speculators_version": SPECULATORS_VERSION,
        "transformer_layer_config": layer_config(cfg),
        "draft_vocab_size": int(draft_ids.numel()),
        "norm_before_residual": cfg.norm_before_residual,  # explicit: vLLM and speculators default differently
        "target_hidden_size": cfg.target_hidden_size,
        "eagle_aux_hidden_state_layer_ids": list(cfg.target_layers),
        "speculators_config": {
            "algorithm": "eagle3",
            "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": speculative_tokens,
                                  "verifier_accept_k": 1, "accept_tolerance": 0.0}],
            "verifier": {"name_or_path": verifier, "architectures": list(verifier_architectures)},
        },
    }
    return state, config


def eagle1_files(model: FeatureDrafterModel) -> tuple[dict, dict]:
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    config = layer_config(model.config)
    config["qkv_bias"] = model.config.qkv_bias  # vLLM's llama layer reads it apart from o_proj's
    config["attention_bias"] = model.config.o_bias
    return state, config


@torch.no_grad()
def head_over_draft_vocab(model: FeatureDrafterModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(lm_head weight [draft_vocab, hidden], target id of each row, ascending)."""
    cfg, head = model.config, model.head
    if cfg.head == "truncated":
        return head.proj.weight, head.draft_ids
    weight = head.weight if cfg.head == "target" else head.up.weight @ head.down.weight
    return weight, torch.arange(cfg.vocab_size)


def layer_config(cfg: DrafterConfig) -> dict:
    """The decoder layer as a transformers llama config dict."""
    rope = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta}
    return {
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
        "rope_parameters": rope,  # what transformers >= 5 writes
        "rope_theta": cfg.rope_theta,  # what older readers look for
        "attention_bias": cfg.qkv_bias,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    }


# --- import -----------------------------------------------------------------------------------------
def import_speculators(path: str | Path, target, target_name: str | None = None) -> FeatureDrafterModel:
    """A drafter from a speculators eagle3 folder or a vLLM EAGLE (eagle1) folder, for the loaded
    transformers `target`. A draft-vocabulary lm_head becomes a `truncated` head; a full-vocabulary
    one the frozen `target` head when it equals the target's, else a full `truncated` head."""
    path = Path(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read {CONFIG_FILE}: {e}") from None
    state = read_weights(path / WEIGHTS_FILE)
    if config.get("speculators_model_type") == "eagle3":
        return import_eagle3(path, config, state, target, target_name)
    if "speculators_model_type" in config:
        raise ValueError(f"{path}: speculators_model_type {config['speculators_model_type']!r} is not supported (eagle3 is)")
    if set(config.get("architectures") or []) & set(EAGLE1_ARCHITECTURES) and "fc.weight" in state:
        return import_eagle1(path, config, state, target, target_name)
    raise ValueError(f"{path}: neither a speculators eagle3 folder nor a vLLM EAGLE (llama) drafter folder")


def import_eagle3(path: Path, config: dict, state: dict, target, target_name: str | None) -> FeatureDrafterModel:
    for flag in ("norm_before_fc", "fc_norm", "norm_output"):
        if config.get(flag):
            raise ValueError(f"{path}: {flag}=true is not supported")
    layer = config["transformer_layer_config"]
    if layer.get("model_type", "llama") != "llama":
        raise ValueError(f"{path}: a {layer.get('model_type')!r} draft layer is not supported (llama is)")
    for key in ("fc.weight", "lm_head.weight", "norm.weight"):
        if key not in state:
            raise ValueError(f"{path}: missing tensor {key!r}")
    if "fc.bias" in state:
        raise ValueError(f"{path}: an fc bias is not part of the eagle3 layout served by vLLM")
    tc = target.config
    verifier = config.get("speculators_config", {}).get("verifier", {}).get("name_or_path")
    cfg = drafter_config(path, layer, tc, style="eagle3", target_name=target_name or config.get("specmux_target_name") or verifier,
                         target_hidden_size=int(config.get("target_hidden_size") or layer["hidden_size"]),
                         target_layers=list(config["eagle_aux_hidden_state_layer_ids"]),
                         # speculators' default (the format's owner); its own files always write it
                         norm_before_residual=bool(config.get("norm_before_residual", False)))
    draft_vocab = int(config["draft_vocab_size"])
    draft_ids = read_draft_ids(path, state, draft_vocab, cfg.vocab_size)
    head_weight = state.pop("lm_head.weight")
    shares_head = draft_vocab == cfg.vocab_size and same_values(head_weight, target.get_output_embeddings().weight)
    cfg = cfg.model_copy(update={"head": "target"} if shares_head else {"head": "truncated", "draft_vocab_size": draft_vocab})
    model = build_drafter_model(cfg, target, None if shares_head else draft_ids)
    if not shares_head:
        state["head.proj.weight"] = head_weight
        state["head.d2t"], state["head.t2d"] = model.head.d2t, model.head.t2d
    return load_state(path, model, state)


def import_eagle1(path: Path, config: dict, state: dict, target, target_name: str | None) -> FeatureDrafterModel:
    if config.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"{path}: only one-layer EAGLE drafters are supported")
    if "fc.bias" in state or "layers.0.input_layernorm.weight" in state:
        raise ValueError(f"{path}: an fc bias or a first-layer input norm is not part of vLLM's EAGLE layout")
    lm_head = state.pop("lm_head.weight", None)
    if lm_head is not None and not same_values(lm_head, target.get_output_embeddings().weight):
        raise ValueError(f"{path}: lm_head differs from the target's (vLLM's EAGLE model reads the target's head)")
    tc = target.config
    cfg = drafter_config(path, config, tc, style="eagle1", target_name=target_name or config.get("specmux_target_name"),
                         target_hidden_size=int(tc.hidden_size), target_layers=[-1], eagle1_layout="eagle",
                         qkv_bias=bool(config.get("qkv_bias", config.get("attention_bias", False))))
    return load_state(path, build_drafter_model(cfg, target), state)


def drafter_config(path: Path, layer: dict, target_config, **fields) -> DrafterConfig:
    rope = dict(layer.get("rope_parameters") or {})
    rope_theta = float(rope.pop("rope_theta", layer.get("rope_theta", 10000.0)))
    rope_scaling = rope if rope.get("rope_type", "default") != "default" else layer.get("rope_scaling")
    values = dict(
        target_name=fields.pop("target_name") or "imported",
        target_model_type=getattr(target_config, "model_type", "llama"),
        vocab_size=int(layer["vocab_size"]),
        target_num_layers=int(target_config.num_hidden_layers),
        hidden_size=int(layer["hidden_size"]),
        num_attention_heads=int(layer["num_attention_heads"]),
        num_key_value_heads=int(layer.get("num_key_value_heads") or layer["num_attention_heads"]),
        head_dim=int(layer.get("head_dim") or layer["hidden_size"] // layer["num_attention_heads"]),
        intermediate_size=int(layer["intermediate_size"]),
        rms_norm_eps=float(layer.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=int(layer.get("max_position_embeddings", 8192)),
        qkv_bias=bool(layer.get("attention_bias", False)),
        o_bias=bool(layer.get("attention_bias", False)),
    )
    values.update(fields)
    try:
        cfg = DrafterConfig(**values)
    except ValidationError as e:
        raise ValueError(f"{path}: not a drafter specmux can run: {e}") from None
    if int(target_config.hidden_size) != cfg.target_hidden_size or int(target_config.vocab_size) != cfg.vocab_size:
        raise ValueError(
            f"{path}: drafter built for hidden size {cfg.target_hidden_size} / vocabulary {cfg.vocab_size}, "
            f"target has {target_config.hidden_size} / {target_config.vocab_size}"
        )
    return cfg


def read_draft_ids(path: Path, state: dict, draft_vocab: int, vocab: int) -> torch.Tensor:
    """Target ids of the draft vocabulary from d2t / t2d (absent: the full vocabulary)."""
    d2t, t2d = state.pop("d2t", None), state.pop("t2d", None)
    if d2t is None and t2d is None:
        if draft_vocab != vocab:
            raise ValueError(f"{path}: draft_vocab_size {draft_vocab} < vocabulary {vocab} needs d2t and t2d")
        return torch.arange(vocab)
    if d2t is None or t2d is None:
        raise ValueError(f"{path}: d2t and t2d come together")
    draft_ids = torch.arange(d2t.numel()) + d2t.long()
    if d2t.numel() != draft_vocab or not torch.equal(t2d.bool().nonzero().flatten(), draft_ids):
        raise ValueError(f"{path}: d2t and t2d describe different draft vocabularies")
    return draft_ids


def same_values(stored: torch.Tensor, reference: torch.Tensor) -> bool:
    """Equal up to the rounding of the coarser of the two dtypes (a bf16 file of fp32 weights)."""
    coarse = stored.dtype if torch.finfo(stored.dtype).eps >= torch.finfo(reference.dtype).eps else reference.dtype
    a, b = stored.to(coarse).float(), reference.detach().to(coarse).float()
    return a.shape == b.shape and torch.allclose(a, b, rtol=torch.finfo(coarse).eps, atol=1e-6)


def load_state(path: Path, model: FeatureDrafterModel, state: dict) -> FeatureDrafterModel:
    emb = state.pop("embed_tokens.weight", None)
    if emb is not None and not same_values(emb, model.embed_weight):
        raise ValueError(f"{path}: embed_tokens differ from the target's embedding (specmux shares the target's)")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: tensor names do not match the layout (missing {missing}, unexpected {unexpected})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model
