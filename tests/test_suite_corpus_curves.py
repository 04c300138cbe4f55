"""The shipped corpus archive (drafters/training/corpus_archive.py) and the suite's learning curves,
early stop and warm start (drafters/training/suite_training.py LearningCurve, initial_model)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drafters.training.corpus_archive import manifest_path, pack_corpus, unpack_corpus
from drafters.training.suite import run as run_suite
from test_drafters_suite import _suite_config, _suite_work

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "smollm2-135m-instruct" / "corpus.tar.xz"


def _regenerated(tmp_path):
    work = _suite_work(tmp_path)
    cfg = _suite_config(tmp_path, work, final_domains=["math"], ablations={"kl": {}})
    run_suite(cfg, ("regenerate",), device="cpu")
    return work, cfg


def test_archive_round_trip_makes_regeneration_a_no_op(tmp_path, monkeypatch):
    work, cfg = _regenerated(tmp_path)
    archive = tmp_path / "shipped" / "corpus.tar.xz"
    manifest = pack_corpus(work, archive, generator={"how": "test"}, sources={"math": "templates"})
    assert manifest["counts"]["math"]["records"] > 0 and manifest["counts"]["math"]["answer_tokens"] > 0
    assert manifest_path(archive).exists()
    again = pack_corpus(work, tmp_path / "again.tar.xz", generator={"how": "test"}, sources={"math": "templates"})
    assert again["sha256"] == manifest["sha256"]  # byte-identical archives from identical data

    import drafters.training.corpus as corpus

    def no_generation(*a, **k):
        raise AssertionError("the shipped corpus must make regeneration unnecessary")

    monkeypatch.setattr(corpus, "_generate_left_padded", no_generation)
    fresh = tmp_path / "fresh"
    cfg2 = cfg.model_copy(update={"work_dir": str(fresh), "corpus_archive": str(archive)})
    run_suite(cfg2, ("regenerate",), device="cpu")
    for part in sorted((work / "corpus").rglob("part-*.jsonl")):
        assert (fresh / part.relative_to(work)).read_bytes() == part.read_bytes()
    run_suite(cfg2, ("regenerate",), device="cpu")  # unpacking over itself is idempotent


def test_archive_refuses_corruption_and_a_work_folder_made_from_other_data(tmp_path):
    work, _ = _regenerated(tmp_path)
    archive = tmp_path / "corpus.tar.xz"
    pack_corpus(work, archive, generator={}, sources={})
    bad = tmp_path / "bad" / "corpus.tar.xz"
    bad.parent.mkdir()
    blob = bytearray(archive.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    bad.write_bytes(bytes(blob))
    shutil.copy(manifest_path(archive), manifest_path(bad))
    with pytest.raises(ValueError, match="corrupt"):
        unpack_corpus(bad, tmp_path / "w1")
    assert not (tmp_path / "w1").exists()  # nothing written from a corrupt archive
    with pytest.raises(ValueError, match="no manifest"):
        shutil.copy(archive, tmp_path / "lonely.tar.xz")
        unpack_corpus(tmp_path / "lonely.tar.xz", tmp_path / "w2")
    other = tmp_path / "w3"
    other.mkdir()
    (other / "prompts.json").write_text("{}")
    with pytest.raises(ValueError, match="differs from the shipped corpus"):
        unpack_corpus(archive, other)


def test_the_shipped_corpus_matches_its_manifest(tmp_path):
    manifest = unpack_corpus(SHIPPED, tmp_path)
    counts = manifest["counts"]
    assert set(counts) == {"math", "math-extra", "chat", "chat-extra"}
    for name, c in counts.items():
        records = [json.loads(line) for part in sorted((tmp_path / "corpus" / name).glob("part-*.jsonl"))
                   for line in part.read_text().splitlines()]
        assert len(records) == c["records"] > 2000
        assert sum(len(r["input_ids"]) - r["prompt_len"] for r in records) == c["answer_tokens"]
        assert all(0 < r["prompt_len"] < len(r["input_ids"]) for r in records)
    # the 8-gram overlap report: no training prompt shares an 8-gram with an evaluation prompt
    for name in ("math_train", "chat_train"):
        assert all(v["train_prompts_with_shared_ngram"] == 0 for v in manifest["overlap"][name]["eval"].values())


def test_final_records_a_learning_curve_and_stops_when_it_flattens(tmp_path):
    work = _suite_work(tmp_path)
    # min_gain no curve can reach: the run stops after patience + 1 points, far below the ceiling
    cfg = _suite_config(tmp_path, work, final_domains=["math"], ablations={"kl": {}}, final_variant="kl", final_max_steps=40,
                        final_eval_every=2, final_patience=2, final_min_gain=100.0)
    run_suite(cfg, ("regenerate", "final"), device="cpu")
    manifest = json.loads((tmp_path / "out" / "math" / "manifest.json").read_text())
    curve = manifest["metrics"]["curve"]
    assert [p["step"] for p in curve] == [2, 4, 6]
    assert manifest["metrics"]["steps"] == 6
    assert all(p["tokens_seen"] > 0 for p in curve) and curve[0]["tokens_seen"] < curve[-1]["tokens_seen"]
    assert all({"math_chain_tau", "chat_chain_tau", "math_acc_0", "chat_acc_0"} <= set(p) for p in curve)


def test_final_continues_from_a_checkpoint(tmp_path):
    work = _suite_work(tmp_path)
    cfg = _suite_config(tmp_path, work, final_domains=["math"], ablations={"kl": {}}, final_variant="kl")
    run_suite(cfg, ("regenerate", "final"), device="cpu")
    first = tmp_path / "out" / "math"
    start = load_file(str(first / "model.safetensors"))
    # a learning rate too small to move bf16 weights: the continued drafter is its start
    cont = cfg.model_copy(update={"output_dir": str(tmp_path / "out2"), "work_dir": str(tmp_path / "work2"),
                                  "final_init_from": {"math": str(first)},
                                  "base": {**cfg.base, "lr": 1e-12}})
    shutil.copytree(work, tmp_path / "work2", ignore=shutil.ignore_patterns("final-*", "runs"))
    run_suite(cont, ("regenerate", "final"), device="cpu")
    after = load_file(str(tmp_path / "out2" / "math" / "model.safetensors"))
    assert set(after) == set(start)
    assert all(torch.equal(after[k], start[k]) for k in start)
    manifest = json.loads((tmp_path / "out2" / "math" / "manifest.json").read_text())
    assert manifest["recipe"]["init_from"] == str(first)
