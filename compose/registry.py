"""Names -> strategies and drafter specs."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from drafters.base import Drafter

from .composing import Averaged, Confidence, Entropy, MergedTree
from .options import TreeOptions
from .strategies import Autoregressive, Single, Strategy
from .target import TargetModel

STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "autoregressive": lambda drafters, tree, cache, **kw: Autoregressive(drafters, **kw),
    "single": lambda drafters, tree, cache, **kw: Single(drafters, **kw),
    "averaged": lambda drafters, tree, cache, **kw: Averaged(drafters, cache=cache, **kw),
    "confidence": lambda drafters, tree, cache, **kw: Confidence(drafters, **kw),
    "entropy": lambda drafters, tree, cache, **kw: Entropy(drafters, **kw),
    "merged_tree": lambda drafters, tree, cache, **kw: MergedTree(drafters, merge_budget=tree.merge_budget, **kw),
}


def make_strategy(
    name: str, drafters: Mapping[str, Drafter], tree: TreeOptions, cache: dict | None = None, **kwargs: Any
) -> Strategy:
    """`cache`: a dict owned by the caller (one per Composer) where strategies keep costly
    derived drafters, e.g. averaged weights, across generations."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](drafters, tree, {} if cache is None else cache, **kwargs)


def make_drafter(spec: str, target: TargetModel, name: str) -> Drafter:
    """Spec strings: "early-exit:K" (target's first K layers), "lm:<built-in name or folder>"
    (an independent LM with the target's tokenizer), "eagle:<folder>" (a trained feature-level
    drafter checkpoint, validated against this target)."""
    kind, _, arg = spec.partition(":")
    if kind == "early-exit":
        if not arg.isdigit():
            raise ValueError(f"drafter spec {spec!r}: expected early-exit:<number of layers>")
        from drafters.lm import EarlyExitDrafter

        return EarlyExitDrafter(target.model, int(arg), name=name)
    if kind == "lm":
        from drafters.lm import CausalLMDrafter

        from .models import load_target

        model, tokenizer = load_target(arg)
        if target.tokenizer is not None and tokenizer.get_vocab() != target.tokenizer.get_vocab():
            raise ValueError(
                f"drafter {name!r} ({arg}) has a different tokenizer vocabulary from the target: "
                "an independent LM drafter must share the target's tokenizer"
            )
        return CausalLMDrafter(model, target.vocab_size, name=name)
    if kind == "eagle":
        from drafters import load_drafter

        return load_drafter(arg, target.model, name=name)
    raise ValueError(f"unknown drafter spec {spec!r}; expected 'early-exit:K', 'lm:<model>' or 'eagle:<checkpoint folder>'")
