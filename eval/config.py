"""The evaluation config (a pydantic model; a JSON or TOML file and/or command-line flags) and the
default drafter set."""
from __future__ import annotations

from typing import Literal

import json
import logging
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runtime.assets import DEFAULT_TARGET
from compose.options import TreeOptions

from .datasets import BENCHMARKS, DEFAULT_BENCHMARKS

log = logging.getLogger(__name__)


class EvalConfig(BaseModel):
    """Defaults are the main job, `specmux eval` with no arguments: every benchmark (a 1-item
    seeded sample each; MT-Bench's item has two turns), T = 0 and 1, 32 new tokens per turn, every
    registered strategy over the default drafters, tree="auto".
    Sized to finish in under 15 minutes on 2 CPU cores, first-use model conversion included,
    with the untrained early-exit drafters (each strategy costs 2-4x the baseline's time there);
    raise --limit / --max-new-tokens / the tree for real comparisons."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(DEFAULT_TARGET, description="built-in model name or a local transformers folder")
    drafters: dict[str, str] | None = Field(
        None, description="name -> drafter spec (early-exit:K, lm:<model>, ...); None: default_drafters(target)")
    strategies: list[str] | None = Field(
        None, description="strategy labels: a registered name, name:drafter for strategies that take one "
                          "(single:math), options in brackets (online[probe_every=2]); None: every registered "
                          "strategy, expanded per drafter where needed")
    benchmarks: list[str] = Field(default_factory=lambda: list(DEFAULT_BENCHMARKS), description="benchmarks to run")
    limit: int | None = Field(1, ge=1, description="items per benchmark (a fixed seeded subset); None: all")
    sample_seed: int = Field(0, description="seed of the --limit subset")
    temperatures: list[float] = Field(default_factory=lambda: [0.0, 1.0], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="sampling seeds (each sampled item runs once per seed; greedy runs use the first)")
    max_new_tokens: int = Field(32, ge=1, description="per turn")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="sampled runs")
    top_k: int = Field(0, ge=0, description="sampled runs; 0 = off")
    tree: TreeOptions = Field(default_factory=lambda: TreeOptions(auto=True),
                              description="auto (default: sized to the machine and the running acceptance) or "
                                          "depth, top_k, budget, sampled, merge_budget")
    chat: bool | None = Field(None, description="apply the chat template; None: when the tokenizer has one")
    analysis: bool = Field(False, description="routing accuracy against the oracle choice (replays every "
                                              "greedy routed step once per drafter: slow)")
    domain_router: Path | None = Field(None, description="the `domain` strategy's classifier file (`specmux route`); "
                                                         "None: the one shipped with the target's drafters")
    calibration: Path | None = Field(None, description="starting fits of the calibrated routing signals; None: the "
                                                       "shipped ones, else unfitted (the run writes calibration.json)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None: auto (the cores no other process "
                                                         "is running on, compose/threads.py)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="the target's arithmetic: auto (bfloat16 where the CPU multiplies it natively and the "
                            "batch-invariant forward holds, else float32), float32 or bfloat16")
    out: Path | None = Field(None, description="output folder; None: runs/eval-<timestamp>; an existing one resumes")

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
        if not names:
            raise ValueError("no benchmarks selected")
        return list(dict.fromkeys(names))

    @field_validator("temperatures")
    @classmethod
    def _non_negative(cls, values: list[float]) -> list[float]:
        if any(t < 0 for t in values):
            raise ValueError(f"temperatures must be >= 0, got {values}")
        return sorted(set(float(t) for t in values))

    def result_settings(self) -> dict:
        """The settings every stored record depends on: a resumed run must match them."""
        return self.model_dump(mode="json", include={"target", "drafters", "max_new_tokens", "top_p", "top_k", "tree", "chat",
                                                       "domain_router", "dtype"})

    def thread_setting(self) -> int | str:
        return self.threads or "auto"


def load_config_file(path: str | Path) -> dict:
    """A JSON (.json) or TOML (.toml) file of EvalConfig fields."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"config file {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a table/object of settings")
    return data


def default_drafters(target: str) -> dict[str, str]:
    """The drafter set a target gets when none is named: the trained specialists shipped for it
    when they exist, else self-speculative early-exit drafters. One source of truth with
    `specmux generate` (compose.defaults); this wrapper says which set was used."""
    from compose.defaults import default_drafters as compose_default_drafters

    specs = dict(compose_default_drafters(target))
    kind = "early-exit (no trained drafters found for this target)" if all(
        s.startswith("early-exit:") for s in specs.values()) else "trained"
    log.info("default drafters for %s: %s drafters %s", target, kind, specs)
    return specs
