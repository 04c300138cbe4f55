"""Drafter checkpoints: a folder with config.json and model.safetensors, loaded with validation.

The target's embedding (and, for the frozen target head, its LM head) is never stored: it is
taken from the target at load time, which is why loading needs the target, and why the
checkpoint records a fingerprint of the target it was trained for.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from runtime.atomic import recover_folder, replaced_folder, save_tensors, write_json

from .config import DrafterConfig
from .feature import FeatureDrafter
from .model import FeatureDrafterModel, build_drafter_model

FORMAT = "specmux-feature-drafter"
# 2: eagle1 drafters record their layout (version 1 had only the "prenorm" one)
VERSION = 2
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def target_fingerprint(target) -> str:
    """sha256 of a few rows of the target's input embedding (identifies the weights, cheaply),
    rounded to bfloat16 first, so the same target loaded in float32 or bfloat16 has one
    fingerprint (a drafter trained for it loads onto either)."""
    return _embedding_digest(target, torch.bfloat16)


def fingerprint_matches(recorded: str, target) -> bool:
    """`recorded` is this target's fingerprint, or the float32 form written before 2026-12-04
    (checkable only while the target is in float32)."""
    if recorded == target_fingerprint(target):
        return True
    return target.get_input_embeddings().weight.dtype == torch.float32 and recorded == _embedding_digest(target, None)


def _embedding_digest(target, rounding: torch.dtype | None) -> str:
    emb = target.get_input_embeddings().weight.detach()
    rows = torch.cat([emb[:4], emb[-4:]])
    if rounding is not None:
        rows = rows.to(rounding)
    return hashlib.sha256(rows.float().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def save_drafter(model: FeatureDrafterModel, path: str | Path, target=None, dtype: torch.dtype | None = None,
                 extra: dict | None = None) -> Path:
    """Write config.json + model.safetensors as one unit: an interrupted save (or overwrite)
    leaves the previous checkpoint, never new weights beside an old config."""
    path = Path(path)
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "target_fingerprint": target_fingerprint(target) if target is not None else None,
        "drafter": model.config.model_dump(),
        **(extra or {}),
    }
    with replaced_folder(path) as folder:
        save_tensors(folder / WEIGHTS_FILE, state)
        write_json(folder / CONFIG_FILE, meta)
    return path


def read_config(path: str | Path) -> tuple[DrafterConfig, dict]:
    path = Path(path)
    recover_folder(path)  # finish a save a crash interrupted mid-swap (a no-op otherwise)
    cfg_path = path / CONFIG_FILE
    meta = read_meta(cfg_path, "a drafter checkpoint", FORMAT)
    try:
        fields = dict(meta["drafter"])
        if meta.get("version", 1) < 2 and fields.get("style", "eagle1") == "eagle1":
            fields.setdefault("eagle1_layout", "prenorm")
        return DrafterConfig(**fields), meta
    except (ValidationError, KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path}: invalid drafter config: {e}") from None


def read_meta(cfg_path: Path, what: str, fmt: str) -> dict:
    """A folder's config.json as a dict whose "format" is `fmt`, or a ValueError saying why not."""
    if not cfg_path.is_file():
        raise ValueError(f"{cfg_path.parent} is not {what}: {cfg_path.name} is missing")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != fmt:
        raise ValueError(f"{cfg_path}: format {found!r} is not {fmt!r}")
    return meta


def check_target(cfg: DrafterConfig, meta: dict, target, target_name: str | None = None) -> None:
    """Clear errors when the checkpoint was trained for another target."""
    tc = target.config
    if target_name is not None and target_name != cfg.target_name:
        raise ValueError(f"drafter was trained for target {cfg.target_name!r}, not {target_name!r}")
    if int(tc.hidden_size) != cfg.target_hidden_size:
        raise ValueError(
            f"hidden size mismatch: the drafter reads target states of size {cfg.target_hidden_size}, "
            f"the target's hidden size is {tc.hidden_size} (drafter trained for {cfg.target_name!r})"
        )
    if int(tc.vocab_size) != cfg.vocab_size:
        raise ValueError(
            f"vocabulary mismatch: the drafter proposes into {cfg.vocab_size} tokens, the target has "
            f"{tc.vocab_size} (drafter trained for {cfg.target_name!r})"
        )
    if int(tc.num_hidden_layers) != cfg.target_num_layers:
        raise ValueError(f"the drafter was trained on a {cfg.target_num_layers}-layer target, this one has {tc.num_hidden_layers}")
    want = meta.get("target_fingerprint")
    if want is not None and not fingerprint_matches(want, target):
        raise ValueError(
            f"different target: the drafter was trained for {cfg.target_name!r} whose embedding fingerprint "
            f"is {want}, this target's is {target_fingerprint(target)} (a checkpoint written before "
            "2026-12-04 carries the float32 form: load the target in float32 or re-save the drafter)"
        )


def load_drafter_model(path: str | Path, target, target_name: str | None = None,
                       dtype: torch.dtype | None = None) -> FeatureDrafterModel:
    path = Path(path)
    cfg, meta = read_config(path)
    check_target(cfg, meta, target, target_name)
    model = build_drafter_model(cfg, target)
    state = read_weights(path / WEIGHTS_FILE)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise ValueError(f"{path / WEIGHTS_FILE}: missing tensors {missing}")
    if unexpected:
        raise ValueError(f"{path / WEIGHTS_FILE}: unexpected tensors {unexpected}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"{path / WEIGHTS_FILE}: tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"{path / WEIGHTS_FILE}: tensor {k!r} has non-finite values (corrupt checkpoint)")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.cast(dtype) if dtype is not None else model


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ValueError(f"{file} is missing")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error type (varies by version)
        raise ValueError(f"{file} is corrupt or not a safetensors file: {e}") from None


def load_drafter(path: str | Path, target, name: str = "eagle", target_name: str | None = None,
                 dtype: torch.dtype | None = None) -> FeatureDrafter:
    """A ready FeatureDrafter from a checkpoint folder, for a loaded transformers target."""
    return FeatureDrafter(load_drafter_model(path, target, target_name, dtype), name=name)
