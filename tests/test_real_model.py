"""Greedy token equality on the real default target (SmolLM2-135M-Instruct, converted once into
the model cache), in both target dtypes: in float32 against transformers' own generate; in
bfloat16 (the default on CPUs with native bf16) against our plain decoding in bfloat16, since
transformers' bf16 forward is not batch-invariant (docs/design.md "Exact bf16"). A light pass
runs by default; the full pass over every strategy and more prompts is marked slow."""
from __future__ import annotations

import pytest
import torch

from compose import Composer
from tiny_models import needs_native_bf16

PROMPTS = [
    "What is 17 * 23? Answer briefly.",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
    "List three uses of copper.",
]


DTYPES = ["float32", pytest.param("bfloat16", marks=needs_native_bf16())]


@pytest.fixture(scope="module", params=DTYPES)
def loaded_target(request):
    """The default target in each dtype, loaded once per module (read only: nothing here trains it)."""
    from runtime.assets import load_target

    return load_target("smollm2-135m-instruct", dtype=getattr(torch, request.param))


@pytest.fixture
def composer(loaded_target):
    """A Composer of each test's own: drafters one test adds, and the routing state and
    calibration its strategies learn, never reach another test."""
    from compose.defaults import CALIBRATION_FILE, DOMAIN_ROUTER_FILE, shipped_routing_file

    model, tokenizer = loaded_target
    name = "smollm2-135m-instruct"  # the routing assets a Composer of the built-in's name reads
    return Composer(model, tokenizer=tokenizer, drafters={"ee6": "early-exit:6", "ee12": "early-exit:12"},
                    domain_router=shipped_routing_file(name, DOMAIN_ROUTER_FILE),
                    calibration=shipped_routing_file(name, CALIBRATION_FILE))


def reference(composer: Composer, ids: torch.Tensor, n: int) -> list[int]:
    if composer.target.dtype == torch.bfloat16:  # plain decoding, one token per forward
        return composer.generate(ids, strategy="autoregressive", max_new_tokens=n).token_ids
    out = composer.target.model.generate(ids[None], max_new_tokens=n, do_sample=False)
    return out[0, ids.numel():].tolist()


def check(composer, prompt, strategy, n, **kw):
    ids = composer.encode([{"role": "user", "content": prompt}])
    result = composer.generate(ids, strategy=strategy, max_new_tokens=n, **kw)
    assert result.token_ids == reference(composer, ids, n)[: len(result.token_ids)]
    assert len(result.token_ids) == n or result.finish_reason == "eos"
    return result


@pytest.mark.parametrize("strategy, extra", [("single", {"drafter": "ee12"}), ("merged_tree", {})])
def test_default_model_greedy_equality(composer, strategy, extra):
    check(composer, PROMPTS[0], strategy, 24, tree=dict(depth=4, top_k=3, budget=10), **extra)


def test_a_deep_tree_of_the_math_drafter_on_a_held_out_word_problem(composer):
    """Seen in the wild (2026-12-05, bf16): with a depth-5, 32-node tree the math drafter's output
    left plain decoding's at token 21, a node's attention summed two visible keys in another
    order than plain decoding (runtime/invariant.py: keys in pairs)."""
    from compose.defaults import default_drafters
    from eval.datasets import load_benchmark

    composer.add_drafter("math", default_drafters("smollm2-135m-instruct")["math"])
    item = next(i for i in load_benchmark("heldout-math") if i.id == "1553")
    check(composer, item.turns[0], "single", 32, drafter="math", tree=dict(depth=5, top_k=8, budget=32))


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("strategy, extra", [
    ("autoregressive", {}), ("single", {"drafter": "ee6"}), ("single", {"drafter": "ee12"}),
    ("confidence", {}), ("entropy", {}), ("merged_tree", {}),
    ("merged_tree", {"tree": dict(depth=5, top_k=4, budget=16, merge_budget="equal")}),
])
def test_default_model_greedy_equality_every_strategy(composer, prompt, strategy, extra):
    extra = {"tree": dict(depth=5, top_k=4, budget=16), **extra}
    check(composer, prompt, strategy, 64, **extra)


@pytest.mark.slow
@pytest.mark.parametrize("draft_vocab", ["full", "shipped"])
def test_default_model_greedy_equality_while_dvi_learns(composer, draft_vocab):
    """dvi:6 learning online (every verification updates it) keeps greedy output exact."""
    from drafters.dvi import DVIConfig, DVIDrafter
    from drafters.dvi_learner import LearnConfig

    config = DVIConfig(draft_vocab=draft_vocab, learning=LearnConfig(update_every=1, kl_updates=8))
    dvi = DVIDrafter(composer.target.model, 6, config, name=f"dvi6-{draft_vocab}")
    composer.add_drafter(dvi.name, dvi)
    for prompt in PROMPTS:
        check(composer, prompt, "single", 48, drafter=dvi.name, tree=dict(depth=4, top_k=3, budget=10))
    assert dvi.learner.updates > 50 and dvi.learner.phase == "rl"


def test_dvi_over_the_shipped_draft_vocabulary(composer):
    """draft_vocab='shipped' finds the shipped drafters' vocabulary for the default target (by its
    fingerprint) and stays greedy-exact while it learns over it."""
    from drafters.dvi import DVIConfig, DVIDrafter
    from drafters.dvi_learner import LearnConfig
    from drafters.pretrained import load_pretrained

    config = DVIConfig(draft_vocab="shipped", learning=LearnConfig(update_every=1, kl_updates=2))
    dvi = DVIDrafter(composer.target.model, 6, config, name="dvi6-shipped-light")
    shipped = load_pretrained("smollm2-135m-instruct", "math", composer.target.model)
    assert torch.equal(dvi.draft_ids, shipped.model.head.draft_ids) and dvi.draft_ids.numel() < 49152
    composer.add_drafter(dvi.name, dvi)
    check(composer, PROMPTS[0], "single", 24, drafter=dvi.name, tree=dict(depth=3, top_k=3, budget=8))
    assert dvi.learner.updates > 0
