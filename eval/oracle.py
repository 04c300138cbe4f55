"""Analysis mode: the oracle routing choice, computed after the fact.

For a greedy turn of a routed strategy, every verifier forward started at a known position of
the (baseline-identical) output. Replaying that prefix with each drafter alone (`single`, one
step) gives the draft tokens each would have had accepted there; the oracle choice is the
argmax. Costs one prefill per drafter per forward: opt-in (`--analysis`)."""
from __future__ import annotations

from typing import Callable

from compose import Composer
from compose.types import GenerationResult

from .config import EvalConfig
from .plan import StrategyRun


def is_routed(run: StrategyRun, result: GenerationResult, drafter_names: list[str]) -> bool:
    """A run routes between drafters when it is not pinned to one (`drafter=`) and its forwards
    record choices among the named drafters."""
    chosen = {s.drafter for s in result.stats.steps} - {None}
    return len(drafter_names) > 1 and "drafter" not in run.options and bool(chosen) and chosen <= set(drafter_names)


def oracle_acceptance(composer: Composer, result: GenerationResult, config: EvalConfig) -> list[dict[str, int]]:
    """Per verifier forward of `result` (greedy): drafter name -> draft tokens it alone would have
    had accepted at that point. An empty dict where the replay's root differs from the output's
    token there (float noise between a prefill and an incremental forward): not scored."""
    prompt, tokens = list(result.prompt_ids), list(result.token_ids)
    per_step: list[dict[str, int]] = []
    root = 0  # position of the step's root token in the output
    for step in result.stats.steps:
        if root >= len(tokens):  # the output was cut before this root (EOS or a stop string)
            break
        options: dict[str, int] = {}
        for name in composer.drafters:
            replay = composer.generate(
                prompt + tokens[:root], strategy="single", drafter=name, max_new_tokens=2, temperature=0.0,
                tree=config.tree.model_dump())
            if not replay.token_ids or replay.token_ids[0] != tokens[root]:
                options = {}
                break
            options[name] = replay.stats.steps[0].accepted if replay.stats.steps else 0
        per_step.append(options)
        root += step.accepted + 1
    return per_step


def oracle_for(composer: Composer, run: StrategyRun, config: EvalConfig, temperature: float) -> Callable | None:
    """The `oracle=` callback of plan.run_conversation, or None where the analysis does not apply
    (analysis off, sampled runs, runs that do not route)."""
    if not config.analysis or temperature != 0:
        return None
    names = list(composer.drafters)

    def oracle(result: GenerationResult) -> list[dict[str, int]] | None:
        return oracle_acceptance(composer, result, config) if is_routed(run, result, names) else None

    return oracle
