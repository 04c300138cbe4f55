"""torch.compile for the training step's hot spots (the KL loss's blocks, the unroll's layer):
a compiled function that falls back to its eager twin, with one warning, where compiling or
running it fails (no C++ compiler, an unsupported op): the same values to rounding, slower."""
from __future__ import annotations

import warnings
from typing import Callable


def eager_on_failure(compiled: Callable, eager: Callable, what: str, skip_hint: str) -> Callable:
    """`compiled` until it raises; then one RuntimeWarning naming `what` and the error, and `eager`
    from then on (this call included)."""
    state = {"ok": True}

    def call(*args, **kwargs):
        if state["ok"]:
            try:
                return compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - torch.compile raises many kinds; any means: run eager
                state["ok"] = False
                warnings.warn(f"{what} failed to compile or run ({type(e).__name__}: {str(e)[:200]}); running it "
                              f"eagerly (slower, same values; {skip_hint} skips the attempt)", RuntimeWarning, stacklevel=2)
        return eager(*args, **kwargs)

    return call
