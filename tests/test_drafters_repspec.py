"""RepSpec: merged linears equal the unmerged training-time modules (fp32, atol 1e-5)."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from drafter_fixtures import target_features, tiny_drafter_model, tiny_target
from drafters.feature import FeatureDrafter
from drafters.repspec import HybridRepSpecLinear, LowRankResidualLinear, RepSpecLinear, merge_repspec
from trees import DraftTree
from trees.build import dense_logits


def _randomise(module: nn.Module, seed: int, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


@settings(max_examples=40, deadline=None)
@given(
    n_in=st.integers(1, 24), n_out=st.integers(1, 24), branches=st.integers(0, 4),
    bias=st.booleans(), batch=st.integers(1, 5), seed=st.integers(0, 2**16),
)
def test_merged_repspec_linear_equals_unmerged(n_in, n_out, branches, bias, batch, seed):
    rep = RepSpecLinear(nn.Linear(n_in, n_out, bias=bias), branches)
    _randomise(rep, seed)
    x = torch.randn(batch, 3, n_in, generator=torch.Generator().manual_seed(seed + 1))
    merged = rep.merge()
    assert type(merged) is nn.Linear and (merged.bias is not None) == bias
    torch.testing.assert_close(merged(x), rep(x), atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(1, 16), n_out=st.integers(1, 16), branches=st.integers(0, 3),
       rank=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_merged_hybrid_keeps_the_nonlinear_branch(n_in, n_out, branches, rank, seed):
    hyb = HybridRepSpecLinear(nn.Linear(n_in, n_out), branches, rank)
    _randomise(hyb, seed)
    x = torch.randn(4, n_in, generator=torch.Generator().manual_seed(seed + 1))
    merged = hyb.merge()
    assert isinstance(merged, LowRankResidualLinear) and type(merged.linear) is nn.Linear
    torch.testing.assert_close(merged(x), hyb(x), atol=1e-5, rtol=1e-5)


def test_fresh_repspec_starts_as_the_wrapped_linear():
    lin = nn.Linear(8, 5)
    rep = RepSpecLinear(lin, branches=2, bypass_std=0.0)
    x = torch.randn(3, 8)
    torch.testing.assert_close(rep(x), lin(x))


def test_whole_drafter_gives_same_logits_after_merge():
    target = tiny_target()
    for mode in ("repspec", "hybrid"):
        model = tiny_drafter_model(target, repspec=mode, repspec_branches=2)
        kind = RepSpecLinear if mode == "repspec" else HybridRepSpecLinear
        wrapped = [m for m in model.modules() if type(m) is kind]
        assert len(wrapped) == 7  # q, k, v, o, gate, up, down
        _randomise(model.layers, seed=5, scale=0.1)
        seq = torch.randint(0, 96, (9,))
        feats = target_features(target, seq, [-1])
        tree = DraftTree.from_lists([int(seq[8]), 3, 4, 5], [-1, 0, 0, 1])

        def logits():
            d = FeatureDrafter(model)
            d.start(seq[:8], feats[:8])
            d.begin_tree(int(seq[8]))
            out = [dense_logits(d.step(tree, torch.tensor(f))) for f in ([0], [1, 2], [3])]
            d.end_tree()
            return torch.cat(out)

        before = logits()
        model.merge_repspec()
        assert not any(isinstance(m, (RepSpecLinear, HybridRepSpecLinear)) for m in model.modules())
        torch.testing.assert_close(logits(), before, atol=1e-5, rtol=1e-5)
        merge_repspec(model)  # idempotent: nothing left to merge


def test_folded_training_forward_has_the_branches_outputs_and_gradients():
    """Over many rows RepSpec folds its branches before the matmul (cheaper in training); the
    output and every parameter's gradient are those of the branch-by-branch forward."""
    rep = RepSpecLinear(nn.Linear(12, 20, bias=True), branches=2)
    _randomise(rep, 3)
    assert rep.folding_pays(4096) and not rep.folding_pays(2)
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(4))
    grads = []
    for forward in (rep.branches_forward, rep.folded_forward):
        rep.zero_grad()
        y = forward(x)
        (y * torch.linspace(-1, 1, 20)).sum().backward()
        grads.append((y.detach(), {n: p.grad.clone() for n, p in rep.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-5)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, atol=1e-4, rtol=1e-4, msg=name)
