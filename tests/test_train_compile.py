"""The training unroll's compiled decoder layer (drafters/training/train.py `compiled_layer`):
the same loss and gradients as the eager layer to float rounding, a failing compiler falls back
to the eager layer with a warning, and "auto" compiles only long single-process CPU runs."""
from __future__ import annotations

import warnings

import pytest
import torch

from drafter_fixtures import states_records, tiny_drafter_model, tiny_target
from drafters.training import train
from drafters.training.train import TrainConfig, Unroll, collate, compile_wanted, unroll_loss

CFG = TrainConfig(unroll_steps=3, step_weights=[1.0, 0.8, 0.64], precision="float32", max_len=64)


def _loss_and_grads(unroll, model, batch, head):
    loss, _ = unroll_loss(unroll, model, batch, head, CFG)
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params)


def test_the_compiled_layer_gives_the_eager_loss_and_gradients():
    target = tiny_target(vocab=128, layers=2, hidden=64, seed=3)
    model = tiny_drafter_model(target, head="truncated", seed=5)
    head = target.get_output_embeddings().weight
    for lengths in ([18, 18, 18, 18], [11, 23, 17, 9]):  # a second batch shape: no recompiled guess
        batch = collate(states_records(target, n=4, length=max(lengths), prompt_lens=[2, 3, 4, 5]), 64)
        want_loss, want = _loss_and_grads(Unroll(model), model, batch, head)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # compiled for real, not the eager fallback
            got_loss, got = _loss_and_grads(Unroll(model, compiled=True), model, batch, head)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_a_failing_compiler_warns_and_the_layer_runs_eagerly(monkeypatch):
    def broken(module, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no C++ compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    target = tiny_target(vocab=128, layers=2, hidden=64, seed=3)
    model = tiny_drafter_model(target, head="truncated", seed=5)
    head = target.get_output_embeddings().weight
    batch = collate(states_records(target, n=2, length=12, prompt_lens=[2, 3]), 64)
    unroll = Unroll(model, compiled=True)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler here"):
        got, _ = _loss_and_grads(unroll, model, batch, head)
    want, _ = _loss_and_grads(Unroll(model), model, batch, head)
    assert torch.equal(got, want)
    assert "layer" not in dict(unroll.named_modules()) and len(unroll.state_dict()) == len(model.state_dict())


def test_auto_compiles_long_single_process_cpu_runs_only():
    cfg = TrainConfig(batch_size=16, max_len=1024)
    cpu = torch.device("cpu")
    assert compile_wanted(cfg, cpu, 1, train.COMPILE_MIN_STEPS)
    assert not compile_wanted(cfg, cpu, 1, train.COMPILE_MIN_STEPS - 1)  # too short to pay for compiling
    assert not compile_wanted(cfg, cpu, 2, 10_000)  # DDP keeps the eager layer
    assert not compile_wanted(cfg, torch.device("cuda"), 1, 10_000)
    assert not compile_wanted(cfg.model_copy(update={"batch_size": 1, "max_len": 64}), cpu, 1, 10_000)
    assert compile_wanted(cfg.model_copy(update={"compile": "on"}), torch.device("cuda"), 2, 1)
    assert not compile_wanted(cfg.model_copy(update={"compile": "off"}), cpu, 1, 10_000)
