"""Regeneration through vLLM (drafters/training/vllm_regen.py), with a stand-in `vllm` module:
what the engine is asked, how answers are cut, the corpus manifest naming the engine, and a clear
error where vLLM is missing. vLLM itself is an optional extra not installed here."""
from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from types import SimpleNamespace

import pytest

from drafters.training.corpus import load_corpus, regenerate_corpus
from drafters.training.vllm_regen import VLLMGenerator, answer_ids


class FakeTokenizer:
    pad_token_id = 0
    eos_token_id = 9

    def apply_chat_template(self, messages, **kw):
        text = " ".join(m["content"] for m in messages)
        return [1] + [3 + len(w) % 5 for w in text.split()] + [2]


@pytest.fixture()
def fake_vllm(monkeypatch):
    calls = {"llm": [], "generate": []}
    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)

    class LLM:
        def __init__(self, **kw):
            calls["llm"].append(kw)

        def generate(self, prompts, params, use_tqdm=True):
            calls["generate"].append((prompts, params))
            # answer: the prompt's length, then 9 (EOS) for even lengths; no EOS (cut at the cap) for odd
            outs = []
            for p in prompts:
                n = len(p["prompt_token_ids"])
                ids = [5, n, 9, 7] if n % 2 == 0 else [5] * params.max_tokens
                outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, finish_reason="stop", stop_reason=None)]))
            return outs

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return calls


def test_answers_are_cut_after_the_first_end_of_sequence_token():
    eos = {9, 2}
    assert answer_ids(SimpleNamespace(token_ids=[4, 5, 9, 6]), eos) == [4, 5, 9]
    # a version that leaves the stop token out of token_ids: put back
    assert answer_ids(SimpleNamespace(token_ids=[4, 5], finish_reason="stop", stop_reason=2), eos) == [4, 5, 2]
    # cut at the length limit: nothing added
    assert answer_ids(SimpleNamespace(token_ids=[4, 5], finish_reason="length", stop_reason=None), eos) == [4, 5]


def test_corpus_through_vllm_records_answers_and_names_the_engine(fake_vllm, tmp_path):
    gen = VLLMGenerator("/models/target", tokenizer="/models/target")
    assert fake_vllm["llm"] == [{"model": "/models/target", "dtype": "auto", "tokenizer": "/models/target"}]
    prompts = [("math", "one two three"), ("chat", "a b"), ("chat", "x y z w")]

    class Target:  # what _eos_ids reads
        generation_config = SimpleNamespace(eos_token_id=9)

    regenerate_corpus(Target(), FakeTokenizer(), prompts, tmp_path / "c", batch_size=2, max_new_tokens=6,
                      generate=gen, engine="vllm")
    records = {r["id"]: r for r in load_corpus(tmp_path / "c")}
    assert sorted(records) == [0, 1, 2]
    for r in records.values():
        answer = r["input_ids"][r["prompt_len"]:]
        n = r["prompt_len"]
        assert answer == ([5, n, 9] if n % 2 == 0 else [5] * 6)
    params = fake_vllm["generate"][0][1]
    assert params.temperature == 0.0 and params.max_tokens == 6 and params.stop_token_ids == [9] and params.seed is None
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["engine"] == "vllm"


def test_transformers_corpora_keep_their_manifest(tmp_path):
    """Corpora made before engines had a name (the shipped one) still match: no engine key."""
    from drafter_fixtures import tiny_target

    target = tiny_target(vocab=16, layers=1, hidden=16, seed=0)
    target.generation_config.eos_token_id = 9
    regenerate_corpus(target, FakeTokenizer(), [("math", "a b c")], tmp_path / "t", max_new_tokens=3)
    assert "engine" not in json.loads((tmp_path / "t" / "manifest.json").read_text())
    with pytest.raises(ValueError, match="other prompts or settings"):
        regenerate_corpus(target, FakeTokenizer(), [("math", "a b c")], tmp_path / "t", max_new_tokens=3,
                          generate=lambda *a: [[9]], engine="vllm")


def test_missing_vllm_is_an_error_that_names_the_install(monkeypatch):
    import drafters.training.vllm_regen as vr

    monkeypatch.setattr(vr, "vllm_installed", lambda: False)
    with pytest.raises(ValueError, match="pip install vllm"):
        VLLMGenerator("/models/target")


def test_suite_config_picks_the_engine(fake_vllm, monkeypatch, tmp_path):
    from drafters.training.suite import SuiteConfig
    from drafters.training import suite_data

    monkeypatch.setattr(suite_data, "_ENGINES", {})
    assert suite_data.engine(SuiteConfig()) == {}
    cfg = SuiteConfig(regen_engine="vllm", target_path=str(tmp_path), regen_engine_args={"gpu_memory_utilization": 0.5})
    first = suite_data.engine(cfg)
    assert first["engine"] == "vllm" and suite_data.engine(cfg)["generate"] is first["generate"]  # one engine a run
    assert fake_vllm["llm"] == [{"model": str(tmp_path), "dtype": "auto", "tokenizer": str(tmp_path),
                                 "gpu_memory_utilization": 0.5}]
