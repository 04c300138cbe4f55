"""specmux's public face: `generate(prompt, strategy=...)` and the reusable `Composer`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.lazy import lazy_exports

if TYPE_CHECKING:
    from .composer import Composer
    from .types import GenerationResult

# public name -> its module, imported on first use (PEP 562): `import compose` and the CLI's
# `--help` and flag checks do not wait ~4 s for transformers (compose.composer imports it)
_LAZY = {
    "Composer": ".composer", "default_drafters": ".defaults", "GenerateOptions": ".options", "TreeOptions": ".options",
    "STRATEGIES": ".registry", "GenerationResult": ".types", "GenerationStats": ".types", "StepRecord": ".types",
}

_composers: dict[tuple, "Composer"] = {}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


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
    from .composer import Composer
    from .defaults import default_drafters

    drafters = dict(drafters) if drafters is not None else default_drafters(target)
    key = (target, tuple(sorted(drafters.items(), key=lambda kv: (kv[0], str(kv[1])))))
    if key not in _composers:
        _composers[key] = Composer(target, drafters=drafters)
    return _composers[key].generate(prompt, strategy=strategy, **options)


__all__ = [
    "Composer", "generate", "default_drafters", "GenerateOptions", "TreeOptions",
    "GenerationResult", "GenerationStats", "StepRecord", "STRATEGIES",
]
