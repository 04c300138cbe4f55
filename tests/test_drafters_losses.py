"""Losses: alpha = 1 - TV, LK^lambda's weight formula, truncated-vocabulary handling, gradients."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drafters.losses import (
    acceptance_rate, distillation_loss, forward_kl, lk_lambda, lk_lambda_weight, topk_distillation,
)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 6), v=st.integers(2, 30), scale=st.floats(0.1, 8.0), seed=st.integers(0, 2**16))
def test_alpha_is_one_minus_total_variation(n, v, scale, seed):
    g = torch.Generator().manual_seed(seed)
    tl, dl = torch.randn(n, v, generator=g) * scale, torch.randn(n, v, generator=g) * scale
    p, q = tl.softmax(-1), dl.softmax(-1)
    tv = 0.5 * (p - q).abs().sum(-1)
    torch.testing.assert_close(acceptance_rate(tl, dl), 1 - tv, atol=1e-6, rtol=1e-6)


def test_truncated_alpha_restricts_p_without_renormalising_and_kl_renormalises():
    tl = torch.tensor([[2.0, 0.5, -1.0, 1.0]])
    ids = torch.tensor([0, 3])
    dl = torch.tensor([[0.3, -0.2]])
    p = tl.softmax(-1)[0]
    q = dl.softmax(-1)[0]
    alpha = torch.minimum(p[ids], q).sum()
    torch.testing.assert_close(acceptance_rate(tl, dl, ids)[0], alpha)
    pr = p[ids] / p[ids].sum()
    torch.testing.assert_close(forward_kl(tl, dl, ids)[0], (pr * (pr.log() - q.log())).sum())


def test_topk_distillation_uses_the_k_most_likely_target_tokens():
    tl = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    dl = torch.randn(1, 5)
    p, logq = tl.softmax(-1)[0], dl.log_softmax(-1)[0]
    want = -(p[:2] * logq[:2]).sum()
    torch.testing.assert_close(topk_distillation(tl, dl, k=2)[0], want)


def test_lk_lambda_weight_follows_its_formula():
    tl, dl = torch.randn(7, 11), torch.randn(7, 11, requires_grad=True)
    alpha = acceptance_rate(tl, dl).mean()
    lam = torch.exp(-3.0 * alpha.detach())
    torch.testing.assert_close(lk_lambda_weight(alpha), lam)
    want = lam * forward_kl(tl, dl).mean() + (1 - lam) * (1 - alpha)
    torch.testing.assert_close(lk_lambda(tl, dl), want)
    assert not lk_lambda_weight(alpha).requires_grad  # stop-gradient on the weight
    for a in (0.0, 0.5, 1.0):
        assert float(lk_lambda_weight(torch.tensor(a), eta=3.0)) == pytest.approx(torch.exp(torch.tensor(-3.0 * a)).item())


@pytest.mark.parametrize("name", ["kl", "topk", "lk_alpha", "lk_lambda"])
@pytest.mark.parametrize("truncated", [False, True])
def test_gradients_are_finite_and_match_numerical_check(name, truncated):
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 2, 3, 5]) if truncated else None
    tl = torch.randn(3, 6, generator=g, dtype=torch.float64)
    dl = torch.randn(3, 4 if truncated else 6, generator=g, dtype=torch.float64, requires_grad=True)
    loss = distillation_loss(name, tl, dl, ids, topk=3)
    (grad,) = torch.autograd.grad(loss, dl)
    assert torch.isfinite(grad).all()

    if name == "lk_lambda":  # lambda is a stop-gradient weight: check with it held at its value
        lam = lk_lambda_weight(acceptance_rate(tl, dl, ids).mean())

        def f(x):
            return lam * forward_kl(tl, x, ids).mean() + (1 - lam) * (1 - acceptance_rate(tl, x, ids).mean())

        (frozen_grad,) = torch.autograd.grad(f(dl), dl)
        torch.testing.assert_close(grad, frozen_grad)
    else:
        def f(x):
            return distillation_loss(name, tl, x, ids, topk=3)
    assert torch.autograd.gradcheck(f, (dl,), eps=1e-6, atol=1e-5)
