"""Warm-up at startup: the server meets the kernels' shapes before its first request.

oneDNN keeps state for every matmul shape it runs (weight shape x row count, never freed; about
1 MiB each on the default target), so a server that met them one by one under traffic grew for
its first hundreds of requests. Row counts come from a few sizes (runtime/prepacked.py bucket:
exact up to 64, then four per doubling), so all of them can be met up front: one short greedy
request per strategy the server runs by default (which packs every weight those strategies read
and runs their code paths through the scheduler's own batched forward), then every packed weight
shape at every row count up to `max_rows` (prompts and batched prefills beyond it still meet
new shapes, about 10 MiB per new size), and the KV caches of a full batch (the scheduler's pool
would otherwise fill as the first concurrent requests come). Measured on the default pair, 2
cores: about 4 s and 500 MiB up front, then flat (docs/serving.md "Memory")."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from runtime.prepacked import warm_shapes

from .slot import new_slot

WARM_PROMPT = "Tom has 12 apples and buys 30 more. How many apples does he have now?"
WARM_IDS = list(range(1, 17))  # for a server without a tokenizer (token-id prompts)


@dataclass(frozen=True)
class WarmUp:
    max_rows: int = 1024  # the longest prefill (prompt tokens, or rows of a batched step) met up front
    new_tokens: int = 16
    cache_positions: int = 512  # KV caches for a full batch of requests this long, allocated up front

    def __post_init__(self):
        if min(self.max_rows, self.new_tokens, self.cache_positions) < 1:
            raise ValueError(f"warm-up max_rows, new_tokens and cache_positions must be >= 1, got "
                             f"{self.max_rows}, {self.new_tokens}, {self.cache_positions}")

    def run(self, scheduler) -> str:
        """Run in the scheduler's thread before it serves (its observer is not told: warm-up
        requests are not traffic). Returns a one-line report."""
        composer = scheduler.composer
        start = time.perf_counter()
        prompt = WARM_PROMPT if composer.tokenizer is not None else WARM_IDS
        options = {"max_new_tokens": self.new_tokens, "temperature": 0.0}
        served = []
        for name in (None, "autoregressive"):  # None: the server's default strategy, as for a request
            slot = new_slot(composer, prompt, name, lambda event: None, options)
            if slot.strategy_name in served:
                continue
            served.append(slot.strategy_name)
            scheduler.serve_alone(slot)
            if getattr(slot, "failed", False):
                raise RuntimeError(f"the warm-up request with strategy {slot.strategy_name!r} failed: {slot.error}")
        matmuls = warm_shapes(self.max_rows)
        scheduler.caches.fill(self.cache_positions)
        return (f"warmed up in {time.perf_counter() - start:.1f} s: {len(served)} requests "
                f"({', '.join(served)}), {matmuls} matmul shapes up to {self.max_rows} rows, "
                f"{scheduler.max_batch} KV caches of {self.cache_positions} positions")


def report(line: str) -> None:
    print(f"specmux serve: {line}", file=sys.stderr, flush=True)
