"""The target-state cache: bf16 states from a bf16 copy of the target (batched), the stored
full-vocabulary normaliser and argmax, memory-mapped shards, resuming after the last finished
shard, and invalidation by target, layer set and records."""
from __future__ import annotations

import json

import pytest
import torch

import drafters.training.hidden_cache as hc
from drafter_fixtures import tiny_target
from drafters.training.hidden_cache import cache_hidden_states, length_batches, load_hidden_cache


def records(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 96, (int(torch.randint(5, 30, (1,), generator=g)),), generator=g).tolist(),
             "prompt_len": 3} for _ in range(n)]


def reference(target, ids, layers):
    with torch.no_grad():
        out = target(torch.tensor([ids]), output_hidden_states=True)
    hs = out.hidden_states
    return torch.cat([hs[i][0] for i in layers], -1), hs[-1][0], out.logits[0].float()


def rel(a, b) -> float:
    """Relative distance ||a - b|| / ||b|| in float32."""
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_bf16_states_come_from_a_bf16_copy_with_the_full_vocabulary_stats(tmp_path):
    target = tiny_target()
    recs = records()
    cache_hidden_states(target, recs, [1, -1], tmp_path / "s", shard_records=3, dtype=torch.bfloat16,
                        compute_dtype=torch.bfloat16, batch_tokens=64)
    assert next(target.parameters()).dtype == torch.float32  # the caller's target is not cast
    data = load_hidden_cache(tmp_path / "s", target)
    bf16 = hc.compute_copy(target, torch.bfloat16)
    assert len(data) == len(recs)
    for rec, got in zip(recs, data):
        assert got["features"].dtype == torch.bfloat16 and got["input_ids"].tolist() == rec["input_ids"]
        feats, last, logits = reference(bf16, rec["input_ids"], [1, -1])
        # batched (right padding) vs alone: mostly bit-equal; kernels chosen by the batch shape
        # can round differently (1.1% seen on the final layer of this random model)
        assert rel(got["features"], feats) < 0.02 and rel(got["last_hidden"], last) < 0.02
        torch.testing.assert_close(got["target_lse"], torch.logsumexp(logits, -1), atol=0.05, rtol=0.01)
        agree = (got["target_top"].long() == logits.argmax(-1)).float().mean()
        assert agree >= 0.9, agree
        feats32, _, _ = reference(target, rec["input_ids"], [1, -1])
        # bf16 against float32 states: 1-3% relative on this random 4-layer model
        assert rel(got["features"], feats32) < 0.05


def test_float32_cache_of_layer_minus_one_stores_the_state_once_and_matches_the_target(tmp_path):
    target = tiny_target()
    recs = records(5)
    cache_hidden_states(target, recs, [-1], tmp_path / "s", shard_records=2, batch_tokens=40)
    from safetensors.torch import load_file

    assert "last_hidden" not in load_file(str(tmp_path / "s" / "shard-00000.safetensors"))  # eagle1: one copy
    for rec, got in zip(recs, load_hidden_cache(tmp_path / "s", target)):
        feats, last, logits = reference(target, rec["input_ids"], [-1])
        torch.testing.assert_close(got["features"], feats, atol=1e-5, rtol=1e-4)
        assert got["last_hidden"] is got["features"] or torch.equal(got["last_hidden"], got["features"])
        torch.testing.assert_close(got["target_lse"], torch.logsumexp(logits, -1), atol=1e-4, rtol=1e-5)
        assert torch.equal(got["target_top"].long(), logits.argmax(-1))


def test_loaded_states_are_copy_on_write_maps_of_the_shards(tmp_path):
    target = tiny_target()
    recs = records(4)
    cache_hidden_states(target, recs, [-1], tmp_path / "s", shard_records=2)
    first = load_hidden_cache(tmp_path / "s")
    keep = first[0]["features"].clone()
    first[0]["features"].zero_()  # a private map: the file never changes
    assert torch.equal(load_hidden_cache(tmp_path / "s")[0]["features"], keep)


def test_a_killed_cache_resumes_after_the_last_finished_shard(tmp_path, monkeypatch):
    target = tiny_target()
    recs = records(8)
    cache_hidden_states(target, recs, [-1], tmp_path / "whole", shard_records=2, batch_tokens=30)
    real, calls = hc.batched_states, {"n": 0, "seqs": 0}

    def dies_in_the_third_shard(model, seqs, layers):
        calls["n"] += 1
        calls["seqs"] += len(seqs)
        if calls["seqs"] > 4:
            raise KeyboardInterrupt
        return real(model, seqs, layers)

    monkeypatch.setattr(hc, "batched_states", dies_in_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        cache_hidden_states(target, recs, [-1], tmp_path / "s", shard_records=2, batch_tokens=30)
    assert sorted(p.name for p in (tmp_path / "s").glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not list((tmp_path / "s").glob(".shard-*"))  # no torn shard left behind
    done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("shard-*")}
    counted = {"seqs": 0}

    def counting(model, seqs, layers):
        counted["seqs"] += len(seqs)
        return real(model, seqs, layers)

    monkeypatch.setattr(hc, "batched_states", counting)
    cache_hidden_states(target, recs, [-1], tmp_path / "s", shard_records=2, batch_tokens=30)
    assert counted["seqs"] == 4  # only the two missing shards were computed
    assert all((tmp_path / "s" / n).stat().st_mtime_ns == t for n, t in done.items())
    for a, b in zip(load_hidden_cache(tmp_path / "whole"), load_hidden_cache(tmp_path / "s")):
        assert torch.equal(a["features"], b["features"]) and torch.equal(a["target_top"], b["target_top"])
    assert json.loads((tmp_path / "s" / "timing.json").read_text())["tokens"] == sum(len(r["input_ids"]) for r in recs)


def test_cache_is_invalidated_by_target_layers_and_records(tmp_path):
    target, other = tiny_target(seed=0), tiny_target(seed=1)
    recs = records(4)
    out = tmp_path / "s"
    cache_hidden_states(target, recs, [1], out, shard_records=2)
    with pytest.raises(ValueError, match="other records, layers"):
        cache_hidden_states(target, recs, [2], out, shard_records=2)  # the default refuses
    for tgt, layers, rs in ((target, [2], recs), (other, [2], recs), (other, [2], records(4, seed=9))):
        cache_hidden_states(tgt, rs, layers, out, shard_records=2, on_change="rebuild")
        got = load_hidden_cache(out, tgt)
        torch.testing.assert_close(got[1]["features"], reference(tgt, rs[1]["input_ids"], layers)[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="another target"):
        load_hidden_cache(out, target)


def test_shards_without_a_manifest_are_never_trusted(tmp_path):
    target = tiny_target()
    recs = records(4)
    out = tmp_path / "s"
    cache_hidden_states(target, records(4, seed=5), [-1], out, shard_records=2)
    (out / "manifest.json").unlink()  # a rebuild killed after dropping the old manifest
    cache_hidden_states(target, recs, [-1], out, shard_records=2)
    got = load_hidden_cache(out, target)
    assert [g["input_ids"].tolist() for g in got] == [r["input_ids"] for r in recs]


def test_length_batches_keep_the_padded_size_within_the_budget():
    lengths = [5, 30, 7, 12, 12, 3, 40]
    batches = length_batches(lengths, 36)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 36
