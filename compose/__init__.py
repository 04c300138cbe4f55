"""specmux's public face: `generate(prompt, strategy=...)` and the reusable `Composer`."""
from __future__ import annotations

from typing import Any

from .composer import Composer
from .defaults import default_drafters
from .options import GenerateOptions, TreeOptions
from .registry import STRATEGIES
from .types import GenerationResult, GenerationStats, StepRecord

_composers: dict[tuple, Composer] = {}


def generate(
    prompt, strategy: str | None = None, target: str = "smollm2-135m-instruct",
    drafters: dict[str, str] | None = None, **options: Any,
) -> GenerationResult:
    """One-call generation. `target` is a built-in name or a folder; `drafters` maps names to
    drafter specs (default: the target's default drafters); `strategy` defaults to
    compose.registry.default_strategy of the drafters (merged_tree for several). The loaded Composer is reused by
    later calls with the same target and drafters."""
    if not isinstance(target, str):
        raise ValueError("compose.generate takes a target name or folder; use Composer(model, ...) for loaded models")
    drafters = dict(drafters) if drafters is not None else default_drafters(target)
    key = (target, tuple(sorted(drafters.items(), key=lambda kv: (kv[0], str(kv[1])))))
    if key not in _composers:
        _composers[key] = Composer(target, drafters=drafters)
    return _composers[key].generate(prompt, strategy=strategy, **options)


__all__ = [
    "Composer", "generate", "default_drafters", "GenerateOptions", "TreeOptions",
    "GenerationResult", "GenerationStats", "StepRecord", "STRATEGIES",
]
