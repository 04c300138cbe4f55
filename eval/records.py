"""What one evaluation run writes per prompt and strategy, and the resumable JSONL store.

results.jsonl holds one `RunRecord` per line: one benchmark item (all its turns) generated with
one strategy at one temperature and seed. Lines are appended and flushed one by one, so an
interrupted run loses at most the line being written; a re-run with the same output folder skips
every key already present (a truncated last line is ignored with a warning)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, Field

from compose.types import GenerationResult
from runtime import atomic

log = logging.getLogger(__name__)

RESULTS_SCHEMA = "specmux-eval-record/1"
BASELINE = "autoregressive"


class TurnLog(BaseModel):
    """One generated turn, with its step log kept compact enough to re-aggregate any metric."""

    prompt_tokens: int
    token_ids: list[int]
    text: str
    finish_reason: str | None
    new_tokens: int
    accepted: list[int]  # per verifier forward: accepted draft tokens (the bonus token excluded)
    tree_sizes: list[int]  # per verifier forward: nodes verified, root included
    step_drafters: list[str | None]  # per verifier forward: the routing choice (None: no single drafter)
    accepted_by: dict[str, int] = Field(default_factory=dict)  # accepted draft tokens each drafter proposed
    routing: list[str] = Field(default_factory=list)  # the strategy's routing log (per step or per turn)
    times: dict[str, float]  # seconds: prefill, draft, verify, forward, total (GenerationStats.phase_times)
    # analysis mode, greedy only: per verifier forward, the draft tokens each drafter alone would
    # have had accepted at that point (the oracle choice is the argmax)
    oracle: list[dict[str, int]] | None = None

    @classmethod
    def from_result(cls, result: GenerationResult) -> "TurnLog":
        stats = result.stats
        return cls(
            prompt_tokens=len(result.prompt_ids), token_ids=list(result.token_ids), text=result.text,
            finish_reason=result.finish_reason, new_tokens=stats.new_tokens,
            accepted=[s.accepted for s in stats.steps], tree_sizes=[s.tree_size for s in stats.steps],
            step_drafters=[s.drafter for s in stats.steps], accepted_by=stats.proposer_counts(),
            routing=list(stats.routing), times=stats.phase_times(),
        )


class RecordKey(NamedTuple):
    benchmark: str
    prompt_id: str
    strategy: str
    temperature: float
    seed: int


class RunRecord(BaseModel):
    schema_: str = Field(RESULTS_SCHEMA, alias="schema")
    benchmark: str
    prompt_id: str
    strategy: str  # a label: "autoregressive" (the baseline), "single:math", "merged_tree", ...
    temperature: float
    seed: int
    turns: list[TurnLog]
    wall_seconds: float  # the whole item, tokenisation and decoding included
    order: int  # position of this strategy in the item's interleaved run order
    finished_at: str  # ISO time

    model_config = {"populate_by_name": True}

    @property
    def key(self) -> RecordKey:
        return RecordKey(self.benchmark, self.prompt_id, self.strategy, self.temperature, self.seed)

    @property
    def unit(self) -> tuple[str, str, float, int]:
        """The (benchmark, prompt, temperature, seed) all strategies of one interleaved round share."""
        return (self.benchmark, self.prompt_id, self.temperature, self.seed)


class ResultStore:
    """results.jsonl: read what is done, append new records one line at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[RecordKey, RunRecord] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = RunRecord.model_validate_json(line)
            except ValueError as e:
                if number == len(lines):  # an interrupted write: that item is simply redone
                    log.warning("%s: ignoring the unfinished last line (%s)", self.path, str(e).splitlines()[0])
                    self._drop_last_line(lines[:-1])
                    continue
                raise ValueError(f"{self.path}:{number}: not a result record: {e}") from e
            self.records[record.key] = record

    def _drop_last_line(self, keep: list[str]) -> None:
        atomic.write_text(self.path, "".join(line + "\n" for line in keep))

    def __contains__(self, key: RecordKey) -> bool:
        return key in self.records

    def get(self, key: RecordKey) -> RunRecord | None:
        return self.records.get(key)

    def append(self, record: RunRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(record.model_dump_json(by_alias=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record.key] = record

    def all(self) -> list[RunRecord]:
        return list(self.records.values())


def write_json(path: Path, data) -> None:
    atomic.write_json(path, data, default=_jsonable)


def _jsonable(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

