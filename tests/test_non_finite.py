"""NaN / inf logits from the target or a drafter stop generation with an error naming the forward
that produced them (before the fix greedy emitted token 0 and sampling the last vocabulary id)."""
from __future__ import annotations

import pytest

from compose import Composer
from drafters.lm import CausalLMDrafter
from tiny_models import tiny_model
from trees import NonFiniteLogitsError


def poison_head(model, after_calls: int, value: float):
    """From the (after_calls + 1)-th call on, the LM head's output holds `value` at one logit."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        if calls["n"] > after_calls:
            output = output.clone()
            output[..., 5] = value
            return output
        return output

    return model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("after_calls, where", [(0, "prefill forward"), (1, "verify forward")])
def test_non_finite_target_logits_raise_naming_the_forward(value, temperature, after_calls, where):
    target = tiny_model("llama", layers=2, seed=3)
    drafter = CausalLMDrafter(tiny_model("llama", layers=1, seed=4), 96, name="lm")
    composer = Composer(target, drafters={"lm": drafter})
    handle = poison_head(target, after_calls, value)
    try:
        with pytest.raises(NonFiniteLogitsError, match=f"target's {where}"):
            composer.generate([1, 2, 3], strategy="single", max_new_tokens=8, temperature=temperature, seed=0)
    finally:
        handle.remove()


@pytest.mark.parametrize("temperature, sampled", [(0.0, False), (1.0, False), (1.0, True)])
def test_non_finite_drafter_logits_raise_naming_the_drafter(temperature, sampled):
    target = tiny_model("qwen2", layers=2, seed=3)
    draft_model = tiny_model("qwen2", layers=1, seed=5)
    composer = Composer(target, drafters={"ok": CausalLMDrafter(tiny_model("qwen2", layers=1, seed=6), 96, name="ok"),
                                          "broken": CausalLMDrafter(draft_model, 96, name="broken")})
    handle = poison_head(draft_model, 1, float("nan"))
    try:
        with pytest.raises(NonFiniteLogitsError, match="drafter 'broken'"):
            composer.generate([1, 2, 3], strategy="merged_tree", max_new_tokens=8, temperature=temperature,
                              seed=0, tree=dict(depth=3, top_k=2, budget=4, sampled=sampled))
    finally:
        handle.remove()
