"""Feature drafters on the compiled bf16 layer (drafters/compiled.py): taken where it fits,
close to the module forward, a lockstep group still drafts each member's own tree to the bit,
and anything else runs the module forward."""
from __future__ import annotations

import pytest
import torch

from drafter_fixtures import assert_group_drafts_members_trees, target_features, tiny_drafter_model, tiny_target
from drafters import FeatureDrafter, FeatureDrafterGroup
from drafters.compiled import compiled_members
from runtime import native_layer
from runtime.native_linear import amx_ready
from trees import DraftTree

pytestmark = pytest.mark.skipif(not amx_ready(), reason="the compiled layer runs the AMX linears: this CPU has no AMX")
BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def target():
    return tiny_target(hidden=128)  # 4 heads: head dim 32


def drafter(target, style="eagle3", head="truncated", seed=10, name="d") -> FeatureDrafter:
    model = tiny_drafter_model(target, style, head=head, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():  # norms initialise to ones, which hides their roundings
            if "norm" in n:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
        for m in model.layers[0].modules():  # unit-scale linears: the attention's share of the output is not small
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.in_features ** -0.5)
    return FeatureDrafter(model.cast(BF16), name=name)


def test_compiled_where_it_fits(target, monkeypatch):
    with torch.inference_mode():
        assert compiled_members([drafter(target).model]) is not None
        assert compiled_members([drafter(target, head="target").model]) is not None
        assert compiled_members([drafter(target, style="eagle1").model]) is None
        assert compiled_members([drafter(target, head="lowrank").model]) is None
        model = drafter(target).model
        model.layers[0].mlp.register_forward_hook(lambda *a: None)
        assert compiled_members([model]) is None
    assert compiled_members([drafter(target).model]) is None  # gradients on: training
    monkeypatch.setenv(native_layer.SWITCH, "0")
    native_layer.layer_kernel.cache_clear()
    try:
        with torch.inference_mode():
            assert compiled_members([drafter(target).model]) is None
    finally:
        monkeypatch.undo()
        native_layer.layer_kernel.cache_clear()


def test_compiled_drafts_close_to_the_module_forward(target, monkeypatch):
    seq = torch.randint(0, 96, (40,), generator=torch.Generator().manual_seed(5))
    feats = target_features(target, seq, drafter(target).target_layers).to(BF16)
    logits = {}
    for switch in ("1", "0"):
        monkeypatch.setenv(native_layer.SWITCH, switch)
        native_layer.layer_kernel.cache_clear()
        d = drafter(target)
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
    native_layer.layer_kernel.cache_clear()
    a, b = logits["1"], logits["0"]
    torch.testing.assert_close(a, b, rtol=2 ** -5, atol=2 ** -5 * float(b.abs().max()))


def test_group_on_the_compiled_layer_drafts_members_trees(target):
    drafters = [drafter(target, seed=10 + i, name=f"d{i}") for i in range(2)]
    group = FeatureDrafterGroup(drafters)
    with torch.inference_mode():
        assert compiled_members(group.models) is not None
    assert_group_drafts_members_trees(target, drafters, group, seed=6, exact=True)
