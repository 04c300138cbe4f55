"""The fused, blocked head-and-KL loss (drafters/training/fused_head_loss.py) computes what the
plain path computes from the whole step's logits: loss, gradients of every trained parameter,
per-step agreement, alpha and chain tau, in float64 exactly to rounding and under bf16 autocast
to bf16 rounding; the blocks' boundaries do not matter."""
from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drafter_fixtures import states_records, tiny_drafter_model, tiny_target
from drafters.losses import acceptance_rate, forward_kl
from drafters.training import fused_head_loss
from drafters.training.fused_head_loss import TargetRows, head_kl
from drafters.training.target_side import full_vocab_stats, target_side
from drafters.training.train import TrainConfig, Unroll, collate, unroll_loss


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), vocab=st.integers(8, 60), block=st.integers(1, 64), truncate=st.booleans(),
       alpha_rows=st.sampled_from([None, 1, 3, 7]), seed=st.integers(0, 2**16))
def test_head_kl_equals_the_plain_losses_and_metrics(n, vocab, block, truncate, alpha_rows, seed):
    g = torch.Generator().manual_seed(seed)
    d, full_vocab = 6, vocab + 11
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    head = torch.randn(full_vocab, d, generator=g, dtype=torch.float64)
    draft_ids = torch.randperm(full_vocab, generator=g)[:vocab].sort().values if truncate else None
    weight = (head[draft_ids] if truncate else head).clone().requires_grad_(True)
    last = torch.randn(n, d, generator=g, dtype=torch.float64) * 2
    lse, top = full_vocab_stats(last, head) if truncate else (None, None)
    target = TargetRows(last, head[draft_ids] if truncate else head, lse, top)
    old = fused_head_loss.BLOCK_ELEMENTS
    fused_head_loss.BLOCK_ELEMENTS = block * weight.shape[0]  # blocks of `block` rows (at least 16)
    try:
        got = head_kl(x, weight, target, draft_ids, alpha_rows)
    finally:
        fused_head_loss.BLOCK_ELEMENTS = old
    side = target_side(last, head, draft_ids)
    logits = x @ weight.T
    want = forward_kl(side.logits, logits, side.loss_ids).mean()
    torch.testing.assert_close(got.loss.double(), want, rtol=1e-5, atol=1e-6)
    gx, gw = torch.autograd.grad(got.loss * 0.7, [x, weight])
    wx, ww = torch.autograd.grad(want * 0.7, [x, weight])
    torch.testing.assert_close(gx, wx)
    torch.testing.assert_close(gw, ww)
    drafted = logits.argmax(-1)
    assert torch.equal(got.hits, (draft_ids[drafted] if truncate else drafted) == side.top)
    every = max(1, -(-n // alpha_rows)) if alpha_rows else 1
    alpha = acceptance_rate(side.logits[::every], logits.detach()[::every], side.loss_ids).mean()
    torch.testing.assert_close(got.alpha.double(), alpha, rtol=1e-5, atol=1e-6)


def test_head_kl_computes_no_gradients_without_grad(monkeypatch):
    """Evaluation (torch.no_grad) with trainable inputs: no gradient matmul runs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g, requires_grad=True)
    w = torch.randn(9, 4, generator=g, requires_grad=True)
    last = torch.randn(5, 4, generator=g)
    shapes = []
    real = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: shapes.append((tuple(a.shape), tuple(b.shape))) or real(a, b))
    with torch.no_grad():
        r = head_kl(x, w, TargetRows(last, w, None, None))
    assert not r.loss.requires_grad and r.hits.shape == (5,) and torch.isfinite(r.alpha)
    assert sorted(shapes) == [((5, 4), (4, 9)), ((5, 4), (4, 9))]  # the drafter's and the target's logits only
    shapes.clear()
    head_kl(x, w, TargetRows(last, w, None, None))
    assert ((5, 9), (9, 4)) in shapes and ((9, 5), (5, 4)) in shapes  # with grad: both gradients


@pytest.mark.parametrize("head", ["truncated", "target", "lowrank"])
@pytest.mark.parametrize("cached_stats", [False, True])
def test_fused_unroll_loss_equals_the_plain_unroll_loss(head, cached_stats):
    target = tiny_target(vocab=128, layers=2, hidden=64, seed=3).double()
    model = tiny_drafter_model(target, head=head, seed=5, **({"head_rank": 8} if head == "lowrank" else {})).double()
    cfg = TrainConfig(unroll_steps=3, step_weights=[1.0, 0.5, 0.25], precision="float32", max_len=64)
    weight = target.get_output_embeddings().weight
    batch = collate(states_records(target, n=4, length=18, prompt_lens=[2, 3, 4, 5]), 64)
    batch = batch | {"feats": batch["feats"].double(), "last": batch["last"].double()}
    if cached_stats:  # what a state cache stores beside the states
        lse, top = full_vocab_stats(batch["last"].flatten(0, 1), weight)
        batch |= {"lse": lse.view(batch["ids"].shape), "top": top.view(batch["ids"].shape)}
    params = [p for p in model.parameters() if p.requires_grad]
    unroll = Unroll(model)
    got, got_m = unroll_loss(unroll, model, batch, weight, cfg, steps=4, alpha_rows=5)
    want, want_m = unroll_loss(unroll, model, batch, weight, cfg, steps=4, alpha_rows=5, fused=False)
    torch.testing.assert_close(got.double(), want.double())
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(a, b)
    assert got_m.keys() == want_m.keys()
    for k in want_m:
        assert got_m[k] == pytest.approx(want_m[k], rel=1e-6, abs=1e-7, nan_ok=True), k


def test_fused_unroll_loss_under_bf16_autocast_matches_the_plain_one():
    target = tiny_target(vocab=128, layers=2, hidden=64, seed=3)
    model = tiny_drafter_model(target, head="truncated", seed=5)
    cfg = TrainConfig(unroll_steps=3, precision="bfloat16", max_len=64)
    weight = target.get_output_embeddings().weight
    batch = collate(states_records(target, n=6, length=18, prompt_lens=[2, 3, 4, 5, 6, 7]), 64)
    params = [p for p in model.parameters() if p.requires_grad]
    unroll = Unroll(model)
    with torch.autocast("cpu", torch.bfloat16):
        got, got_m = unroll_loss(unroll, model, batch, weight, cfg)
        want, want_m = unroll_loss(unroll, model, batch, weight, cfg, fused=False)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-4)
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        # bf16 gradients, summed in another order: compared as vectors
        assert (a - b).norm() <= 0.02 * b.norm() + 1e-6, (float((a - b).norm()), float(b.norm()))
    assert got_m["acc_0"] == pytest.approx(want_m["acc_0"], abs=0.02)
    assert got_m["chain_tau"] == pytest.approx(want_m["chain_tau"], abs=0.05)


def _block_inputs(rows: int, vocab: int, seed: int, cached_lse: bool):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(rows, vocab, generator=g) * 3).to(torch.bfloat16)
    t = (torch.randn(rows, vocab, generator=g) * 3).to(torch.bfloat16)
    lse = torch.logsumexp(t.float(), -1) + torch.rand(rows, generator=g) if cached_lse else None
    sampled = torch.arange(rows) % 3 == 0
    return z, t, lse, sampled, torch.tensor(1.0 / rows), torch.bfloat16, torch.float32


@pytest.mark.parametrize("cached_lse", [False, True])
def test_compiled_block_equals_the_eager_block(cached_lse, monkeypatch):
    """Blocks of COMPILE_MIN_ROWS rows or more run kl_block compiled (fused loops): the same loss,
    gradient, argmaxes and alpha as the eager function, to float rounding."""
    monkeypatch.delenv("SPECMUX_COMPILE_LOSS", raising=False)
    rows = fused_head_loss.COMPILE_MIN_ROWS + 44
    compiled = fused_head_loss.block_function(rows, torch.device("cpu"))
    assert compiled is not fused_head_loss.kl_block
    args = _block_inputs(rows, 200, seed=1, cached_lse=cached_lse)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compiled run, not the eager fallback
        got = compiled(*args)
    want = fused_head_loss.kl_block(*args)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)  # KL summed over the rows
    torch.testing.assert_close(got[1].float(), want[1].float(), rtol=0.0, atol=2e-3 / rows)  # bf16 (q - p) / rows
    assert torch.equal(got[2], want[2]) and torch.equal(got[3], want[3])
    torch.testing.assert_close(got[4], want[4], rtol=1e-6, atol=1e-6)
    assert fused_head_loss.block_function(fused_head_loss.COMPILE_MIN_ROWS - 1, torch.device("cpu")) is fused_head_loss.kl_block


def test_a_failing_compiler_warns_and_the_block_runs_eagerly(monkeypatch):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler here")
        return call

    monkeypatch.delenv("SPECMUX_COMPILE_LOSS", raising=False)
    monkeypatch.setattr(fused_head_loss, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken)
    args = _block_inputs(fused_head_loss.COMPILE_MIN_ROWS, 50, seed=2, cached_lse=True)
    block = fused_head_loss.block_function(fused_head_loss.COMPILE_MIN_ROWS, torch.device("cpu"))
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler here"):
        got = block(*args)
    want = fused_head_loss.kl_block(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # reported once; the eager function serves on
        again = block(*args)
    assert all(torch.equal(a, b) for a, b in zip(again, want))


def test_the_compiled_block_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("SPECMUX_COMPILE_LOSS", "0")
    assert fused_head_loss.block_function(10**6, torch.device("cpu")) is fused_head_loss.kl_block

