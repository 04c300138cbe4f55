"""The drafters a target gets when the user names none."""
from __future__ import annotations

EARLY_EXIT_DEFAULTS = {"ee6": "early-exit:6", "ee12": "early-exit:12"}


def default_drafters(target: str) -> dict[str, str]:
    """The trained specialist drafters shipped for a built-in target (drafters/pretrained),
    topped up with self-speculative early-exit drafters (no training needed) so that the
    composing strategies always have at least two drafters."""
    from drafters import pretrained_drafters

    found = dict(pretrained_drafters(str(target)))
    for name, spec in EARLY_EXIT_DEFAULTS.items():
        if len(found) >= 2:
            break
        found[name] = spec
    return found
