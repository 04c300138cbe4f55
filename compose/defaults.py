"""The drafters a target gets when the user names none."""
from __future__ import annotations

from typing import Mapping

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


def shipped_calibration(target, drafters: Mapping[str, object]):
    """The routing calibration shipped beside a built-in target's drafters, holding only the fits
    of the drafters given under their shipped names and specs (a fit learnt for the shipped
    `math` says nothing about another drafter a user names `math`); unfitted otherwise."""
    from routing import Calibration

    path = shipped_routing_file(target, CALIBRATION_FILE)
    if path is None:
        return Calibration()
    shipped = default_drafters(str(target))
    same = [n for n, d in drafters.items() if isinstance(d, str) and n in shipped and _same_spec(d, shipped[n])]
    return Calibration.load(path).only(same)


def _same_spec(a: str, b: str) -> bool:
    """Two drafter specs name the same drafter ("eagle:<folder>" compared by resolved folder)."""
    from pathlib import Path

    (kind_a, _, arg_a), (kind_b, _, arg_b) = a.partition(":"), b.partition(":")
    if kind_a != kind_b:
        return False
    if arg_a == arg_b:
        return True
    return Path(arg_a).exists() and Path(arg_b).exists() and Path(arg_a).resolve() == Path(arg_b).resolve()
