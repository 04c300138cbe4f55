"""The suite's held-out prompts as benchmarks (eval/heldout.py): the same records the suite holds
out (so a calibration fitted on them never saw a training prompt), context kept, and asked the way
the runner asks a conversation."""
from __future__ import annotations

import json

import pytest

from drafters.training.corpus import load_corpus
from drafters.training.corpus_archive import unpack_corpus
from drafters.training.suite_data import answered, split_heldout
from eval import load_benchmark
from eval.config import EvalConfig
from eval.heldout import ROOT, heldout_records, suite_file


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    work = tmp_path_factory.mktemp("corpus")
    suite = json.loads(suite_file().read_text())
    unpack_corpus(ROOT / suite["corpus_archive"], work)
    return work, suite


@pytest.mark.parametrize("domain", ["math", "chat"])
def test_heldout_items_are_the_suites_heldout_split(unpacked, domain):
    work, suite = unpacked
    # the suite's own path (suite_data.regenerate_timed): the unpacked first round, answered records, its split
    records = answered(load_corpus(work / "corpus" / domain))
    heldout, train = split_heldout(records, suite["seed"], suite["heldout_per_domain"])
    items = load_benchmark(f"heldout-{domain}")
    assert len(items) == len(heldout) == 150
    assert [it.id for it in items] == [str(r["id"]) for r in heldout]
    train_ids = {r["id"] for r in train}
    assert not train_ids & {r["id"] for r in heldout}
    for it, r in zip(items, heldout):
        messages = [{"role": "user", "content": r["prompt"]}] if isinstance(r["prompt"], str) else r["prompt"]
        assert it.context + [{"role": "user", "content": it.turns[0]}] == messages
    assert heldout_records(domain) == tuple(heldout)


def test_heldout_chat_keeps_conversations():
    items = load_benchmark("heldout-chat")
    with_context = [it for it in items if it.context]
    assert with_context and len(with_context) < len(items)  # first turns and later turns
    assert all(it.context[-1]["role"] == "assistant" for it in with_context)


def test_runner_asks_the_turn_after_its_context():
    from types import SimpleNamespace

    from eval.plan import run_conversation
    from eval.datasets import BenchmarkItem

    seen = []

    class FakeComposer:
        def generate(self, prompt, **kw):
            seen.append(prompt)
            raise StopIteration  # stop after the first call: only the prompt matters here

    item = BenchmarkItem(benchmark="heldout-chat", id="1", turns=["and then?"],
                         context=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    run = SimpleNamespace(name="autoregressive", options={})
    with pytest.raises(StopIteration):
        run_conversation(FakeComposer(), item, run, EvalConfig(), 0.0, 0, chat=True)
    assert seen[0] == item.context + [{"role": "user", "content": "and then?"}]
    assert item.context == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]  # not mutated


def test_default_eval_runs_the_public_benchmarks_only():
    assert EvalConfig().benchmarks == ["mtbench", "gsm8k", "humaneval", "math"]
    assert EvalConfig(benchmarks=["heldout-math"]).benchmarks == ["heldout-math"]


def test_unknown_heldout_domain_is_named():
    with pytest.raises(ValueError, match="no held-out set for domain 'code'"):
        heldout_records("code")
