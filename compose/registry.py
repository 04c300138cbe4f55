"""Names -> strategies (the registry itself: compose/strategies/__init__.py) and drafter specs."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from drafters.base import Drafter

from .options import TreeOptions
from .strategies import STRATEGIES, Strategy
from .target import TargetModel

DEFAULT_COMPOSING = "merged_tree"


def default_strategy(drafters: Mapping[str, Drafter]) -> str:
    """The strategy used when none is named: plain decoding without drafters, the drafter
    itself when there is one, the composing default (DEFAULT_COMPOSING) otherwise."""
    return "autoregressive" if not drafters else "single" if len(drafters) == 1 else DEFAULT_COMPOSING


def strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]


def strategy_options(name: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split generate() keywords into (the strategy's own options, the rest). A keyword another
    strategy takes but this one does not (e.g. `drafter=` with merged_tree) is an error."""
    cls = strategy_class(name)
    everyone = {k for c in STRATEGIES.values() for k in c.options}
    wrong = sorted(k for k in options if k in everyone and k not in cls.options)
    if wrong:
        raise ValueError(f"strategy {name!r} takes no {', '.join(k + '=' for k in wrong)} option")
    return ({k: v for k, v in options.items() if k in cls.options},
            {k: v for k, v in options.items() if k not in everyone})


def make_strategy(
    name: str, drafters: Mapping[str, Drafter], tree: TreeOptions, cache: dict | None = None, **kwargs: Any
) -> Strategy:
    """`cache`: a dict owned by the caller (one per Composer) where strategies keep costly
    derived drafters (e.g. averaged weights) and routing statistics across generations."""
    return strategy_class(name).create(drafters, tree, {} if cache is None else cache, **kwargs)


def make_drafter(spec: str, target: TargetModel, name: str) -> Drafter:
    """A drafter from its spec string "<kind>[:<argument>]" (DRAFTER_KINDS): "early-exit:K"
    (target's first K layers), "dvi:K[:<adapter folder>]" (early exit at K with adapters learned
    online from verification), "lm:<built-in name or folder>" (an independent LM with the target's
    tokenizer), "eagle:<folder>" (a trained feature-level drafter checkpoint, validated against
    this target), "suffix[:<corpus folder or file>]" (a training-free suffix-automaton drafter over
    the prompt, the generated tokens and optionally a corpus of past outputs: drafters/suffix.py).
    Independent LM and feature drafters run in bfloat16 where the hardware multiplies it natively
    (drafters.model.fast_draft_dtype: drafting cost is mostly reading weights); early exit shares
    the target's weights as they are."""
    kind, _, arg = spec.partition(":")
    if kind not in DRAFTER_KINDS:
        raise ValueError(f"unknown drafter spec {spec!r}; expected 'early-exit:K', 'dvi:K', 'lm:<model>', "
                         "'eagle:<checkpoint folder>' or 'suffix[:<corpus>]'")
    return DRAFTER_KINDS[kind](spec, arg, target, name)


# One factory per drafter kind: (spec, argument after the first ":", target, name) -> Drafter.
# Each imports its drafter module when asked, so a Composer loads only the kinds it uses.
def early_exit_drafter(spec: str, arg: str, target: TargetModel, name: str) -> Drafter:
    if not arg.isdigit():
        raise ValueError(f"drafter spec {spec!r}: expected early-exit:<number of layers>")
    from drafters.lm import EarlyExitDrafter

    return EarlyExitDrafter(target.model, int(arg), name=name)


def dvi_drafter(spec: str, arg: str, target: TargetModel, name: str) -> Drafter:
    layer, _, adapter = arg.partition(":")
    if not layer.isdigit():
        raise ValueError(f"drafter spec {spec!r}: expected dvi:<exit layer> or dvi:<exit layer>:<adapter folder>")
    from drafters.dvi import DVIDrafter

    if adapter:
        return DVIDrafter.from_adapter(target.model, adapter, int(layer), name=name)
    return DVIDrafter(target.model, int(layer), name=name)


def lm_drafter(spec: str, arg: str, target: TargetModel, name: str) -> Drafter:
    from drafters.lm import CausalLMDrafter
    from drafters.model import fast_draft_dtype
    from runtime.assets import load_target

    model, tokenizer = load_target(arg, dtype=fast_draft_dtype(target.device) or target.dtype)
    if target.tokenizer is not None and tokenizer.get_vocab() != target.tokenizer.get_vocab():
        raise ValueError(
            f"drafter {name!r} ({arg}) has a different tokenizer vocabulary from the target: "
            "an independent LM drafter must share the target's tokenizer"
        )
    return CausalLMDrafter(model, target.vocab_size, name=name)


def eagle_drafter(spec: str, arg: str, target: TargetModel, name: str) -> Drafter:
    from drafters import load_drafter
    from drafters.model import fast_draft_dtype

    return load_drafter(arg, target.model, name=name, dtype=fast_draft_dtype(target.device))


def suffix_drafter(spec: str, arg: str, target: TargetModel, name: str) -> Drafter:
    if spec.startswith("suffix:") and not arg:
        raise ValueError(f"drafter spec {spec!r}: expected suffix or suffix:<corpus folder or file>")
    from drafters.suffix import SuffixDrafter

    return SuffixDrafter(target.vocab_size, corpus=arg or None, tokenizer=target.tokenizer, name=name)


# the registry of drafter kinds: spec prefix -> factory (adding a kind: its module and one line here)
DRAFTER_KINDS: dict[str, Callable[[str, str, TargetModel, str], Drafter]] = {
    "early-exit": early_exit_drafter, "dvi": dvi_drafter, "lm": lm_drafter, "eagle": eagle_drafter,
    "suffix": suffix_drafter,
}
