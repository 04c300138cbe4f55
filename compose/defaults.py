"""The drafters a target gets when the user names none."""
from __future__ import annotations


def default_drafters(target: str) -> dict[str, str]:
    """Trained specialist drafters shipped for a built-in target when present, else two
    self-speculative early-exit drafters (no training needed)."""
    try:
        from drafters import pretrained_drafters  # trained checkpoints shipped in the repo
    except ImportError:
        pretrained_drafters = None
    if pretrained_drafters is not None:
        found = pretrained_drafters(target)
        if found:
            return found
    return {"ee6": "early-exit:6", "ee12": "early-exit:12"}
