"""The drafter suite's held-out prompts as evaluation benchmarks: `heldout-math` and
`heldout-chat`, the 150 prompts per domain the shipped drafters were never trained on, read from
the corpus archive in the repository (data/<target>/corpus.tar.xz, checked against its manifest)
and split by the suite's own rule (drafters/training/suite_data.py `split_heldout`).

They are what the routing calibration is fitted on (drafters/pretrained/<target>/calibration.json),
so the public benchmarks it is then measured on stay unseen. A held-out chat prompt that continues
a ShareGPT conversation carries that conversation as the item's `context`.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE_TARGET = "smollm2-135m-instruct"  # the target whose shipped suite the held-out sets come from
HELDOUT_DOMAINS = ("math", "chat")


def suite_file(target: str = SUITE_TARGET) -> Path:
    return ROOT / "drafters" / "pretrained" / target / "suite.json"


@lru_cache(maxsize=4)
def heldout_records(domain: str, target: str = SUITE_TARGET) -> tuple[dict, ...]:
    """The suite's held-out records of `domain` (prompt, regenerated answer ids), in split order."""
    from drafters.training.corpus import parse_corpus_parts
    from drafters.training.corpus_archive import read_corpus_members
    from drafters.training.suite_data import answered, split_heldout

    if domain not in HELDOUT_DOMAINS:
        raise ValueError(f"no held-out set for domain {domain!r}; choose from {HELDOUT_DOMAINS}")
    suite = json.loads(suite_file(target).read_text())
    if not suite.get("corpus_archive"):
        raise ValueError(f"{suite_file(target)} names no corpus_archive: no held-out set ships for {target}")
    members = read_corpus_members(ROOT / suite["corpus_archive"])
    prefix = f"corpus/{domain}/part-"
    parts = sorted(name for name in members if name.startswith(prefix) and name.endswith(".jsonl"))
    if not parts:
        raise ValueError(f"corpus archive {suite['corpus_archive']} holds no {domain} records")
    records = answered(parse_corpus_parts(members[name].decode() for name in parts))  # as the suite reads them
    heldout, _ = split_heldout(records, int(suite.get("seed", 0)), int(suite.get("heldout_per_domain", 150)))
    return tuple(heldout)


def load_heldout(domain: str):
    """Benchmark items of the held-out `domain`: the last user message is the turn asked, the
    messages before it (a continued ShareGPT conversation) its context."""
    from .datasets import BenchmarkItem

    items = []
    for r in heldout_records(domain):
        prompt = r["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if not messages or messages[-1]["role"] != "user":
            raise ValueError(f"held-out {domain} record {r['id']} does not end with a user message")
        items.append(BenchmarkItem(benchmark=f"heldout-{domain}", id=str(r["id"]), turns=[messages[-1]["content"]],
                                   context=messages[:-1], category=domain))
    return items
