"""specmux's public face: `generate(prompt, strategy=...)` and the reusable `Composer`."""
from __future__ import annotations

from typing import Any

from .composer import Composer
from .options import GenerateOptions, TreeOptions
from .registry import STRATEGIES
from .types import GenerationResult, GenerationStats, StepRecord

_composers: dict[tuple, Composer] = {}


def generate(prompt, strategy: str = "single", target: Any = "smollm2-135m-instruct", drafters=None, **options: Any) -> GenerationResult:
    """One-call generation; the loaded target (and drafters) are reused across calls with the
    same target and drafter specs."""
    key = (id(target) if not isinstance(target, str) else target, tuple(sorted((drafters or {}).items(), key=str)) if all(isinstance(v, str) for v in (drafters or {}).values()) else id(drafters))
    if key not in _composers:
        _composers[key] = Composer(target, drafters=drafters)
    return _composers[key].generate(prompt, strategy=strategy, **options)


__all__ = ["Composer", "generate", "GenerateOptions", "TreeOptions", "GenerationResult", "GenerationStats", "StepRecord", "STRATEGIES"]
