"""Resumed work equals uninterrupted work: a drafter training run killed at a step (drawn by a
seeded generator) and resumed ends with the same weights and the same logged losses, bit for bit;
`specmux train-suite` resumed after a crash inside a stage finishes with what an uninterrupted
run ships."""
from __future__ import annotations

import json
import random

import pytest
import torch

import drafters.training.train as train
from drafter_fixtures import tiny_drafter_model, tiny_target
from drafters.training.train import TrainConfig, train_drafter
from test_reliability import Crash, tiny_states

CFG = TrainConfig(epochs=3, batch_size=2, checkpoint_every=2, warmup_steps=2, unroll_steps=2, step_weights=[1.0, 0.5])
STEPS = 6  # 4 records, batch 2, 3 epochs
# where the interrupted runs are killed: inside the step after a checkpoint and between checkpoints
CRASH_STEPS = sorted(random.Random(24).sample(range(CFG.checkpoint_every + 1, STEPS + 1), 2))  # after a checkpoint


def losses(work) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    target = tiny_target(vocab=64, layers=2, hidden=32, seed=3)
    states = tiny_states(target)
    work = tmp_path_factory.mktemp("whole")
    model = train_drafter(tiny_drafter_model(target), target.get_output_embeddings().weight, states, CFG, work,
                          progress=False)
    return target, states, {k: v.clone() for k, v in model.state_dict().items()}, losses(work)


@pytest.mark.parametrize("crash_step", CRASH_STEPS)
def test_training_resumed_after_a_crash_equals_an_uninterrupted_run(uninterrupted, tmp_path, monkeypatch, crash_step):
    target, states, weights, logged = uninterrupted
    assert [s for s, _ in logged] == list(range(1, STEPS + 1))
    real_loss, calls = train.unroll_loss, {"n": 0}

    def loss_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == crash_step:
            raise Crash(f"killed in step {crash_step}")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train, "unroll_loss", loss_then_crash)
    with pytest.raises(Crash):
        train_drafter(tiny_drafter_model(target), target.get_output_embeddings().weight, states, CFG, tmp_path,
                      progress=False)
    monkeypatch.setattr(train, "unroll_loss", real_loss)
    model = train_drafter(tiny_drafter_model(target, seed=99), target.get_output_embeddings().weight, states, CFG,
                          tmp_path, progress=False)  # other initial weights: the checkpoint must replace them
    assert losses(tmp_path) == logged
    resumed = model.state_dict()
    assert resumed.keys() == weights.keys()
    for name, value in weights.items():
        assert torch.equal(resumed[name], value), name


def suite_cli(config, tmp_path, name: str) -> list[str]:
    """`specmux train-suite` arguments for a copy of the tiny suite config writing under tmp_path/name."""
    import shutil

    fields = json.loads(config.model_dump_json())
    fields |= {"work_dir": str(tmp_path / name / "work"), "output_dir": str(tmp_path / name / "out")}
    (tmp_path / name).mkdir()
    shutil.copytree(config.work_dir, fields["work_dir"])  # the prompts the suite starts from
    path = tmp_path / name / "suite.json"
    path.write_text(json.dumps(fields))
    return ["train-suite", "--config", str(path), "--stages", "regenerate,ablate,final", "--device", "cpu"]


def shipped(tmp_path, name: str) -> dict[str, dict]:
    out = tmp_path / name / "out"
    return {d: json.loads((out / d / "manifest.json").read_text())["sha256"] for d in ("math", "chat", "mixed")}


def test_suite_resumed_after_a_crash_inside_a_stage_ships_what_an_uninterrupted_run_ships(tmp_path, monkeypatch):
    import drafters.training.suite as suite
    from eval.commands import main as specmux
    from test_drafters_suite import _suite_config, _suite_work

    config = _suite_config(tmp_path, _suite_work(tmp_path), ablations={"kl": {}, "lk": {"loss": "lk_lambda"}})
    whole = suite_cli(config, tmp_path, "whole")
    assert specmux(whole) == 0
    crashed = suite_cli(config, tmp_path, "crashed")
    real_train = suite.train_one

    def crash_in_the_chat_final(cfg, tcfg, *args, **kwargs):
        if tcfg.name == "final-chat":
            raise Crash("killed while training the chat drafter")
        return real_train(cfg, tcfg, *args, **kwargs)

    monkeypatch.setattr(suite, "train_one", crash_in_the_chat_final)
    with pytest.raises(Crash):
        specmux(crashed)
    out = tmp_path / "crashed" / "out"
    assert (out / "math" / "manifest.json").exists() and not (out / "chat").exists()  # inside the final stage
    monkeypatch.setattr(suite, "train_one", real_train)
    assert specmux(crashed) == 0
    assert shipped(tmp_path, "crashed") == shipped(tmp_path, "whole")
    ablations = [json.loads((tmp_path / n / "work" / "ablations.json").read_text()) for n in ("whole", "crashed")]
    assert {k: v["overrides"] for k, v in ablations[0].items()} == {k: v["overrides"] for k, v in ablations[1].items()}
