"""The batching scheduler on the real default target and its shipped drafters (slow: loads
SmolLM2-135M): greedy requests decoded together, with every strategy the server offers by
default, equal single-stream plain decoding token for token."""
from __future__ import annotations

import pytest

from serve.scheduler import BatchTrees, Scheduler
from serve.slot import new_slot

pytestmark = pytest.mark.slow

PROMPTS = [
    "A train travels 120 km in 1.5 hours. What is its average speed?",
    "What are three good habits for staying focused while working from home?",
    "Sara has 5 apples, buys 7 more and eats 3. How many are left?",
    "Write a haiku about the sea.",
]


@pytest.fixture(scope="module")
def composer():
    from compose import Composer
    from compose.defaults import default_drafters

    return Composer("smollm2-135m-instruct", drafters=default_drafters("smollm2-135m-instruct"))


@pytest.mark.parametrize("trees", [BatchTrees(draft_max_batch=8, row_budget=10_000), BatchTrees()],
                         ids=["full-trees", "server-default"])
def test_concurrent_greedy_requests_equal_plain_decoding(composer, trees):
    strategies = ["merged_tree", "single", "autoregressive", "confidence"]
    scheduler = Scheduler(composer, max_batch=4, max_queue=8, trees=trees)
    slots = []
    for prompt, strategy in zip(PROMPTS, strategies):
        extra = {"drafter": "math"} if strategy == "single" else {}
        slots.append(new_slot(composer, [{"role": "user", "content": prompt}], strategy, lambda e: None,
                              dict(max_new_tokens=40, temperature=0.0, **extra)))
        scheduler.submit(slots[-1])
    scheduler.run_until_idle()
    for prompt, slot in zip(PROMPTS, slots):
        plain = composer.generate([{"role": "user", "content": prompt}], strategy="autoregressive", max_new_tokens=40)
        assert slot.tokens == plain.token_ids, prompt
    if trees.draft_max_batch >= 4:
        assert sum(s.accepted for slot in slots for s in slot.stats.steps) > 0
