"""Feature drafters on the compiled layer (drafters/compiled.py), bf16 on AMX and float32 on our
float32 linears: taken where it fits, close to the module forward, a lockstep group still
drafts each member's own tree to the bit, and anything else runs the module forward."""
from __future__ import annotations

import pytest
import torch

from drafter_fixtures import assert_group_drafts_members_trees, target_features, tiny_drafter_model, tiny_target
from drafters import FeatureDrafter, FeatureDrafterGroup
from drafters.compiled import compiled_members
from runtime import native_layer
from runtime.native_linear import amx_ready
from test_native_layer import clear_layer_kernels
from trees import DraftTree

BF16 = torch.bfloat16


@pytest.fixture(params=["bfloat16", "float32"])
def dtype(request):
    if request.param == "bfloat16" and not amx_ready():
        pytest.skip("the compiled bf16 layer runs the AMX linears: this CPU has no AMX")
    if request.param == "float32" and native_layer.f32_layer_kernel() is None:
        pytest.skip("the compiled float32 layer is not built here (no C compiler: runtime/native.py; or SPECMUX_NATIVE_LAYER=0)")
    return getattr(torch, request.param)


@pytest.fixture(scope="module")
def target():
    return tiny_target(hidden=128)  # 4 heads: head dim 32


def drafter(target, style="eagle3", head="truncated", seed=10, name="d", dtype=BF16) -> FeatureDrafter:
    model = tiny_drafter_model(target, style, head=head, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():  # norms initialise to ones, which hides their roundings
            if "norm" in n:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
        for m in model.layers[0].modules():  # unit-scale linears: the attention's share of the output is not small
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.in_features ** -0.5)
    return FeatureDrafter(model.cast(dtype), name=name)


def test_the_compiled_weights_follow_the_model(target, dtype):
    """A member is made once and reused while the model is unchanged, remade after an in-place
    weight edit or a replaced module, and dropped (module forward) once a hook is on a module."""
    model = drafter(target, dtype=dtype).model
    with torch.inference_mode():
        first = compiled_members([model])[0]
        assert compiled_members([model])[0] is first
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight.mul_(2)
    with torch.inference_mode():
        second = compiled_members([model])[0]
        assert second is not first and compiled_members([model])[0] is second
        model.fc = torch.nn.Linear(model.fc.in_features, model.fc.out_features, bias=False).to(dtype)
        third = compiled_members([model])[0]
        assert third is not second and compiled_members([model])[0] is third
        model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda *a: None)
        assert compiled_members([model]) is None


def test_compiled_where_it_fits(target, monkeypatch, dtype):
    with torch.inference_mode():
        assert compiled_members([drafter(target, dtype=dtype).model]) is not None
        assert compiled_members([drafter(target, head="target", dtype=dtype).model]) is not None
        assert compiled_members([drafter(target, style="eagle1", dtype=dtype).model]) is None
        assert compiled_members([drafter(target, head="lowrank", dtype=dtype).model]) is None
        model = drafter(target, dtype=dtype).model
        model.layers[0].mlp.register_forward_hook(lambda *a: None)
        assert compiled_members([model]) is None
    assert compiled_members([drafter(target, dtype=dtype).model]) is None  # gradients on: training
    monkeypatch.setenv(native_layer.SWITCH, "0")
    clear_layer_kernels()
    try:
        with torch.inference_mode():
            assert compiled_members([drafter(target, dtype=dtype).model]) is None
    finally:
        monkeypatch.undo()
        clear_layer_kernels()


def test_compiled_drafts_close_to_the_module_forward(target, monkeypatch, dtype):
    seq = torch.randint(0, 96, (40,), generator=torch.Generator().manual_seed(5))
    feats = target_features(target, seq, drafter(target).target_layers).to(dtype)
    logits = {}
    for switch in ("1", "0"):
        monkeypatch.setenv(native_layer.SWITCH, switch)
        clear_layer_kernels()
        d = drafter(target, dtype=dtype)
        d.start(seq[:20], feats[:20])
        d.begin_tree(int(seq[20]))
        try:
            with torch.inference_mode():
                assert (compiled_members(d.models) is not None) == (switch == "1")
            root = d.step_many([DraftTree.root_only(int(seq[20]))], [torch.zeros(1, dtype=torch.long)])[0]
        finally:
            d.end_tree()
        logits[switch] = root.logits if hasattr(root, "logits") else root
    monkeypatch.undo()
    clear_layer_kernels()
    a, b = logits["1"], logits["0"]
    tol = 2 ** -5 if dtype == BF16 else 1e-5  # float32: only the sums' orders and silu's exp differ (~1e-7)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()))


def test_group_on_the_compiled_layer_drafts_members_trees(target, dtype):
    drafters = [drafter(target, seed=10 + i, name=f"d{i}", dtype=dtype) for i in range(2)]
    group = FeatureDrafterGroup(drafters)
    with torch.inference_mode():
        assert compiled_members(group.models) is not None
    assert_group_drafts_members_trees(target, drafters, group, seed=6, exact=True)
