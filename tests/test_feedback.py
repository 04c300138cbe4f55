"""The feedback hook: after every verification the engine calls Strategy.observe(feedback),
which by default forwards to each active drafter's optional observe(feedback)."""
from __future__ import annotations

import pytest
import torch

from compose import Composer
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from tiny_models import tiny_model

TARGET = tiny_model("llama", layers=3, seed=3)
VOCAB = TARGET.config.vocab_size


class Recording(EarlyExitDrafter):
    """An early-exit drafter that keeps every feedback it is given."""

    def __init__(self, layers: int, name: str):
        super().__init__(TARGET, layers, name=name)
        self.seen = []

    def observe(self, feedback) -> None:
        self.seen.append(feedback)


@pytest.mark.parametrize("strategy, temperature, sampled", [
    ("single", 0.0, False), ("merged_tree", 0.0, False), ("confidence", 1.0, True), ("entropy", 0.8, False),
])
def test_every_verification_reaches_the_drafters(strategy, temperature, sampled):
    rec, other = Recording(1, "rec"), Recording(2, "other")
    plain = CausalLMDrafter(tiny_model("llama", layers=1, seed=8), VOCAB, name="plain")  # no observe: skipped
    # entropy: only drafters with a hook, so the probe's winner (whichever it is) records the turn
    drafters = {"rec": rec, "other": other} if strategy == "entropy" else {"rec": rec, "other": other, "plain": plain}
    composer = Composer(TARGET, drafters=drafters)
    options = dict(drafter="rec") if strategy == "single" else {}
    result = composer.generate([5, 6, 7], strategy=strategy, max_new_tokens=20, temperature=temperature, seed=3,
                               tree=dict(depth=3, top_k=2, budget=6, sampled=sampled), **options)
    steps = result.stats.steps
    seen = rec.seen
    if strategy == "entropy":  # the probe's winner drafts the turn and alone hears of it
        winner, loser = (rec, other) if steps[0].drafter == "rec" else (other, rec)
        assert {s.drafter for s in steps} == {winner.name}
        seen = winner.seen
        assert loser.seen == []
    assert len(seen) == len(steps) > 0
    emitted = [result.token_ids[0]]
    for fb, step in zip(seen, steps):
        assert fb.accepted == step.accepted and len(fb.tree) == step.tree_size
        assert fb.logits.shape == (len(fb.tree), VOCAB)
        assert fb.tokens[0].item() == emitted[-1] and fb.tokens.tolist() == fb.tree.tokens[fb.path].tolist()
        emitted += fb.continuation.tolist()
        probs = fb.probs()
        assert probs.shape == (len(fb.path), VOCAB) and torch.allclose(probs.sum(-1), torch.ones(len(fb.path)))
        if temperature == 0:  # greedy: the bonus is the argmax at the last accepted node
            assert fb.bonus == int(fb.logits[fb.path[-1]].argmax())
        assert fb.drafter_trees and all(t.root_token == fb.tokens[0].item() for t in fb.drafter_trees.values())
    assert emitted[: len(result.token_ids)] == result.token_ids
    if strategy in ("merged_tree", "confidence"):
        assert set(seen[0].drafter_trees) == {"rec", "other", "plain"}
        assert len(other.seen) == len(steps)
    if strategy == "single":
        assert set(seen[0].drafter_trees) == {"rec"} and other.seen == []


def test_autoregressive_feedback_has_the_root_alone():
    rec = Recording(1, "rec")
    composer = Composer(TARGET, drafters={"rec": rec})
    strategy = composer.generate([1, 2], strategy="autoregressive", max_new_tokens=5)
    assert strategy.stats.n_steps == 4 and rec.seen == []  # not active: drafters are not told
