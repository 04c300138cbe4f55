"""Crash and resume behaviour: each test fails on the code before its fix.

- a crash between the two renames of the training-state swap no longer restarts from step 0;
- a resumed run logs every step once in metrics.jsonl;
- stopping Composer.stream() early leaves last_result describing that (partial) generation;
- a corrupt ShareGPT record in the middle is an error; only the cut-off tail ends the corpus;
- an interrupted save_drafter overwrite leaves the old checkpoint, never new weights with an old config.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

import runtime.atomic
import drafters.checkpoint
from drafter_fixtures import tiny_drafter_model, tiny_target
from drafters.checkpoint import load_drafter_model, save_drafter
from drafters.training.train import TrainConfig, train_drafter


class Crash(Exception):
    pass


def tiny_states(target, n=4, length=12):
    g = torch.Generator().manual_seed(0)
    records = []
    for _ in range(n):
        ids = torch.randint(0, target.config.vocab_size, (length,), generator=g)
        with torch.no_grad():
            hs = target(ids[None], output_hidden_states=True).hidden_states
        records.append({"input_ids": ids, "features": hs[-1][0], "last_hidden": hs[-1][0], "prompt_len": 3})
    return records


def logged_steps(work):
    return [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture()
def setup(tmp_path):
    target = tiny_target(vocab=64, layers=2, hidden=32, seed=3)
    return target, tiny_states(target), target.get_output_embeddings().weight, tmp_path / "run"


def test_crash_between_the_state_swap_renames_resumes_from_the_checkpoint(setup, monkeypatch):
    target, states, head, work = setup
    cfg = TrainConfig(epochs=2, batch_size=1, checkpoint_every=2, warmup_steps=1)  # 8 steps, saves at 2, 4, 6, 8
    real_replace = os.replace
    saves = {"n": 0}

    def replace_then_crash(src, dst):
        real_replace(src, dst)
        # the live state has just been moved aside: the old code crashed here with no state
        if os.path.basename(os.fspath(src)) == "train_state":
            saves["n"] += 1
            if saves["n"] == 2:
                raise Crash("killed mid-swap")

    monkeypatch.setattr(os, "replace", replace_then_crash)
    with pytest.raises(Crash):
        train_drafter(tiny_drafter_model(target), head, states, cfg, work, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert logged_steps(work) == list(range(1, 7))  # crashed while saving step 6
    train_drafter(tiny_drafter_model(target), head, states, cfg, work, progress=False)
    steps = logged_steps(work)
    assert steps == list(range(1, 9)), steps  # resumed after step 4 or 6, not from 0, each step once
    assert json.loads((work / "train_state" / "progress.json").read_text())["global_step"] == 8


def test_resume_logs_every_step_once(setup, monkeypatch):
    target, states, head, work = setup
    cfg = TrainConfig(epochs=2, batch_size=1, checkpoint_every=3, warmup_steps=1)
    import drafters.training.train as train

    real_loss = train.unroll_loss
    calls = {"n": 0}

    def loss_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # steps 4 and 5 are logged after the step-3 checkpoint, then a crash
            raise Crash("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train, "unroll_loss", loss_then_crash)
    with pytest.raises(Crash):
        train_drafter(tiny_drafter_model(target), head, states, cfg, work, progress=False)
    assert logged_steps(work) == [1, 2, 3, 4, 5]
    with (work / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # torn by the crash
    monkeypatch.setattr(train, "unroll_loss", real_loss)
    train_drafter(tiny_drafter_model(target), head, states, cfg, work, progress=False)
    assert logged_steps(work) == list(range(1, 9))


def test_stopping_a_stream_early_updates_last_result():
    from compose import Composer
    from drafters.lm import EarlyExitDrafter
    from tiny_models import tiny_model

    from drafter_fixtures import char_tokenizer

    target = tiny_model("llama", vocab=128, layers=2, seed=1)
    composer = Composer(target, drafters={"ee": EarlyExitDrafter(target, 1, name="ee")}, tokenizer=char_tokenizer())
    full = composer.generate([1, 2, 3], strategy="single", max_new_tokens=20)
    assert composer.last_result is full and len(full.token_ids) == 20
    stream = composer.stream([4, 5, 6], strategy="single", max_new_tokens=20)
    next(stream)
    stream.close()  # the consumer stops after the first piece
    partial = composer.last_result
    assert partial is not full and partial.prompt_ids == [4, 5, 6]
    assert 0 < len(partial.token_ids) < 20 and partial.finish_reason == "interrupted"
    assert partial.stats.new_tokens == len(partial.token_ids)


def test_sharegpt_corrupt_middle_record_is_an_error_cut_tail_is_not(tmp_path):
    from drafters.training.data import iter_sharegpt

    good = [{"id": str(i), "conversations": [{"from": "human", "value": f"q {i} {{[\"}}"}]} for i in range(3)]
    body = ",\n".join(json.dumps(r) for r in good)
    cut = tmp_path / "cut.json"
    cut.write_text("[\n" + body + ',\n{"id": "3", "conversations": [{"from": "human", "value": "unfini')
    assert [r["id"] for r in iter_sharegpt(cut)] == ["0", "1", "2"]
    whole = tmp_path / "whole.json"
    whole.write_text("[\n" + body + "\n]")
    assert len(list(iter_sharegpt(whole))) == 3
    corrupt = tmp_path / "corrupt.json"
    records = [json.dumps(r) for r in good]
    records.insert(1, '{"id": "x", "conversations": [oops]}')
    corrupt.write_text("[\n" + ",\n".join(records) + "\n]")
    with pytest.raises(ValueError, match="corrupt.json.*record 2"):
        list(iter_sharegpt(corrupt))


def test_interrupted_checkpoint_overwrite_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    target = tiny_target()
    old, new = tiny_drafter_model(target, seed=1), tiny_drafter_model(target, head="lowrank", seed=2)
    ck = save_drafter(old, tmp_path / "ck", target=target)
    (ck / "README.md").write_text("notes")  # a file the user keeps beside the checkpoint

    real_save = runtime.atomic.save_tensors

    def save_then_crash(path, tensors, metadata=None):
        real_save(path, tensors, metadata)
        raise Crash("killed after the weights were written")

    monkeypatch.setattr(runtime.atomic, "save_tensors", save_then_crash)
    monkeypatch.setattr(drafters.checkpoint, "save_tensors", save_then_crash)
    with pytest.raises(Crash):
        save_drafter(new, ck, target=target)
    loaded = load_drafter_model(ck, target)  # the old checkpoint, whole
    assert loaded.config.head == "target"
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in loaded.state_dict().items())
    monkeypatch.undo()
    save_drafter(new, ck, target=target)
    assert load_drafter_model(ck, target).config.head == "lowrank"
    assert (ck / "README.md").read_text() == "notes"
    assert sorted(p.name for p in ck.parent.iterdir()) == ["ck"]  # no staging leftovers


def test_recover_folder_finishes_or_undoes_any_interrupted_swap(tmp_path):
    """The commit point is the first rename (staged -> ready): a crash before it keeps the old
    version, a crash after any rename ends, once recovered, with the new one."""
    from runtime.atomic import commit_folder, recover_folder, staging_folder

    def version(folder):
        return (folder / "v").read_text()

    path = tmp_path / "state"
    # (version to write, crash before the n-th rename or after it, the version recovery must leave)
    cases = [("0", ("after", 1), "0"), ("1", ("before", 1), "0"), ("2", ("after", 1), "2"), ("3", ("after", 2), "3"),
             ("4", ("after", 3), "4"), ("5", ("before", 2), "5"), ("6", ("before", 3), "6"), ("7", None, "7")]
    for written, crash, expected in cases:
        staged = staging_folder(path)
        (staged / "v").write_text(written)
        renames = {"n": 0}
        real_replace = os.replace

        def counting_replace(src, dst):
            renames["n"] += 1
            if crash == ("before", renames["n"]):
                raise Crash()
            real_replace(src, dst)
            if crash == ("after", renames["n"]):
                raise Crash()

        os.replace = counting_replace
        try:
            commit_folder(path)
        except Crash:
            assert crash is not None
        else:
            assert crash is None
        finally:
            os.replace = real_replace
        recover_folder(path)
        assert version(path) == expected, (written, crash)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_a_state_saved_by_another_recipe_is_refused_by_name(setup):
    target, states, head, work = setup
    cfg = TrainConfig(epochs=1, batch_size=2, checkpoint_every=1, warmup_steps=1, max_steps=2)
    train_drafter(tiny_drafter_model(target), head, states, cfg, work, progress=False)
    other = cfg.model_copy(update={"unroll_steps": 2})
    with pytest.raises(ValueError, match="another recipe.*unroll_steps"):
        train_drafter(tiny_drafter_model(target), head, states, other, work, progress=False)
    more = cfg.model_copy(update={"max_steps": 3, "epochs": 2})  # a longer run of the same recipe resumes
    train_drafter(tiny_drafter_model(target), head, states, more, work, progress=False)
    assert logged_steps(work) == [1, 2, 3]
