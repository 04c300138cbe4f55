"""The DVI drafter (dvi:K): lossless while it learns (greedy equality, sampling law), learning
that measurably raises acceptance, adapter save/reload, and clear errors for bad input."""
from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compose import Composer
from trees import StepFeedback
from drafters.dvi import DVIConfig, DVIDrafter
from drafters.lm import EarlyExitDrafter
from drafters.dvi_learner import Batch, LearnConfig, dvi_loss
from trees import DraftTree, SamplingSpec, TreeSpec
from trees.build import GrowingTree
from e2e_law import SLOW_TV, assert_law, sample_law
from e2e_law import TARGET as LAW_TARGET
from test_engine import MODELS, reference_greedy
from tiny_models import tiny_model


def eager(exit_adapter: str = "none", schedule: str = "kl_rl", **learning) -> DVIConfig:
    """Updates after every verification with a large step, so weights move within a test."""
    params = dict(update_every=1, lr=0.05, kl_updates=3, schedule=schedule) | learning
    return DVIConfig(exit_adapter=exit_adapter, learning=LearnConfig(**params))


def some_ids(vocab: int, n: int, seed: int = 0) -> torch.Tensor:
    """A draft vocabulary: n target ids drawn at random, ascending."""
    return torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def adapter_norm(d: DVIDrafter) -> float:
    return sum(float(p.detach().abs().sum()) for k, p in d.adapter_parameters().items() if k.endswith(".up"))


# --- lossless while learning ------------------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(["llama", "qwen2"]),
    seed=st.sampled_from([0, 1]),
    prompt=st.lists(st.integers(0, 95), min_size=1, max_size=10),
    exit_adapter=st.sampled_from(["none", "lora", "translator"]),
    train_on=st.sampled_from(["path", "tree"]),
    reward_missed=st.booleans(),
    depth=st.integers(1, 4),
    top_k=st.integers(1, 3),
    budget=st.integers(1, 10),
    draft_vocab=st.sampled_from([None, 5, 40]),
)
def test_greedy_equals_plain_decoding_while_learning(arch, seed, prompt, exit_adapter, train_on, reward_missed, depth,
                                                     top_k, budget, draft_vocab):
    target = MODELS[(arch, seed)]
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ids = None if draft_vocab is None else some_ids(target.config.vocab_size, draft_vocab, seed)
    drafter = DVIDrafter(target, 2, eager(exit_adapter, train_on=train_on, reward_missed=reward_missed), draft_ids=ids)
    composer = Composer(target, drafters={"d": drafter})
    for _ in range(2):  # the second generation drafts with weights learned in the first
        result = composer.generate(prompt, strategy="single", max_new_tokens=16,
                                   tree=dict(depth=depth, top_k=top_k, budget=budget))
        assert result.token_ids == reference_greedy(target, prompt, 16)
    assert drafter.learner.updates > 0 and adapter_norm(drafter) > 0, "the drafter never learned"
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "learning changed the target's weights"


@pytest.mark.slow  # the default run: tests/test_e2e_law.py `merged-sum-dvi-learning-lm-eagle3` (TV 0.05)
@pytest.mark.parametrize("sampled, temperature, top_k, exit_adapter, reward_missed, draft_vocab",
                         [(True, 0.8, 2, "translator", True, None), (False, 1.0, 0, "lora", False, None),
                          (True, 1.0, 0, "translator", True, 2)])
def test_sampling_law_while_learning(sampled, temperature, top_k, exit_adapter, reward_missed, draft_vocab):
    """At power 0.99 against TV 0.02 (tests/e2e_law.py). draft_vocab: the exit head covers that
    many of the 3 tokens (the target's law still holds: tokens outside are never proposed, the
    verifier still samples them)."""
    ids = None if draft_vocab is None else some_ids(LAW_TARGET.config.vocab_size, draft_vocab)
    drafter = DVIDrafter(LAW_TARGET, 1, eager(exit_adapter, update_every=2, lr=0.02, reward_missed=reward_missed),
                         draft_ids=ids)
    composer = Composer(LAW_TARGET, drafters={"d": drafter})
    run = sample_law(composer, "single", SamplingSpec(temperature, top_k, 1.0),
                     dict(depth=2, top_k=2, budget=3, sampled=sampled), SLOW_TV, drafter="d")
    assert_law(run, SLOW_TV, "dvi while learning")
    assert drafter.learner.updates >= 100 and adapter_norm(drafter) > 0, "the drafter never learned"
    assert drafter.learner.phase == "rl"


def test_merged_tree_with_a_learning_drafter_is_greedy_equal():
    target = MODELS[("llama", 0)]
    dvi = DVIDrafter(target, 1, eager(train_on="tree"))
    composer = Composer(target, drafters={"dvi": dvi, "ee": EarlyExitDrafter(target, 2)})
    prompt = [4, 8, 15, 16, 23, 42]
    for strategy in ("merged_tree", "confidence"):
        result = composer.generate(prompt, strategy=strategy, max_new_tokens=20, tree=dict(depth=3, top_k=2, budget=6))
        assert result.token_ids == reference_greedy(target, prompt, 20)
    assert dvi.learner.updates > 0


def test_averaged_dvi_drafters_learn_on_their_average():
    target = MODELS[("qwen2", 0)]
    a, b = DVIDrafter(target, 1, eager()), DVIDrafter(target, 1, eager(), name="b")
    composer = Composer(target, drafters={"a": a, "b": b})
    result = composer.generate([3, 1, 4, 1, 5], strategy="averaged", max_new_tokens=16, tree=dict(depth=3, top_k=2, budget=6))
    assert result.token_ids == reference_greedy(target, [3, 1, 4, 1, 5], 16)
    assert a.learner.updates == b.learner.updates == 0  # the averaged copy learned, not the originals
    (averaged,) = [d for d in composer.strategy_cache.values() if isinstance(d, DVIDrafter)]
    assert averaged.learner.updates > 0


# --- learning helps ---------------------------------------------------------------------------
def stream_tau(composer: Composer, drafter: str, prompts: list[list[int]], n: int = 32) -> list[float]:
    tree = dict(depth=4, top_k=2, budget=8)
    return [composer.generate(p, strategy="single", drafter=drafter, max_new_tokens=n, tree=tree).stats.tau
            for p in prompts]


@pytest.mark.parametrize("draft_vocab", [False, True])
def test_learning_raises_acceptance_on_a_repeated_pattern(draft_vocab):
    """A stream that keeps asking for the same continuations (a few prompts, each four times):
    early-exit:1 of a random target accepts little; dvi:1 must learn the target's continuations
    from verification alone and accept at least 1.5x more by the last round. With a draft
    vocabulary (the target's continuations and as many other tokens), learning goes through the
    truncated head: sparse logits, restricted targets, head columns."""
    target = tiny_model("llama", layers=3, seed=3)
    rng = random.Random(0)
    patterns = [[rng.randrange(96) for _ in range(6)] for _ in range(3)]
    stream = patterns * 4
    ids = None
    if draft_vocab:
        wanted = {t for p in patterns for t in reference_greedy(target, p, 33)}
        others = [t for t in some_ids(96, 96, seed=1).tolist() if t not in wanted][:len(wanted)]
        ids = torch.tensor(sorted(wanted | set(others)))
    dvi = DVIDrafter(target, 1, DVIConfig(learning=LearnConfig(update_every=2, lr=0.01, kl_updates=20)), draft_ids=ids)
    composer = Composer(target, drafters={"dvi": dvi, "ee": EarlyExitDrafter(target, 1)})
    learned = stream_tau(composer, "dvi", stream)
    frozen = stream_tau(composer, "ee", patterns)
    last_round = sum(learned[-3:]) / 3
    assert last_round >= 1.5 * sum(frozen) / 3, (learned, frozen)
    assert dvi.learner.phase == "rl"


def optimizer_step(dvi: DVIDrafter, batch: Batch, phase: str, baseline: float) -> tuple[float, dict]:
    with torch.enable_grad():
        loss, parts = dvi_loss(dvi.train_logits(batch.features), batch, phase, baseline, dvi.config.learning)
        dvi.learner.optimizer.zero_grad()
        loss.backward()
        dvi.learner.optimizer.step()
    return float(loss.detach()), parts


def test_kl_phase_moves_the_draft_towards_the_target():
    """One optimizer step on the KL loss lowers it (a sign error or a detached graph would not)."""
    target = MODELS[("qwen2", 1)]
    dvi = DVIDrafter(target, 1, eager())
    hn = torch.randn(4, target.config.hidden_size)
    features = {"hn": hn, "base": target.lm_head(hn)}
    target_logits = torch.randn(4, target.config.vocab_size) * 3
    batch = Batch(features, target_logits, torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, 1),
                  torch.zeros(4, 1, dtype=torch.bool))
    losses = [optimizer_step(dvi, batch, "kl", 0.0)[0] for _ in range(3)]
    assert losses[2] < losses[0]


def test_rl_loss_raises_accepted_and_lowers_rejected_tokens():
    target = MODELS[("qwen2", 1)]
    dvi = DVIDrafter(target, 1, eager(kl_weight=0.0))
    hn = torch.randn(2, target.config.hidden_size)
    features = {"hn": hn, "base": target.lm_head(hn)}
    children = torch.tensor([[5, 6], [7, 8]])
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    batch = Batch(features, torch.randn(2, target.config.vocab_size), children, rewards, torch.ones(2, 2, dtype=torch.bool))

    def logq():
        return torch.log_softmax(dvi.train_logits(features), -1).gather(1, children)

    with torch.no_grad():
        before = logq()
    for _ in range(3):
        _, parts = optimizer_step(dvi, batch, "rl", 0.25)
    with torch.no_grad():
        after = logq()
    assert set(parts) == {"kl", "ce", "pg"}
    assert after[0, 0] > before[0, 0], "the accepted token's log q must rise"
    assert after[1].sum() < before[1].sum(), "rejected tokens (reward below the baseline) must fall"


# --- examples from a verification ---------------------------------------------------------------
def test_examples_follow_the_verified_path_by_tokens():
    """The verified tree may be another tree (merged, or another drafter's): examples are matched
    by token path; rewards mark the children equal to the target's next token."""
    target = MODELS[("llama", 1)]
    dvi = DVIDrafter(target, 1, eager(update_every=1000))
    dvi.start(torch.tensor([1, 2, 3]), None)
    mine = dvi.propose(9, TreeSpec(depth=2, top_k=2, budget=4), SamplingSpec())
    child = int(mine.tokens[mine.parents == 0][0])
    # a verified tree with another node order and an extra branch: root -> (50, child)
    verified = DraftTree.from_lists([9, 50, child], [-1, 0, 0])
    logits = torch.randn(3, target.config.vocab_size)
    path = torch.tensor([0, 2])
    feedback = StepFeedback(tree=verified, path=path, tokens=verified.tokens[path], bonus=77, logits=logits,
                            sampling=SamplingSpec())
    examples = dvi.examples(feedback)
    assert len(examples) == 2  # the root and the accepted child were expanded; node 50 is not the drafter's
    root_example = examples[0]
    assert torch.equal(root_example.target_logits, logits[0])
    root_children = mine.tokens[mine.children(0)]
    assert torch.equal(root_example.rewards, (root_children == child).float())
    assert root_example.rewards.sum() == 1
    # the accepted child: its rewards mark the children equal to the bonus token
    assert torch.equal(examples[1].target_logits, logits[2])
    assert torch.equal(examples[1].rewards, (examples[1].children == 77).float())
    # reward_missed: a path node whose children all missed gets the target's token as a rewarded child
    dvi.config.learning.reward_missed = True
    assert 77 not in examples[1].children.tolist()
    dvi.start(torch.tensor([1, 2, 3]), None)
    assert torch.equal(dvi.propose(9, TreeSpec(depth=2, top_k=2, budget=4), SamplingSpec()).tokens, mine.tokens)
    missed = dvi.examples(feedback)[1]
    assert missed.children.tolist() == [*examples[1].children.tolist(), 77] and missed.rewards.tolist()[-1] == 1.0
    assert missed.rewards.sum() == 1
    assert torch.equal(dvi.examples(feedback)[0].rewards, root_example.rewards)  # a hit: nothing added


def test_examples_over_a_draft_vocabulary_use_head_columns():
    """With a draft vocabulary, an example's children are head columns, its target logits the
    draft vocabulary's, and a missed target token outside the vocabulary is not added."""
    target = MODELS[("llama", 1)]
    vocab = target.config.vocab_size
    ids = some_ids(vocab, 30)
    outside = next(t for t in range(vocab) if t not in ids.tolist())
    dvi = DVIDrafter(target, 1, eager(update_every=1000, reward_missed=True), draft_ids=ids)
    dvi.start(torch.tensor([1, 2, 3]), None)
    mine = dvi.propose(9, TreeSpec(depth=2, top_k=2, budget=4), SamplingSpec())
    assert set(mine.tokens[1:].tolist()) <= set(ids.tolist())
    child = int(mine.tokens[mine.parents == 0][0])
    verified = DraftTree.from_lists([9, child], [-1, 0])
    logits = torch.randn(2, vocab)
    for bonus, added in ((outside, False), (int(ids[0]), True)):
        dvi.start(torch.tensor([1, 2, 3]), None)
        dvi.propose(9, TreeSpec(depth=2, top_k=2, budget=4), SamplingSpec())
        path = torch.tensor([0, 1])
        root, leaf = dvi.examples(StepFeedback(tree=verified, path=path, tokens=verified.tokens[path], bonus=bonus,
                                               logits=logits, sampling=SamplingSpec()))
        assert torch.equal(root.target_logits, logits[0, ids])
        root_children = mine.tokens[mine.children(0)]
        assert torch.equal(ids[root.children], root_children)
        assert torch.equal(root.rewards, (root_children == child).float())
        grandchildren = ids[leaf.children].tolist()
        assert (grandchildren[-1] == bonus) == added and len(leaf.children) == len(leaf.rewards)


def test_fresh_dvi_over_a_draft_vocabulary_drafts_like_early_exit_restricted():
    """A fresh dvi with a draft vocabulary scores exactly the early-exit head's logits at those
    tokens (its frozen head is the target's rows), and proposes from them only."""
    target = MODELS[("qwen2", 1)]
    ids = some_ids(target.config.vocab_size, 24)
    dvi, ee = DVIDrafter(target, 2, DVIConfig(learn=False), draft_ids=ids), EarlyExitDrafter(target, 2)
    spec = TreeSpec(depth=1, top_k=3, budget=3)
    for d in (dvi, ee):
        d.start(torch.tensor([1, 2, 3, 4]), None)
    with torch.inference_mode():
        root = GrowingTree(5, "x").snapshot()
        sparse, dense = dvi._step(root, torch.zeros(1, dtype=torch.long)), ee._step(root, torch.zeros(1, dtype=torch.long))
    assert torch.equal(sparse.vocab_ids, ids)
    torch.testing.assert_close(sparse.logits, dense[:, ids])
    dvi.start(torch.tensor([1, 2, 3, 4]), None)
    tree = dvi.propose(5, spec, SamplingSpec())
    best = ids[dense[0, ids].topk(3).indices]
    assert sorted(tree.tokens[1:].tolist()) == sorted(best.tolist())


# --- save / reload ------------------------------------------------------------------------------
@pytest.mark.parametrize("exit_adapter", ["none", "lora", "translator"])
def test_adapter_round_trip(tmp_path, exit_adapter):
    target = MODELS[("qwen2", 0)]
    learned = DVIDrafter(target, 2, eager(exit_adapter))
    composer = Composer(target, drafters={"d": learned})
    composer.generate([5, 6, 7, 8], strategy="single", max_new_tokens=24, tree=dict(depth=3, top_k=2, budget=6))
    assert learned.learner.updates > 0
    folder = learned.save_adapter(tmp_path / "adapters" / "math", domain="math")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.safetensors", "config.json", "learner.safetensors"]

    fresh = DVIDrafter(target, 2, DVIConfig(exit_adapter=exit_adapter))
    meta = fresh.load_adapter(folder)
    assert meta["domain"] == "math"
    for k, p in learned.adapter_parameters().items():
        assert torch.equal(p, fresh.adapter_parameters()[k])
    assert fresh.learner.updates == learned.learner.updates and fresh.learner.baseline == learned.learner.baseline
    spec = TreeSpec(depth=3, top_k=2, budget=6)
    trees = []
    for d in (learned, fresh):
        d.start(torch.tensor([5, 6, 7, 8]), None)
        trees.append(d.propose(3, spec, SamplingSpec()))
    assert torch.equal(trees[0].tokens, trees[1].tokens) and torch.allclose(trees[0].scores, trees[1].scores)
    # the spec string loads it too
    via_spec = Composer(target, drafters={"d": f"dvi:2:{folder}"}).drafters["d"]  # shaped as saved
    assert via_spec.config == learned.config and via_spec.learner.updates == learned.learner.updates
    assert torch.equal(via_spec.head.lora.up, learned.head.lora.up)


def test_adapter_over_a_draft_vocabulary_round_trip(tmp_path):
    """The draft vocabulary travels with the adapter: a reload drafts over the same tokens
    whatever `draft_vocab` named, and an adapter over another vocabulary is refused."""
    target = MODELS[("qwen2", 0)]
    ids = some_ids(target.config.vocab_size, 40)
    learned = DVIDrafter(target, 2, eager("translator"), draft_ids=ids)
    Composer(target, drafters={"d": learned}).generate([5, 6, 7, 8], strategy="single", max_new_tokens=24,
                                                       tree=dict(depth=3, top_k=2, budget=6))
    assert learned.learner.updates > 0
    folder = learned.save_adapter(tmp_path / "a")
    reloaded = DVIDrafter.from_adapter(target, folder)
    assert torch.equal(reloaded.draft_ids, ids) and reloaded.head.lora.up.shape == (40, learned.config.rank)
    for k, p in learned.adapter_parameters().items():
        assert torch.equal(p, reloaded.adapter_parameters()[k]), k
    with pytest.raises(ValueError, match="covers another vocabulary than this drafter's"):
        DVIDrafter(target, 2, DVIConfig(exit_adapter="translator")).load_adapter(folder)
    with pytest.raises(ValueError, match="covers another vocabulary than this drafter's"):
        DVIDrafter(target, 2, DVIConfig(exit_adapter="translator"), draft_ids=some_ids(96, 40, seed=5)).load_adapter(folder)


def test_draft_vocab_from_a_drafter_checkpoint(tmp_path):
    """draft_vocab names a drafter checkpoint with a truncated head (its d2t); a full-head
    checkpoint, a folder that is none, or 'shipped' for a target nothing was shipped for are
    refused with the reason."""
    from drafters.checkpoint import save_drafter
    from drafter_fixtures import tiny_drafter_model

    target = MODELS[("llama", 0)]
    truncated = tiny_drafter_model(target, head="truncated")
    save_drafter(truncated, tmp_path / "trunc", target=target)
    dvi = DVIDrafter(target, 1, DVIConfig(draft_vocab=str(tmp_path / "trunc")))
    assert torch.equal(dvi.draft_ids, truncated.head.draft_ids)
    save_drafter(tiny_drafter_model(target), tmp_path / "full", target=target)
    with pytest.raises(ValueError, match="covers the full vocabulary"):
        DVIDrafter(target, 1, DVIConfig(draft_vocab=str(tmp_path / "full")))
    with pytest.raises(ValueError, match="draft_vocab must be 'full', 'shipped', 'auto' or a drafter checkpoint folder"):
        DVIDrafter(target, 1, DVIConfig(draft_vocab=str(tmp_path / "none")))
    with pytest.raises(ValueError, match="no drafter shipped in drafters/pretrained for this target"):
        DVIDrafter(target, 1, DVIConfig(draft_vocab="shipped"))
    assert DVIDrafter(target, 1, DVIConfig(draft_vocab="auto")).draft_ids is None  # nothing shipped: the full head
    with pytest.raises(ValueError, match="different target"):
        DVIDrafter(MODELS[("llama", 1)], 1, DVIConfig(draft_vocab=str(tmp_path / "trunc")))


def test_reloaded_adapter_goes_on_learning_exactly(tmp_path):
    """Optimizer moments and the examples buffered between updates travel with the adapter: a
    drafter reloaded mid-stream learns as the one that never stopped."""
    target = MODELS[("qwen2", 0)]
    config = DVIConfig(learning=LearnConfig(update_every=4, kl_updates=2))
    options = dict(strategy="single", max_new_tokens=20, tree=dict(depth=3, top_k=2, budget=6))
    going = DVIDrafter(target, 2, config)
    Composer(target, drafters={"d": going}).generate([5, 6, 7, 8], **options)
    assert going.learner.buffer and going.learner.optimizer.state  # something pending to carry over
    reloaded = DVIDrafter.from_adapter(target, going.save_adapter(tmp_path / "a"))
    outputs = [Composer(target, drafters={"d": d}).generate([9, 4, 2], **options).token_ids for d in (going, reloaded)]
    assert outputs[0] == outputs[1] and going.learner.updates == reloaded.learner.updates
    for k, p in going.adapter_parameters().items():
        assert torch.equal(p, reloaded.adapter_parameters()[k]), k


@pytest.mark.parametrize("exit_adapter", ["none", "lora", "translator"])
def test_fresh_dvi_drafts_exactly_like_early_exit(exit_adapter):
    target = MODELS[("llama", 0)]
    spec, sampling = TreeSpec(depth=3, top_k=3, budget=8), SamplingSpec()
    trees = []
    for d in (DVIDrafter(target, 2, DVIConfig(exit_adapter=exit_adapter)), EarlyExitDrafter(target, 2)):
        d.start(torch.tensor([1, 2, 3, 4]), None)
        trees.append(d.propose(5, spec, sampling))
    assert torch.equal(trees[0].tokens, trees[1].tokens) and torch.allclose(trees[0].scores, trees[1].scores)


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [0, 3, 7, -1])
def test_exit_layer_out_of_range(layer):
    with pytest.raises(ValueError, match=r"dvi exit layer must be an integer in \[1, 2\]"):
        DVIDrafter(MODELS[("llama", 0)], layer)


@pytest.mark.parametrize("spec, message", [("dvi:x", "expected dvi:<exit layer>"), ("dvi:", "expected dvi:<exit layer>"),
                                           ("dvi:9", "dvi exit layer must be"), ("dvi:1:/no/such/folder", "is not a DVI adapter")])
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        Composer(MODELS[("llama", 0)], drafters={"d": spec})


def test_mismatched_adapters_are_refused(tmp_path):
    target = MODELS[("llama", 0)]
    folder = DVIDrafter(target, 1).save_adapter(tmp_path / "a")
    with pytest.raises(ValueError, match="adapter is for exit layer 1, this drafter exits at layer 2"):
        DVIDrafter(target, 2).load_adapter(folder)
    with pytest.raises(ValueError, match="adapter is for exit layer 1, this drafter exits at layer 2"):
        Composer(target, drafters={"d": f"dvi:2:{folder}"})
    with pytest.raises(ValueError, match="adapter shape"):
        DVIDrafter(target, 1, DVIConfig(rank=4)).load_adapter(folder)
    with pytest.raises(ValueError, match="learned for another target"):
        DVIDrafter(MODELS[("llama", 1)], 1).load_adapter(folder)
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(ValueError, match="is not 'specmux-dvi-adapter'"):
        DVIDrafter(target, 1).load_adapter(folder)
    (folder / "config.json").write_text(json.dumps(meta))
    (folder / "adapter.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="corrupt or not a safetensors file"):
        DVIDrafter(target, 1).load_adapter(folder)
