"""Which strategies run, and how one benchmark item becomes a conversation with the target.

Strategies come from the compose registry at run time, so a newly registered strategy is
evaluated without changes here. Each strategy class declares what it takes: one that takes a
named drafter (`drafter=`, like `single`) is expanded into one label per drafter
("single:math"); one that cannot run with the given drafters (`unavailable`, e.g. `averaged`
over drafters of different architectures) is skipped with the reason, which the report shows."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from compose import STRATEGIES, Composer
from compose.types import GenerationResult

from .config import EvalConfig
from .datasets import BenchmarkItem
from .records import BASELINE, TurnLog

log = logging.getLogger(__name__)

PROBE_PROMPT = "Count from one to five."


@dataclass(frozen=True)
class StrategyRun:
    label: str  # what the results call it: "merged_tree", "single:math"
    name: str  # the registered strategy name
    options: dict[str, Any] = field(default_factory=dict)  # extra generate() arguments, e.g. drafter=


def generation_options(config: EvalConfig, temperature: float, seed: int) -> dict[str, Any]:
    return dict(max_new_tokens=config.max_new_tokens, temperature=temperature, top_p=config.top_p,
                top_k=config.top_k, seed=seed, tree=config.tree.model_dump())


def _probe(composer: Composer, run: StrategyRun, config: EvalConfig, chat: bool) -> None:
    """A short real generation: checks the strategy runs with these drafters and warms it up."""
    prompt = [{"role": "user", "content": PROBE_PROMPT}] if chat else PROBE_PROMPT
    options = generation_options(config, 0.0, 0) | {"max_new_tokens": min(8, config.max_new_tokens)}
    composer.generate(prompt, strategy=run.name, **options, **run.options)


def parse_label(label: str) -> tuple[str, str, dict[str, Any]]:
    """(strategy name, drafter, options) of a label: "single:math", "online[probe_every=2,prior=domain]".
    Option values are read as JSON where they parse (numbers, true/false), else kept as text."""
    head, bracket, tail = label.partition("[")
    options: dict[str, Any] = {}
    if bracket:
        if not tail.endswith("]"):
            raise ValueError(f"strategy label {label!r}: options go in brackets, e.g. online[probe_every=2]")
        for item in filter(None, (x.strip() for x in tail[:-1].split(","))):
            key, eq, text = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"strategy label {label!r}: expected key=value options, got {item!r}")
            try:
                options[key.strip()] = json.loads(text)
            except ValueError:
                options[key.strip()] = text.strip()
    name, _, drafter = head.partition(":")
    if name in STRATEGIES:
        unknown = sorted(set(options) - set(STRATEGIES[name].options))
        if unknown:
            raise ValueError(f"strategy {name!r} takes no option(s) {unknown} (in {label!r}); "
                             f"its options: {list(STRATEGIES[name].options)}")
    return name, drafter, options


def expand(name: str, drafter: str, drafter_names: list[str], options: dict[str, Any] | None = None,
           label: str | None = None) -> list[StrategyRun]:
    """The runs of one strategy label: a strategy that takes `drafter=` runs once per drafter
    unless the label names one ("single:math"); any other runs as is. `options` (from the
    label's brackets) go to every run; `label` names a run with options."""
    cls, options = STRATEGIES[name], dict(options or {})
    if drafter:
        if not cls.takes_drafter:
            raise ValueError(f"strategy {name!r} takes no drafter (got {name}:{drafter})")
        if drafter not in drafter_names:
            raise ValueError(f"unknown drafter {drafter!r} in {name}:{drafter}; drafters: {drafter_names}")
        return [StrategyRun(label or f"{name}:{drafter}", name, {**options, "drafter": drafter})]
    if cls.takes_drafter:
        suffix = label[len(name):] if label and options else ""
        return [StrategyRun(f"{name}:{d}{suffix}", name, {**options, "drafter": d}) for d in drafter_names]
    return [StrategyRun(label or name, name, options)]


def resolve_strategies(composer: Composer, config: EvalConfig, chat: bool) -> tuple[list[StrategyRun], dict[str, str]]:
    """(the strategy runs, skipped name -> reason). The baseline is not among the runs: it always
    runs. A strategy named explicitly that cannot run with the drafters is an error; among the
    default (every registered strategy) it is skipped with the reason, which the report shows.
    Every run (baseline included) is probed with a short untimed generation, which also warms it
    up before anything is measured."""
    drafter_names = list(composer.drafters)
    _probe(composer, StrategyRun(BASELINE, BASELINE), config, chat)
    explicit = config.strategies is not None
    labels = list(dict.fromkeys(config.strategies)) if explicit else list(STRATEGIES)
    runs, skipped = [], {}
    for label in labels:
        name, drafter, options = parse_label(label)
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r} in {label!r}; registered: {sorted(STRATEGIES)}")
        if name == BASELINE:
            continue
        reason = composer.unavailable(name)
        if reason is not None:
            if explicit:
                raise ValueError(f"strategy {label!r} cannot run with drafters {drafter_names}: {reason}")
            skipped[name] = reason
            log.warning("skipping strategy %r: %s", name, reason)
            continue
        for run in expand(name, drafter, drafter_names, options, label if options else None):
            _probe(composer, run, config, chat)
            runs.append(run)
    return runs, skipped


def run_conversation(
    composer: Composer, item: BenchmarkItem, run: StrategyRun, config: EvalConfig, temperature: float, seed: int,
    chat: bool, oracle=None,
) -> list[TurnLog]:
    """Every turn of `item`; turn t + 1 is asked after this run's own answer to turn t (turn t
    samples with seed + t). `oracle(result) -> list[dict]` fills TurnLog.oracle when given."""
    messages: list[dict[str, str]] = list(item.context)  # a given conversation before the first turn
    turns = []
    for t, user_text in enumerate(item.turns):
        messages.append({"role": "user", "content": user_text})
        prompt = list(messages) if chat else "\n\n".join(m["content"] for m in messages)
        result: GenerationResult = composer.generate(
            prompt, strategy=run.name, **generation_options(config, temperature, seed + t), **run.options)
        turn = TurnLog.from_result(result)
        if oracle is not None:
            turn.oracle = oracle(result)
        turns.append(turn)
        messages.append({"role": "assistant", "content": result.text})
    return turns
