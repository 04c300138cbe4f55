"""Greedy token equality with transformers' own generate on the real default target, with the
suffix drafter alone and merged with the shipped math and chat drafters, on prompts whose answers
repeat their prompt (where the suffix drafter drafts most) and on ones that do not."""
from __future__ import annotations

import pytest
import torch

from compose import Composer, default_drafters

PROMPTS = [
    "Rewrite this Python function with type hints, keeping everything else:\n\n```python\n"
    "def add_all(numbers):\n    total = 0\n    for n in numbers:\n        total += n\n    return total\n```",
    "Repeat this sentence three times: the quick brown fox jumps over the lazy dog.",
    "What is 17 * 23? Answer briefly.",
    "Write a haiku about the sea.",
]


@pytest.fixture(scope="module")
def composer():
    return Composer("smollm2-135m-instruct", drafters={**default_drafters("smollm2-135m-instruct"), "suffix": "suffix"})


def reference(composer: Composer, ids: torch.Tensor, n: int) -> list[int]:
    out = composer.target.model.generate(ids[None], max_new_tokens=n, do_sample=False)
    return out[0, ids.numel():].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("strategy, options", [
    ("single", dict(drafter="suffix", tree=dict(depth=8, top_k=4, budget=16))),
    ("single", dict(drafter="suffix", tree="auto")),
    ("merged_tree", dict(tree=dict(depth=5, top_k=4, budget=12))),
    ("merged_tree", dict(tree=dict(depth=5, top_k=4, budget=12, merge_budget="equal"))),
    ("confidence", dict(tree=dict(depth=4, top_k=3, budget=10))),
])
def test_real_model_greedy_equality_with_the_suffix_drafter(composer, strategy, options):
    suffix_tokens = 0
    for prompt in PROMPTS:
        ids = composer.encode([{"role": "user", "content": prompt}])
        result = composer.generate(ids, strategy=strategy, max_new_tokens=48, **options)
        assert result.token_ids == reference(composer, ids, 48)[: len(result.token_ids)]
        assert len(result.token_ids) == 48 or result.finish_reason == "eos"
        suffix_tokens += result.stats.proposer_counts().get("suffix", 0)
    if strategy != "confidence":
        assert suffix_tokens > 0, "the suffix drafter must have tokens accepted on these prompts"
