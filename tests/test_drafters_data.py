"""Data pipeline: ShareGPT salvage, chat-template loss masks, overlap report, resumable corpus
and state shards, and `specmux train` end to end on a tiny target."""
import json

import pytest
import torch

from drafter_fixtures import char_tokenizer, tiny_target
from drafters.checkpoint import load_drafter
from drafters.training.corpus import chat_tokens_with_mask, load_corpus, regenerate_corpus
from drafters.training.data import domain_prompts, drop_overlapping, iter_sharegpt, overlap_report
from drafters.training.hidden_cache import cache_hidden_states, load_hidden_cache


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab=128, layers=2, hidden=64, seed=2)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def test_sharegpt_is_salvaged_record_by_record(tmp_path):
    recs = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i}"}]} for i in range(3)]
    text = json.dumps(recs, indent=1)
    cut = text[: text.rindex('"q2"')]  # cut off inside the third record
    (tmp_path / "sg.json").write_text(cut)
    assert [r["id"] for r in iter_sharegpt(tmp_path / "sg.json")] == ["0", "1"]
    (tmp_path / "whole.json").write_text(text)
    assert len(list(iter_sharegpt(tmp_path / "whole.json"))) == 3


def test_loss_mask_covers_exactly_the_assistant_turns(tok):
    msgs = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cd"},
            {"role": "user", "content": "e"}, {"role": "assistant", "content": "fg"}]
    ids, mask = chat_tokens_with_mask(tok, msgs)
    assert ids == tok.apply_chat_template(msgs, tokenize=True, return_dict=False)
    masked = tok.decode([i for i, m in zip(ids, mask) if m])
    assert masked == "cd<|im_end|>\nfg<|im_end|>\n"


def test_overlap_report_counts_shared_8grams():
    evals = {"bench": ["one two three four five six seven eight nine", "unrelated words only here"]}
    train = ["zero one two three four five six seven eight", "nothing in common at all with it ok"]
    rep = overlap_report(train, evals)["eval"]["bench"]
    assert rep["shared_ngrams"] == 1 and rep["train_prompts_with_shared_ngram"] == 1
    assert rep["eval_prompts_with_shared_ngram"] == 1
    assert rep["shared_ngram_rate"] == pytest.approx(1 / 3)  # 2 + 1 training 8-grams, 1 shared
    kept = drop_overlapping([("chat", t) for t in train], evals)
    assert [p for _, p in kept] == [train[1]]


def test_mixed_domain_keeps_the_ratio():
    pairs = domain_prompts("mixed", 9, seed=1, mix_ratio=(2, 1))
    assert [d for d, _ in pairs].count("math") == 6 and len(pairs) == 9
    assert len({p for _, p in pairs}) == 9


def test_corpus_regeneration_resumes_and_checks_its_manifest(tmp_path, target, tok):
    prompts = [("math", f"{i}+{i}=?") for i in range(5)]
    out = regenerate_corpus(target, tok, prompts, tmp_path / "c", batch_size=2, max_new_tokens=6)
    first = load_corpus(out)
    assert len(first) == 5 and sorted(p.name for p in out.glob("part-*")) == [f"part-0000{i}.jsonl" for i in range(3)]
    for rec in first:
        assert rec["input_ids"][: rec["prompt_len"]] == tok.apply_chat_template(
            [{"role": "user", "content": rec["prompt"]}], add_generation_prompt=True, tokenize=True, return_dict=False)
        assert 1 <= len(rec["input_ids"]) - rec["prompt_len"] <= 6
    (out / "part-00001.jsonl").unlink()
    keep = (out / "part-00000.jsonl").stat().st_mtime_ns
    regenerate_corpus(target, tok, prompts, out, batch_size=2, max_new_tokens=6)
    assert load_corpus(out) == first and (out / "part-00000.jsonl").stat().st_mtime_ns == keep
    with pytest.raises(ValueError, match="other prompts or settings"):
        regenerate_corpus(target, tok, prompts[:4], out, batch_size=2, max_new_tokens=6)


def test_state_shards_resume_and_match_the_target(tmp_path, target):
    records = [{"input_ids": list(range(3 + i, 12 + 2 * i)), "prompt_len": 2} for i in range(5)]
    cache_hidden_states(target, records, [1, -1], tmp_path / "s", shard_records=2)
    full = load_hidden_cache(tmp_path / "s", target)
    (tmp_path / "s" / "shard-00001.safetensors").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        load_hidden_cache(tmp_path / "s")
    cache_hidden_states(target, records, [1, -1], tmp_path / "s", shard_records=2)
    again = load_hidden_cache(tmp_path / "s", target)
    assert all(torch.equal(a["features"], b["features"]) for a, b in zip(full, again))
    with torch.no_grad():
        hs = target(torch.tensor([records[3]["input_ids"]]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(again[3]["features"], torch.cat([hs[1][0], hs[-1][0]], -1))
    with pytest.raises(ValueError, match="other records, layers"):
        cache_hidden_states(target, records, [2], tmp_path / "s", shard_records=2)


def test_specmux_train_end_to_end(tmp_path, target, tok):
    from drafters.training.cli import main

    work = tmp_path / "run"
    args = ["--work-dir", str(work), "--target", "tiny", "--domain", "mixed", "--n-prompts", "4",
            "--max-new-tokens", "8", "--regen-batch-size", "2", "--epochs", "2", "--batch-size", "2",
            "--head", "truncated", "--draft-vocab-size", "40", "--drafter", "eagle3", "--target-layers", "[0, 1]",
            "--unroll-steps", "2", "--loss", "lk_lambda", "--repspec", "repspec"]
    assert main(args, load_target=lambda name: (target, tok)) == 0
    drafter = load_drafter(work / "drafter", target, target_name="tiny")
    cfg = drafter.model.config
    assert cfg.head == "truncated" and cfg.draft_vocab_size == 40 and cfg.repspec == "off"  # merged for deployment
    assert (work / "corpus" / "overlap.json").exists()
    lines = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {"acc_0", "alpha_0", "acc_1", "alpha_1"} <= set(lines[0])
    # a second run resumes every stage (corpus parts, shards, train state) and adds no steps
    assert main(args, load_target=lambda name: (target, tok)) == 0
    assert len((work / "metrics.jsonl").read_text().splitlines()) == 4
    assert main(["--unroll-steps", "9"], load_target=lambda name: (target, tok)) == 2
