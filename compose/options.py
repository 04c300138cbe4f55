"""User-facing options, validated by pydantic (a ValidationError is a ValueError naming the field)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trees import SamplingSpec, TreeSpec


class TreeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    depth: int = Field(5, ge=1, description="draft levels below the root")
    top_k: int = Field(8, ge=1, description="children per expanded node and frontier width")
    budget: int = Field(32, ge=1, description="draft nodes per drafter tree (root excluded)")
    sampled: bool = Field(False, description="draw children from the drafter (rejection-verified) instead of top-k")
    stop_below: float = Field(0.0, ge=0.0, lt=1.0, description="stop drafting deeper once no path's draft probability reaches this (0 = always depth levels; top-k trees only)")
    merge_budget: Literal["sum", "equal"] = Field("sum", description="merged_tree: keep every drafter's budget, or cut the union to one budget")
    auto: bool = Field(False, description="size each step's tree (depth, top_k, budget) to this machine's costs and the running acceptance; depth/top_k/budget are then ignored")

    def spec(self) -> TreeSpec:
        return TreeSpec(depth=self.depth, top_k=self.top_k, budget=self.budget, sampled=self.sampled,
                        stop_below=self.stop_below)


class GenerateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="0 = off")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, description="stop strings (not included in the output)")
    chat: bool = Field(False, description="wrap a text prompt as one user message and apply the chat template")
    tree: TreeOptions = Field(default_factory=lambda: TreeOptions(auto=True),
                              description='tree shape, or "auto" (the default: sized to the machine and the running acceptance)')

    @field_validator("tree", mode="before")
    @classmethod
    def _auto_tree(cls, value):
        if value == "auto":
            return TreeOptions(auto=True)
        if isinstance(value, str):
            raise ValueError(f'tree must be tree options or "auto", got {value!r}')
        return value

    def sampling(self) -> SamplingSpec:
        return SamplingSpec(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)


def validation_message(error: ValidationError) -> tuple[str, str | None]:
    """A pydantic ValidationError as one readable line ("tree.budget: Input should be greater
    than or equal to 1 (got 0)") and the first offending field (the server's `param`)."""
    parts, param = [], None
    for e in error.errors():
        loc = ".".join(str(x) for x in e["loc"])
        param = param or loc or None
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], (dict, list)) else ""
        parts.append(f"{loc}: {e['msg']}{got}" if loc else e["msg"])
    return "; ".join(parts), param
