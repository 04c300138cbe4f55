"""The domain router: a classifier over the target's prefill hidden state that picks the
drafter for a turn without drafting; fitted, stored, loaded, and used by the `domain` strategy."""
from __future__ import annotations

import json

import pytest
import torch

from compose import Composer
from eval.commands import main as specmux
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from routing import DomainRouter, fit_domain_router
from routing.domain import prompt_features
from eval_helpers import tiny_target_folder
from tiny_models import tiny_model

TARGET = tiny_model("llama", layers=3, seed=3)
VOCAB = TARGET.config.vocab_size
# two "domains" of prompts: low token ids and high token ids
LOW = [torch.randint(0, 20, (n,), generator=torch.Generator().manual_seed(i)) for i, n in enumerate([4, 6, 8, 5] * 5)]
HIGH = [torch.randint(70, 96, (n,), generator=torch.Generator().manual_seed(100 + i)) for i, n in enumerate([4, 6, 8, 5] * 5)]


def test_fit_separates_separable_domains_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 8, generator=gen) + 2, torch.randn(40, 8, generator=gen) - 2
    router = fit_domain_router({"a": a, "b": b})
    assert all(max(p := router.probabilities(x), key=p.get) == "a" for x in a)
    assert all(max(p := router.probabilities(x), key=p.get) == "b" for x in b)
    loaded = DomainRouter.load(router.save(tmp_path / "r.safetensors"))
    assert loaded.names == ["a", "b"] and loaded.layer == -1
    assert loaded.probabilities(a[0]) == pytest.approx(router.probabilities(a[0]))
    with pytest.raises(ValueError, match="another target"):
        router.probabilities(torch.zeros(5))
    with pytest.raises(ValueError, match="no domain router"):
        DomainRouter.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="at least two"):
        fit_domain_router({"a": a})


def fitted_router(layer: int = -1) -> DomainRouter:
    return fit_domain_router({"low": prompt_features(TARGET, LOW, layer), "high": prompt_features(TARGET, HIGH, layer)}, layer)


def counted(drafter):
    drafter.calls = 0
    original = drafter.propose

    def propose(*args, **kw):
        drafter.calls += 1
        return original(*args, **kw)

    drafter.propose = propose
    return drafter


def test_domain_strategy_routes_by_the_prompt_without_drafting_the_others():
    router = fitted_router()
    low = counted(EarlyExitDrafter(TARGET, 1, name="low"))
    high = counted(CausalLMDrafter(tiny_model("llama", layers=1, seed=9), VOCAB, name="high"))
    composer = Composer(TARGET, drafters={"low": low, "high": high}, domain_router=router)
    for prompt, expected in (([3, 5, 1, 7, 2], "low"), ([80, 91, 75, 88], "high")):
        before = {"low": low.calls, "high": high.calls}
        result = composer.generate(prompt, strategy="domain", max_new_tokens=12, tree=dict(depth=3, top_k=2, budget=5))
        plain = TARGET.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
        assert result.token_ids == plain[0, len(prompt):].tolist()
        assert result.stats.routing == [expected] and {s.drafter for s in result.stats.steps} == {expected}
        other = "high" if expected == "low" else "low"
        assert {"low": low, "high": high}[other].calls == before[other]  # never drafted


def test_domain_strategy_needs_a_router_for_its_drafters(tmp_path):
    drafters = {"x": EarlyExitDrafter(TARGET, 1, name="x"), "y": EarlyExitDrafter(TARGET, 2, name="y")}
    composer = Composer(TARGET, drafters=drafters)
    assert "domain router" in composer.unavailable("domain")
    with pytest.raises(ValueError, match="domain router"):
        composer.generate([1, 2], strategy="domain")
    path = fitted_router().save(tmp_path / "r.safetensors")
    with pytest.raises(ValueError, match="not loaded"):
        composer.generate([1, 2], strategy="domain", router=str(path))
    assert "not loaded" in Composer(TARGET, drafters=drafters, domain_router=path).unavailable("domain")


def test_route_command_fits_and_stores_a_router(tmp_path, capsys):
    target = tiny_target_folder(tmp_path / "model")
    out = tmp_path / "router.safetensors"
    assert specmux(["route", "--target", str(target), "--drafter", "m=math", "--drafter", "c=chat",
                    "--prompts", "12", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["domains"] == {"m": "math", "c": "chat"}
    # the reported accuracies are the stored router's and the held-out fit's, recomputed here
    from compose import route_fit
    from runtime.assets import load_target

    model, tokenizer = load_target(target)
    feats = {n: route_fit.domain_features(model, tokenizer, d, 12, 0, -1) for n, d in report["domains"].items()}
    held = {n: [i for i in range(12) if i in set(route_fit.random.Random(0).sample(range(12), 12 // 5))] for n in feats}
    train = {n: f[[i for i in range(12) if i not in held[n]]] for n, f in feats.items()}
    held_out = route_fit.accuracy(fit_domain_router(train, -1), {n: f[held[n]] for n, f in feats.items()})
    assert report["held_out_accuracy"] == pytest.approx(held_out, abs=1e-12)
    assert round(report["held_out_accuracy"] * 4) == pytest.approx(report["held_out_accuracy"] * 4)  # hits / 4 held out
    stored = DomainRouter.load(out)
    assert stored.names == ["m", "c"]
    assert report["eval_accuracy"] == pytest.approx(route_fit.eval_accuracy(stored, model, tokenizer, report["domains"], -1))
    assert set(report["eval_accuracy"]) == {"gsm8k -> m", "mt_bench -> c"}
    assert specmux(["route", "--target", str(target), "--drafter", "m=math", "--out", str(out)]) == 2
