"""The specialist-drafter suite: prompt sources, batched target states, the chain-tau metric and
the staged runner (regenerate -> ablate -> final) end to end on a tiny target."""
from __future__ import annotations

import json

import pytest
import torch

from drafter_fixtures import tiny_drafter_model, tiny_target
from drafters.training.data import chat_turns, drop_overlapping
from drafters.training.suite import SuiteConfig, main as suite_main, run as run_suite
from drafters.training.train import TrainConfig, Unroll, add_target_states, chain_acceptance, collate, unroll_loss
from drafters.training.word_problems import clean_written_problem, word_problems, writing_requests
from eval_helpers import tiny_target_folder


def test_word_problems_are_seeded_distinct_prose_questions():
    a, b = word_problems(300, seed=3), word_problems(300, seed=3)
    assert a == b and len(set(a)) == 300
    assert all(p.rstrip().endswith("?") and "{" not in p and len(p.split()) >= 12 for p in a)
    assert word_problems(50, seed=4) != a[:50]
    assert len(writing_requests(7, seed=1)) == 7
    assert clean_written_problem("Problem: Tom has 3 apples and buys 4 more. How many apples now? Answer: 7") == \
        "Tom has 3 apples and buys 4 more. How many apples now?"
    assert clean_written_problem("Sure!") is None


def test_chat_turns_give_first_turns_and_later_turns_with_context(tmp_path):
    convs = []
    for i in range(40):
        convs.append({"id": str(i), "conversations": [
            {"from": "human", "value": f"first question number {i} about gardens"},
            {"from": "gpt", "value": f"an answer {i}"},
            {"from": "human", "value": f"a follow-up question {i} please"},
        ]})
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(convs)[:-40])  # cut mid-record, as the packaged file is
    prompts = chat_turns(20, seed=0, later_share=0.5, path=path)
    later = [p for p in prompts if isinstance(p, list)]
    assert len(prompts) == 20 and len(later) == 10
    assert all([m["role"] for m in p] == ["user", "assistant", "user"] for p in later)
    assert all(p[-1]["content"].startswith("a follow-up") for p in later)
    evals = {"mt": ["first question number 3 about gardens and more words here"]}
    kept = drop_overlapping([("chat", p) for p in prompts], evals, n=4)
    assert all("number 3 " not in (p if isinstance(p, str) else p[0]["content"]) for _, p in kept)


def test_chain_acceptance_counts_leading_matches_per_anchor():
    rows = torch.ones(1, 6, dtype=torch.bool)
    # step j at position u; anchor a uses step j at a + j
    c0 = torch.tensor([[1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    c1 = torch.tensor([[0, 1, 1, 0, 1, 1]], dtype=torch.bool)
    out = chain_acceptance([c0, c1], rows)
    # anchors 0..4: a=0: c0[0]=1, c1[1]=1 -> 2; a=1: c0[1]=1, c1[2]=1 -> 2; a=2: 0;
    # a=3: c0[3]=1, c1[4]=1 -> 2; a=4: c0[4]=1, c1[5]=1 -> 2
    assert out["chain_anchors"] == 5 and out["chain_tau"] == pytest.approx(1 + 8 / 5)
    rows[0, 5] = False  # anchor 4's second step is not a trained row
    assert chain_acceptance([c0, c1], rows)["chain_anchors"] == 4


def test_batched_target_states_equal_cached_states():
    target = tiny_target()
    model = tiny_drafter_model(target)
    torch.manual_seed(0)
    recs = [{"input_ids": torch.randint(3, 90, (n,)).tolist(), "prompt_len": 4} for n in (9, 14, 6)]
    cached = []
    for r in recs:
        with torch.no_grad():
            hs = target(torch.tensor([r["input_ids"]]), output_hidden_states=True).hidden_states
        cached.append(r | {"features": hs[-1][0], "last_hidden": hs[-1][0]})
    cfg = TrainConfig(unroll_steps=2, max_len=64)
    head = target.get_output_embeddings().weight
    online = add_target_states(collate(recs, 64), target, [-1])
    offline = collate(cached, 64)
    loss_on, m_on = unroll_loss(Unroll(model), model, online, head, cfg, steps=3)
    loss_off, m_off = unroll_loss(Unroll(model), model, offline, head, cfg, steps=3)
    assert torch.allclose(loss_on, loss_off, atol=1e-5)
    assert m_on["chain_tau"] == pytest.approx(m_off["chain_tau"]) and m_on["chain_anchors"] > 0


def _suite_work(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    math = [["math", p] for p in word_problems(10, seed=1)]
    chat = [["chat", "tell me about rivers"], ["chat", [{"role": "user", "content": "hi"},
                                                       {"role": "assistant", "content": "hello"},
                                                       {"role": "user", "content": "name a color"}]]] * 4
    (work / "prompts.json").write_text(json.dumps({"math": math, "chat": chat, "write": [["write", "write a sum"]],
                                                   "dropped": {"math": 0, "chat": 0}}))
    (work / "eval_prompts.json").write_text(json.dumps({"gsm8k": ["an unrelated evaluation question"]}))
    return work


def _suite_config(tmp_path, work, **over) -> SuiteConfig:
    folder = tiny_target_folder(tmp_path / "target", layers=2)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))  # "\n" ends a turn
    fields = dict(target="tiny", target_path=str(folder), work_dir=str(work), output_dir=str(tmp_path / "out"),
                  heldout_per_domain=2, max_new_tokens=6, write_max_new_tokens=8, regen_batch_size=4,
                  max_prompt_tokens=400, eval_depth=3, ablation_max_steps=2, final_max_steps=2,
                  base={"head": "truncated", "draft_vocab_size": 48, "unroll_steps": 2, "batch_size": 2,
                        "warmup_steps": 1, "max_len": 256, "checkpoint_every": 1000},
                  ablations={"kl": {}, "lk": {"loss": "lk_lambda"}, "full": {"head": "target"}})
    return SuiteConfig(**(fields | over))


def test_suite_runs_ablates_picks_and_ships_with_manifests(tmp_path):
    work = _suite_work(tmp_path)
    cfg = _suite_config(tmp_path, work)
    out = run_suite(cfg, ("regenerate", "ablate", "final"), device="cpu")
    assert set(out["ablations"]) == {"kl", "lk", "full"}
    assert all("chain_tau" in v["heldout_math"] for v in out["ablations"].values())
    winner = max(("kl", "lk"), key=lambda k: sum(out["ablations"][k][f"heldout_{d}"]["chain_tau"] for d in ("math", "chat")))
    for domain in ("math", "chat", "mixed"):
        folder = tmp_path / "out" / domain
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["variant"] == winner  # the frozen full head is a reference, never shipped
        assert manifest["recipe"]["max_steps"] == 2 and manifest["command"]
        assert len(manifest["sha256"]["model.safetensors"]) == 64
        assert manifest["overlap"]["math_train"]["eval"]["gsm8k"]["train_prompts_with_shared_ngram"] == 0
    from safetensors.torch import load_file

    d2t = [load_file(str(tmp_path / "out" / d / "model.safetensors"))["head.d2t"] for d in ("math", "chat", "mixed")]
    assert all(torch.equal(d2t[0], t) for t in d2t)  # one draft vocabulary: averageable, lockstep-draftable
    report = json.loads((work / "data_report.json").read_text())
    assert report["regeneration"]["math"]["new_tokens"] > 0
    # resuming redoes nothing: the finished stages are read back
    mtime = (tmp_path / "out" / "math" / "model.safetensors").stat().st_mtime_ns
    run_suite(cfg, ("regenerate", "ablate", "final"), device="cpu")
    assert (tmp_path / "out" / "math" / "model.safetensors").stat().st_mtime_ns == mtime


def test_suite_time_budget_skips_ablations_and_keeps_the_finals(tmp_path):
    work = _suite_work(tmp_path)
    cfg = _suite_config(tmp_path, work, time_budget_s=1e-3, final_domains=["math"],
                        ablations={"kl": {}, "lk": {"loss": "lk_lambda"}})
    run_suite(cfg, ("regenerate", "ablate", "final"), device="cpu")
    ablations = json.loads((work / "ablations.json").read_text())
    assert list(ablations) == ["kl"]  # the budget was spent: lk skipped, the final still trained
    assert json.loads((tmp_path / "out" / "math" / "manifest.json").read_text())["recipe"]["max_steps"] >= 1
    assert not (tmp_path / "out" / "chat").exists()


def test_suite_cli_rejects_bad_input(tmp_path, capsys):
    cfg = tmp_path / "suite.json"
    cfg.write_text(json.dumps({"n_chat": 0}))
    assert suite_main(["--config", str(cfg)]) == 2
    assert "n_chat" in capsys.readouterr().err
    cfg.write_text("{}")
    assert suite_main(["--config", str(cfg), "--stages", "prompts,bake"]) == 2
    assert "bake" in capsys.readouterr().err
    assert suite_main(["--config", str(cfg), "--stages", "ablate", "--set", "target=no-such-model",
                       "--set", f"work_dir=\"{tmp_path}\""]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_suite_extra_round_joins_training_only(tmp_path):
    work = _suite_work(tmp_path)
    extra_math = [["math", p] for p in word_problems(6, seed=7)]
    (work / "prompts-extra.json").write_text(json.dumps({"math": extra_math, "chat": [], "dropped": {"math": 0, "chat": 0}}))
    cfg = _suite_config(tmp_path, work, final_domains=["math"], ablations={"kl": {}},
                        extra={"seed": 7, "n_math_templates": 6})
    from drafters.training.suite import load_suite_target
    from drafters.training.suite_data import stage_regenerate

    target, tok = load_suite_target(cfg, "cpu")
    split = stage_regenerate(cfg, work, target, tok)
    base = stage_regenerate(cfg.model_copy(update={"extra": None}), work, target, tok)
    extra_prompts = {json.dumps(p) for _, p in extra_math}
    assert split["math_heldout"] == base["math_heldout"]  # held-out sets come from the first round only
    assert len(split["math_train"]) > len(base["math_train"])
    assert all(json.dumps(r["prompt"]) in extra_prompts for r in split["math_train"][len(base["math_train"]):])
    report = json.loads((work / "data_report.json").read_text())
    assert report["regeneration"]["math-extra"]["new_tokens"] > 0


def test_extra_prompts_are_disjoint_from_the_first_round(tmp_path, monkeypatch):
    import drafters.training.suite_data as suite_data

    work = tmp_path / "w"
    work.mkdir()
    first = word_problems(5, seed=0)
    (work / "prompts.json").write_text(json.dumps({"math": [["math", p] for p in first], "chat": [], "write": []}))
    (work / "eval_prompts.json").write_text(json.dumps({"gsm8k": ["an unrelated evaluation question"]}))
    # the extra draw repeats two first-round problems: they must not come back
    monkeypatch.setattr(suite_data, "word_problems", lambda n, seed: first[:2] + word_problems(n, seed=seed)[: n - 2])
    cfg = SuiteConfig(work_dir=str(work), extra={"seed": 3, "n_math_templates": 6}, n_chat=1)
    suite_data.stage_extra_prompts(cfg, work)
    got = json.loads((work / "prompts-extra.json").read_text())
    assert len(got["math"]) == 4 and not {p for _, p in got["math"]} & set(first)


@pytest.mark.parametrize("mode", ["cache", "online"])
def test_suite_training_reads_cached_states_or_runs_the_target_per_step(tmp_path, monkeypatch, mode):
    import drafters.training.train as train

    work = _suite_work(tmp_path)
    cfg = _suite_config(tmp_path, work, states=mode, final_domains=["mixed"], ablations={"kl": {}, "e3": {"drafter": "eagle3"}})
    forwards = {"n": 0}
    real = train.add_target_states

    def counted(*args, **kwargs):
        forwards["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "add_target_states", counted)
    run_suite(cfg, ("regenerate", "states", "ablate", "final"), device="cpu")
    manifest = json.loads((tmp_path / "out" / "mixed" / "manifest.json").read_text())
    assert manifest["metrics"]["states"] == mode
    layer_sets = sorted(p.name for p in (work / "states").iterdir()) if (work / "states").exists() else []
    if mode == "cache":
        assert forwards["n"] == 0  # no target forward in any training or scoring step
        assert layer_sets == ["layers-0-1", "layers-2"]  # eagle3 (layers 0, 1 of 2) and eagle1 (-1 = 2)
        for name in ("math_train", "math_heldout", "chat_train", "chat_heldout"):
            man = json.loads((work / "states" / "layers-2" / name / "manifest.json").read_text())
            assert man["features_are_last"] and man["target_fingerprint"]
    else:
        assert forwards["n"] > 0 and layer_sets == []


def test_a_specialist_run_caches_only_the_sets_it_reads(tmp_path):
    """A math final reads math_train and both held-out sets: chat_train's states (the largest
    set) are never computed for it."""
    work = _suite_work(tmp_path)
    cfg = _suite_config(tmp_path, work, states="cache", final_domains=["math"], ablations={"kl": {}}, final_variant="kl")
    run_suite(cfg, ("regenerate", "final"), device="cpu")
    cached = sorted(p.name for p in (work / "states" / "layers-2").iterdir())
    assert cached == ["chat_heldout", "math_heldout", "math_train"]


def test_mixed_draw_picks_the_same_records_from_a_parallel_split():
    from drafters.training.suite_training import mixed_train

    split = {"math_train": list(range(7)), "chat_train": list(range(100, 105))}
    with_states = {k: [("states of", x) for x in v] for k, v in split.items()}  # the cached split: same order
    assert mixed_train(with_states, 3) == [("states of", x) for x in mixed_train(split, 3)]


def test_mixed_is_both_specialists_training_records_together():
    from drafters.training.suite_training import mixed_train

    split = {"math_train": list(range(7)), "chat_train": list(range(100, 105))}
    mixed = mixed_train(split, 0)
    assert sorted(mixed) == sorted(split["math_train"] + split["chat_train"])  # every record, once
    assert mixed != split["math_train"] + split["chat_train"]  # shuffled, not math then chat
