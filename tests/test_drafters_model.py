"""Feature drafter runtime: KV cache compaction, tree masks, heads, config validation."""
import pytest
import torch

from drafter_fixtures import target_features, tiny_drafter_model, tiny_target
from drafters.config import DrafterConfig
from drafters.feature import FeatureDrafter
from trees import DraftTree
from trees.build import dense_logits


@pytest.fixture(scope="module")
def target():
    return tiny_target()


def _root_logits(drafter: FeatureDrafter, root: int) -> torch.Tensor:
    drafter.begin_tree(root)
    try:
        return dense_logits(drafter.step(DraftTree.root_only(root), torch.tensor([0])))
    finally:
        drafter.end_tree()


def _tree_logits(drafter: FeatureDrafter, tree: DraftTree, levels: list[list[int]]) -> dict[int, torch.Tensor]:
    """Feed a tree level by level (as trees.build_tree does); logits per fed node."""
    drafter.begin_tree(int(tree.tokens[0]))
    out = {}
    try:
        for level in levels:
            logits = dense_logits(drafter.step(tree, torch.tensor(level)))
            out.update(zip(level, logits))
    finally:
        drafter.end_tree()
    return out


@pytest.mark.parametrize("style", ["eagle1", "eagle3"])
def test_cache_after_advances_equals_fresh_start(target, style):
    model = tiny_drafter_model(target, style)
    layers = model.config.target_layers
    torch.manual_seed(3)
    seq = torch.randint(0, 96, (30,))
    feats = target_features(target, seq, layers)

    running = FeatureDrafter(model)
    running.start(seq[:6], feats[:6])
    pos = 6
    tree = DraftTree.from_lists([0, 5, 7, 9, 11], [-1, 0, 0, 1, 3])
    for accepted in (2, 0, 3, 1):  # draft a tree (its KV must be dropped), then commit a path
        tree.tokens[0] = seq[pos]
        _tree_logits(running, tree, [[0], [1, 2], [3], [4]])
        running.advance(seq[pos : pos + accepted + 1], feats[pos : pos + accepted + 1])
        pos += accepted + 1
    got = _root_logits(running, int(seq[pos]))

    fresh = FeatureDrafter(model)
    fresh.start(seq[:pos], feats[:pos])
    want = _root_logits(fresh, int(seq[pos]))
    assert running.cache.length == fresh.cache.length == pos - 1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style", ["eagle1", "eagle3"])
def test_tree_node_sees_only_its_ancestors(target, style):
    """A node's logits in a bushy tree equal its logits in the chain of its own path."""
    model = tiny_drafter_model(target, style)
    torch.manual_seed(4)
    seq = torch.randint(0, 96, (12,))
    feats = target_features(target, seq, model.config.target_layers)
    drafter = FeatureDrafter(model)
    drafter.start(seq[:11], feats[:11])
    root = int(seq[11])
    bushy = DraftTree.from_lists([root, 5, 7, 9, 11, 13], [-1, 0, 0, 1, 2, 4])
    chain = DraftTree.from_lists([root, 7, 11, 13], [-1, 0, 1, 2])
    b = _tree_logits(drafter, bushy, [[0], [1, 2], [3, 4], [5]])
    c = _tree_logits(drafter, chain, [[0], [1], [2], [3]])
    torch.testing.assert_close(b[5], c[3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b[4], c[2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(b[3], b[4])  # siblings' subtrees really differ
    assert drafter.cache.length == 10  # the tree's KV was dropped


def test_truncated_head_logits_live_on_the_draft_vocabulary(target):
    model = tiny_drafter_model(target, head="truncated")
    head = model.head
    ids = head.draft_ids
    assert torch.equal(head.t2d.nonzero().flatten(), ids)
    assert torch.equal(torch.arange(ids.numel()) + head.d2t, ids)
    seq = torch.randint(0, 96, (5,))
    drafter = FeatureDrafter(model)
    drafter.start(seq[:4], target_features(target, seq[:4], [-1]))
    logits = _root_logits(drafter, int(seq[4]))[0]
    assert torch.isinf(logits[~head.t2d]).all() and torch.isfinite(logits[head.t2d]).all()


def test_lowrank_head_from_svd_matches_full_rank_head(target):
    model = tiny_drafter_model(target, head="lowrank", head_rank=64)
    w = target.get_output_embeddings().weight
    h = torch.randn(3, 64)
    torch.testing.assert_close(model.head(h), h @ w.T, atol=1e-4, rtol=1e-4)


def test_config_rejects_inconsistent_shapes(target):
    with pytest.raises(ValueError, match="exactly one target layer"):
        DrafterConfig.from_target(target.config, "tiny", style="eagle1", target_layers=[1, 2, 3])
    with pytest.raises(ValueError, match="draft_vocab_size"):
        DrafterConfig.from_target(target.config, "tiny", head="truncated")
    with pytest.raises(ValueError, match="target layer 9"):
        DrafterConfig.from_target(target.config, "tiny", style="eagle3", target_layers=[1, 2, 9])


def test_wrong_feature_width_is_a_clear_error(target):
    drafter = FeatureDrafter(tiny_drafter_model(target))
    with pytest.raises(ValueError, match="target features of shape"):
        drafter.start(torch.tensor([1, 2, 3]), torch.zeros(3, 10))


@pytest.mark.parametrize("sampled", [False, True])
def test_propose_builds_a_valid_tree_and_leaves_only_committed_kv(target, sampled):
    from trees import SamplingSpec, TreeSpec

    model = tiny_drafter_model(target, head="truncated")
    seq = torch.randint(0, 96, (14,), generator=torch.Generator().manual_seed(8))
    drafter = FeatureDrafter(model)
    drafter.start(seq[:13], target_features(target, seq[:13], [-1]))
    spec = TreeSpec(depth=4, top_k=3, budget=10, sampled=sampled)
    sampling = SamplingSpec(temperature=1.0 if sampled else 0.0)
    trees = [drafter.propose(int(seq[13]), spec, sampling, torch.Generator().manual_seed(1)) for _ in range(2)]
    for tree in trees:
        tree.validate(vocab_size=96)
        assert len(tree) == 11 and int(tree.depths.max()) <= 4
        assert model.head.t2d[tree.tokens[1:]].all()  # drafts only inside the draft vocabulary
    assert drafter.cache.length == 12
    assert torch.equal(trees[0].tokens, trees[1].tokens)  # same state, same seed: same tree


def test_eagle3_layers_mean_the_same_in_vllm_and_transformers(target):
    from drafters.config import default_eagle3_layers

    for n in range(2, 41):
        layers = default_eagle3_layers(n)
        assert len(layers) >= 2 and layers == sorted(set(layers)) and 0 <= layers[0] and layers[-1] < n
    assert default_eagle3_layers(30) == [2, 15, 27]  # vLLM's default
    with pytest.raises(ValueError, match="strictly increasing"):
        DrafterConfig.from_target(target.config, "tiny", style="eagle3", target_layers=[3, 1, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        DrafterConfig.from_target(target.config, "tiny", style="eagle3", target_layers=[1, 1, 2])
    n = target.config.num_hidden_layers
    for final in (n, -1):  # the final state: pre-norm in vLLM, normed in transformers' hidden_states
        with pytest.raises(ValueError, match="final state"):
            DrafterConfig.from_target(target.config, "tiny", style="eagle3", target_layers=sorted([1, final]))
