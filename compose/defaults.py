"""The drafters a target gets when the user names none."""
from __future__ import annotations

EARLY_EXIT_DEFAULTS = {"ee6": "early-exit:6", "ee12": "early-exit:12"}
# the specialists composed by default (the pair TAPS composes); a shipped `mixed` drafter is the
# single-drafter baseline they are measured against, named explicitly when wanted
DEFAULT_DOMAINS = ("math", "chat")


def default_drafters(target: str) -> dict[str, str]:
    """The trained specialist drafters shipped for a built-in target (drafters/pretrained),
    topped up with self-speculative early-exit drafters (no training needed) so that the
    composing strategies always have at least two drafters."""
    from drafters import pretrained_drafters

    shipped = pretrained_drafters(str(target))
    preferred = {d: shipped[d] for d in DEFAULT_DOMAINS if d in shipped}
    found = preferred if len(preferred) >= 2 else dict(shipped)
    for name, spec in EARLY_EXIT_DEFAULTS.items():
        if len(found) >= 2:
            break
        found[name] = spec
    return found


DOMAIN_ROUTER_FILE = "domain_router.safetensors"
CALIBRATION_FILE = "calibration.json"


def shipped_routing_file(target, name: str):
    """A routing asset shipped beside a built-in target's drafters (drafters/pretrained/<target>/):
    the domain router (`specmux route` writes it) or the signal calibration (`specmux eval`
    writes one into its output folder), or None."""
    from drafters.pretrained import PRETRAINED_DIR, pretrained_index

    if not isinstance(target, str) or target not in pretrained_index():
        return None
    path = PRETRAINED_DIR / target / name
    return path if path.is_file() else None
