"""Trained specialist drafters shipped with specmux (see the README next to each target's folder).

    pretrained/<target name>/<domain>/{config.json, model.safetensors}
The frozen target embedding and LM head are not stored: loading needs the loaded target.
"""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import load_drafter
from ..feature import FeatureDrafter

PRETRAINED_DIR = Path(__file__).parent


def pretrained_path(target_name: str, domain: str) -> Path:
    path = PRETRAINED_DIR / target_name / domain
    if not (path / "config.json").is_file():
        available = sorted(f"{t}/{d}" for t, ds in pretrained_index().items() for d in ds)
        raise ValueError(f"no pretrained {domain!r} drafter for {target_name!r}; available: {available or 'none'}")
    return path


def pretrained_index() -> dict[str, list[str]]:
    """target name -> domains with a shipped checkpoint."""
    out: dict[str, list[str]] = {}
    for cfg in sorted(PRETRAINED_DIR.glob("*/*/config.json")):
        out.setdefault(cfg.parent.parent.name, []).append(cfg.parent.name)
    return out


def pretrained_drafters(target_name: str) -> dict[str, str]:
    """Drafter name -> spec string ("eagle:<folder>") for every shipped domain of a target."""
    return {d: f"eagle:{PRETRAINED_DIR / target_name / d}" for d in pretrained_index().get(str(target_name), [])}


def load_pretrained(target_name: str, domain: str, target) -> FeatureDrafter:
    """The shipped `domain` drafter of `target_name`, for the loaded target model `target`."""
    return load_drafter(pretrained_path(target_name, domain), target, name=domain, target_name=target_name)
