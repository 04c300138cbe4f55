"""Linears on prepacked weights (runtime/prepacked.py): the same function as nn.Linear, rows
independent of the row count, repacked after an in-place change, never used where gradients flow."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from runtime.prepacked import _PACKED, linear, matmul
from runtime.target_dtype import native_bf16

# the pinned CPU torch has the op, so CI runs these; each reason names what turned packing off
pytestmark = [
    pytest.mark.skipif(not hasattr(torch.ops.mkldnn, "_linear_pointwise"), reason="this torch has no oneDNN packed linear"),
    pytest.mark.skipif(os.environ.get("SPECMUX_PREPACK", "1") == "0", reason="SPECMUX_PREPACK=0 turns packed linears off"),
]
# bf16 weights are packed only where the CPU multiplies bf16 (AMX / AVX512-BF16); elsewhere oneDNN
# refuses the reorder and the linear is plain F.linear, by design (runtime/prepacked.py `_packed`)
BF16 = pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not native_bf16(), reason="this CPU does not multiply bfloat16 natively: bf16 weights are not packed here"))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), pytest.param(torch.bfloat16, 1e-2, marks=BF16.marks)])
def test_packed_linear_equals_nn_linear(dtype, tol):
    torch.manual_seed(0)
    layer = nn.Linear(64, 96, bias=True).to(dtype)
    x = torch.randn(1, 7, 64, dtype=dtype)
    with torch.inference_mode():
        got = linear(layer, x)
        want = F.linear(x, layer.weight, layer.bias)
    assert id(layer.weight) in _PACKED and _PACKED[id(layer.weight)][2] is not None  # the packed path ran
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_a_row_does_not_depend_on_the_row_count():
    """A verify forward's row for a node is what a one-token forward computes for it."""
    torch.manual_seed(1)
    weight = torch.randn(80, 48)
    x = torch.randn(1, 9, 48)
    with torch.inference_mode():
        together = matmul(x, weight)
        alone = torch.cat([matmul(x[:, i : i + 1], weight) for i in range(9)], dim=1)
    torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-6)


def test_in_place_change_repacks():
    layer = nn.Linear(16, 8, bias=False)
    x = torch.randn(3, 16)
    with torch.inference_mode():
        before = linear(layer, x)
    with torch.no_grad():
        layer.weight.mul_(2.0)
    with torch.inference_mode():
        after = linear(layer, x)
    torch.testing.assert_close(after, 2 * before, rtol=1e-5, atol=1e-5)


def test_gradients_take_the_plain_path():
    layer = nn.Linear(16, 8)
    x = torch.randn(2, 16, requires_grad=True)
    y = linear(layer, x)
    assert y.grad_fn is not None
    y.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("SPECMUX_PREPACK", "0")
    layer = nn.Linear(16, 8)
    _PACKED.pop(id(layer.weight), None)
    with torch.inference_mode():
        linear(layer, torch.randn(2, 16))
    assert _PACKED[id(layer.weight)][2] is None  # remembered as not packed: plain F.linear


def test_a_wrapper_runs_its_own_forward():
    class Doubled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 4)

        def forward(self, x):
            return 2 * self.inner(x)

    module = Doubled()
    x = torch.randn(2, 4)
    with torch.inference_mode():
        torch.testing.assert_close(linear(module, x), 2 * F.linear(x, module.inner.weight, module.inner.bias))


def test_a_hooked_linear_runs_its_hooks():
    layer = nn.Linear(4, 4)
    handle = layer.register_forward_hook(lambda module, inputs, output: output + 1.0)
    x = torch.randn(2, 4)
    with torch.inference_mode():
        torch.testing.assert_close(linear(layer, x), F.linear(x, layer.weight, layer.bias) + 1.0)
    handle.remove()


def test_stacked_matmul_is_each_members_matmul_to_the_bit():
    from runtime.prepacked import stacked_matmul

    torch.manual_seed(2)
    weights = [torch.randn(24, 16) for _ in range(3)]
    biases = [torch.randn(24), None, torch.randn(24)]
    for rows in (1, 2, 5):
        x = torch.randn(3, rows, 16)
        with torch.inference_mode():
            together = stacked_matmul(x, weights, biases)
            alone = torch.stack([matmul(row, w, bias) for row, w, bias in zip(x, weights, biases)])
        assert torch.equal(together, alone)
    assert stacked_matmul(torch.randn(3, 2, 16), weights, biases) is None  # gradients on: the caller's own path


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_group_is_its_linears_side_by_side_to_the_bit(dtype, bias):
    """q|k|v and gate|up on one packed weight (runtime/plan.py) give the separate linears' bits,
    at every row count."""
    from runtime.prepacked import apply, packed_group, pad_rows

    torch.manual_seed(3)
    layers = [nn.Linear(96, out, bias=bias).to(dtype) for out in (96, 32, 32)]
    with torch.inference_mode():
        packed, joint = packed_group([m.weight for m in layers], [m.bias for m in layers])
        for rows in (1, 3, 4, 9, 64, 70):
            x = torch.randn(rows, 96).to(dtype)
            together = apply(pad_rows(x), packed, joint)[:rows]
            assert torch.equal(together, torch.cat([matmul(x, m.weight, m.bias) for m in layers], dim=-1))


def test_a_packed_group_is_remade_after_an_in_place_change():
    from runtime.prepacked import packed_group

    layers = [nn.Linear(16, 8, bias=False) for _ in range(2)]
    with torch.inference_mode():
        first, _ = packed_group([m.weight for m in layers], [None, None])
        assert packed_group([m.weight for m in layers], [None, None])[0] is first  # shared while unchanged
    with torch.no_grad():
        layers[1].weight.mul_(2.0)
    with torch.inference_mode():
        assert packed_group([m.weight for m in layers], [None, None])[0] is not first


def test_a_fused_optimizer_step_is_seen_after_forget():
    """torch's fused AdamW changes weights without bumping their version counter: the cache
    cannot see it, so training calls `forget` after every step (drafters/training/train.py)."""
    from runtime.prepacked import forget

    torch.manual_seed(2)
    layer = nn.Linear(16, 8, bias=False)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.5, fused=True)
    x = torch.randn(3, 16)
    with torch.no_grad():
        linear(layer, x)  # packed at the weights before the step
    layer(x).square().sum().backward()
    version = layer.weight._version
    opt.step()
    assert layer.weight._version == version  # why forget is needed (if torch changes this, forget is harmless)
    forget(layer.parameters())
    with torch.no_grad():
        got = linear(layer, x)
    torch.testing.assert_close(got, F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)


def test_training_evaluates_the_weights_it_has_now(tmp_path):
    """train_drafter with fused AdamW and an evaluation every step: each evaluation sees the
    weights of its step (they were scored on the first evaluation's weights before)."""
    from drafter_fixtures import tiny_drafter_model, tiny_target
    from drafters.training.hidden_cache import LiveTargetStates
    from drafters.training.train import TrainConfig, evaluate_drafter, train_drafter

    target = tiny_target(vocab=64, layers=2, hidden=32, seed=3)
    g = torch.Generator().manual_seed(0)
    records = [{"input_ids": torch.randint(3, 64, (24,), generator=g).tolist(), "prompt_len": 6} for _ in range(8)]
    states = [LiveTargetStates(target, records, [-1])[i] for i in range(len(records))]
    head = target.get_output_embeddings().weight
    model = tiny_drafter_model(target)
    cfg = TrainConfig(epochs=1, batch_size=2, lr=0.05, warmup_steps=1, max_steps=4)
    seen = []

    def evaluate(step):
        packed = evaluate_drafter(model, head, states, cfg)
        linears = [m for m in model.modules() if type(m) is nn.Linear]
        with torch.no_grad():
            x = torch.randn(5, linears[0].in_features)
            stale = [not torch.allclose(linear(m, x), F.linear(x, m.weight), atol=1e-5) for m in linears[:1]]
        seen.append((step, packed["acc_0"], any(stale)))
        return False

    train_drafter(model, head, states, cfg, tmp_path / "run", progress=False, evaluate=evaluate, eval_every=1)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4]
    assert not any(stale for _, _, stale in seen)
