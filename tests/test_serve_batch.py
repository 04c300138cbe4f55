"""Continuous batching (serve/batch.py, serve/scheduler.py): one target forward over several
requests' rows gives each request what its own forward gives; greedy output under any batch
equals single-stream plain decoding; a seeded request's sampled output does not depend on what
else is batched; a request failing inside decoding fails alone."""
from __future__ import annotations

import copy

import pytest
import torch

from compose import Composer
from runtime.decoder import Decoder
from drafters.lm import CausalLMDrafter, EarlyExitDrafter
from serve.batch import Segment, batchable, forward_segments
from serve.scheduler import BatchTrees, QueueFull, Scheduler
from serve.slot import Event, new_slot
from trees import DraftTree, pack_tree
from runtime import native_layer
from tiny_models import needs_native_bf16, tiny_model

TARGET = tiny_model("llama", vocab=96, layers=3, seed=1)


def composer(target=TARGET) -> Composer:
    lm = CausalLMDrafter(tiny_model("llama", vocab=96, layers=1, seed=8), 96, name="lm")
    return Composer(target, drafters={"ee": EarlyExitDrafter(target, 1), "lm": lm,
                                      "self": CausalLMDrafter(copy.deepcopy(target), 96, name="self")})


def reference_greedy(prompt: list[int], n: int) -> list[int]:
    out = TARGET.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(prompt):].tolist()


class Collector:
    def __init__(self):
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    @property
    def error(self):
        return next((e.error for e in self.events if e.kind == "error"), None)


UNCAPPED = BatchTrees(draft_max_batch=1000, row_budget=10_000)  # every request drafts its full tree


def run_batch(c: Composer, requests: list[tuple[list[int], str | None, dict]], max_batch: int = 8,
              trees: BatchTrees = UNCAPPED):
    """Submit every request at once and serve them to the end; -> (slots, collectors)."""
    scheduler = Scheduler(c, max_batch=max_batch, max_queue=len(requests), trees=trees)
    slots, sinks = [], []
    for prompt, strategy, options in requests:
        sink = Collector()
        slot = new_slot(c, prompt, strategy, sink, options)
        scheduler.submit(slot)
        slots.append(slot)
        sinks.append(sink)
    scheduler.run_until_idle()
    return slots, sinks


def test_batched_forward_equals_each_requests_own_forward():
    c = composer()
    decoder = c.target.decoder
    prompts = [[5, 9, 2, 7], [1, 2, 3], [40, 41, 42, 43, 44, 45]]
    alone, batched = [], []
    for p in prompts:  # prefill each cache alone, then one more forward over a small tree
        for out in (alone, batched):
            cache = decoder.new_cache(32)
            decoder.forward(torch.tensor(p), torch.arange(len(p)), cache, None)
            out.append(cache)
    tree = DraftTree.from_lists([3, 4, 5, 6], [-1, 0, 0, 1])  # branching: the mask matters
    segments = []
    for i, p in enumerate(prompts):
        packed = pack_tree(tree, len(p), decoder.dtype)
        ref = decoder.forward(packed.input_ids, packed.position_ids, alone[i], packed.attention_mask, (1, -1))
        segments.append((ref, Segment(packed.input_ids, packed.position_ids, batched[i], packed.attention_mask,
                                      None, (1, -1))))
    for (_, seg), cache in zip(segments, batched):
        seg.cache = copy.deepcopy(cache)
    check_segments(decoder, segments, alone)


@needs_native_bf16()
@pytest.mark.parametrize("hidden", [64, 128], ids=["op-by-op", "compiled-layer"])
def test_batched_bf16_forward_is_bit_identical_to_each_requests_own_forward(hidden):
    """A bf16 target batches too (its batch-invariant attention per request): every request's
    logits, hidden states and cache entries are the very bits its own forward computes. 128
    wide, on AMX: a request's own forward runs each layer in one compiled call, the batch
    around the attention per request (runtime/native_layer.py)."""
    target = tiny_model("llama", layers=2, seed=3, hidden=hidden).to(torch.bfloat16)
    decoder = Decoder(target)
    assert decoder.invariant and batchable(decoder)
    with torch.inference_mode():
        assert decoder.plan().fused == (hidden == 128 and native_layer.layer_kernel() is not None)
    prompts = [[5, 9, 2, 7], [1, 2, 3], [40, 41, 42, 43, 44, 45, 46, 47, 48]]
    tree = DraftTree.from_lists([3, 4, 5, 6, 7], [-1, 0, 0, 1, 2])
    refs, segments = [], []
    with torch.inference_mode():
        for p in prompts:
            own, shared = decoder.new_cache(32), decoder.new_cache(32)
            for cache in (own, shared):
                decoder.forward(torch.tensor(p), torch.arange(len(p)), cache, None)
            packed = pack_tree(tree, len(p), decoder.dtype)
            refs.append((decoder.forward(packed.input_ids, packed.position_ids, own, packed.attention_mask, (1, -1)), own))
            segments.append(Segment(packed.input_ids, packed.position_ids, shared, packed.attention_mask, None, (1, -1)))
        outs = forward_segments(decoder, segments)
    for (ref, own), out, seg in zip(refs, outs, segments):
        assert torch.equal(out.logits, ref.logits)
        assert all(torch.equal(out.hidden_states[i], ref.hidden_states[i]) for i in (1, -1))
        assert torch.equal(seg.cache.keys[:, :, :, : own.length], own.keys[:, :, :, : own.length])


def check_segments(decoder, segments, alone):
    outs = forward_segments(decoder, [s for _, s in segments])
    for (ref, seg), out, cache in zip(segments, outs, alone):
        torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
        for i in (1, -1):
            torch.testing.assert_close(out.hidden_states[i], ref.hidden_states[i], rtol=1e-5, atol=1e-5)
        assert seg.cache.length == cache.length
        torch.testing.assert_close(seg.cache.keys[:, :, :, : cache.length], cache.keys[:, :, :, : cache.length])


@pytest.mark.parametrize("trees", [UNCAPPED, BatchTrees(draft_max_batch=3, row_budget=12)], ids=["full", "capped"])
def test_greedy_batch_of_mixed_strategies_equals_plain_decoding(trees):
    c = composer()
    tree = dict(depth=3, top_k=2, budget=6)
    requests = [
        ([5, 9, 2, 7], "autoregressive", dict(max_new_tokens=17)),
        ([1, 2, 3], "single", dict(drafter="ee", max_new_tokens=23, tree=tree)),
        ([40, 41, 42, 43, 44, 45, 46, 47], "single", dict(drafter="lm", max_new_tokens=11, tree=tree)),
        ([7], "merged_tree", dict(max_new_tokens=20, tree=tree)),
        ([3, 3, 3, 3], "confidence", dict(max_new_tokens=15, tree=tree)),
        ([8, 1], "single", dict(drafter="self", max_new_tokens=19, tree=tree)),
    ]
    slots, sinks = run_batch(c, requests, max_batch=4, trees=trees)  # 4 at once: the last two join as others leave
    for (prompt, _, options), slot, sink in zip(requests, slots, sinks):
        assert sink.error is None
        assert slot.finish == "length"
        assert slot.tokens == reference_greedy(prompt, options["max_new_tokens"])
        assert sink.events[-1].kind == "done"
    assert sum(s.accepted for s in slots[5].stats.steps) > 0  # the perfect drafter was verified in the batch


@pytest.mark.parametrize("tree", [dict(depth=3, top_k=2, budget=5), dict(depth=3, top_k=2, budget=5, sampled=True)])
def test_seeded_sampling_does_not_depend_on_the_batch(tree):
    c = composer()
    options = dict(max_new_tokens=16, temperature=0.9, top_p=0.95, seed=1234, tree=tree)
    alone = c.generate([5, 9, 2], strategy="single", drafter="lm", **options).token_ids
    others = [([1, 2, 3, 4], "merged_tree", dict(max_new_tokens=12, temperature=1.0, seed=7, tree=tree)),
              ([9], "autoregressive", dict(max_new_tokens=30, temperature=0.7))]
    for batch in ([], others[:1], others):
        for trees in (UNCAPPED, BatchTrees(draft_max_batch=2, row_budget=4)):  # top-k trees cut, sampled ones kept
            slots, _ = run_batch(c, batch + [([5, 9, 2], "single", dict(drafter="lm", **options))], trees=trees)
            assert slots[-1].tokens == alone


class Broken(EarlyExitDrafter):
    def propose(self, *args, **kwargs):
        raise RuntimeError("drafter exploded")


def test_tree_caps_by_batch_size():
    trees = BatchTrees(draft_max_batch=4, row_budget=16)
    assert [trees.node_cap(b) for b in (1, 2, 3, 4, 5, 8)] == [None, 7, 4, 3, 0, 0]
    from serve.slot import cap_tree
    from trees import TreeSpec
    assert cap_tree(TreeSpec(5, 8, 32), 3) == TreeSpec(3, 3, 3)
    assert cap_tree(TreeSpec(5, 8, 32), 0) is None
    assert cap_tree(TreeSpec(5, 8, 32, sampled=True), 0) == TreeSpec(5, 8, 32, sampled=True)


def test_a_request_failing_inside_decoding_fails_alone():
    c = composer()
    c.add_drafter("broken", Broken(TARGET, 1))
    requests = [([5, 9, 2, 7], "single", dict(drafter="ee", max_new_tokens=12)),
                ([1, 2], "single", dict(drafter="broken", max_new_tokens=12)),
                ([4, 4], "autoregressive", dict(max_new_tokens=9))]
    slots, sinks = run_batch(c, requests)
    assert sinks[1].error is not None and sinks[1].error.status == 500
    assert "drafter exploded" in str(sinks[1].error)
    for i in (0, 2):
        assert sinks[i].error is None
        assert slots[i].tokens == reference_greedy(requests[i][0], requests[i][2]["max_new_tokens"])


def test_cancelled_request_leaves_the_batch():
    c = composer()
    scheduler = Scheduler(c, max_batch=2, max_queue=0)
    keep = new_slot(c, [5, 9], "autoregressive", Collector(), dict(max_new_tokens=10))
    gone = new_slot(c, [1, 2], "autoregressive", Collector(), dict(max_new_tokens=400))
    scheduler.submit(keep)
    scheduler.submit(gone)
    with pytest.raises(QueueFull):
        scheduler.submit(new_slot(c, [3], None, Collector(), dict(max_new_tokens=3)))
    gone.cancelled = True
    scheduler.run_until_idle()
    assert gone.finish == "cancelled" and len(gone.tokens) <= 1
    assert keep.tokens == reference_greedy([5, 9], 10)


def test_bad_requests_are_refused_before_queueing():
    c = composer()
    sink = Collector()
    with pytest.raises(ValueError, match="unknown strategy"):
        new_slot(c, [1], "fastest", sink, {})
    with pytest.raises(ValueError, match="unknown drafter"):
        new_slot(c, [1], "single", sink, dict(drafter="nope"))
    with pytest.raises(ValueError, match="context"):
        new_slot(c, list(range(90)) * 6, None, sink, {})
    with pytest.raises(ValueError, match="max_new_tokens"):
        new_slot(c, [1], None, sink, dict(max_new_tokens=0))


def test_a_top_k_trees_shape_never_changes_a_seeded_output():
    """Why the scheduler may cut top-k trees by batch size: each emitted token is the inverse CDF
    of one uniform of the request's generator at its own prefix, drafted or not."""
    c = composer()
    for seed in range(5):
        kw = dict(max_new_tokens=15, temperature=1.0, top_p=0.9, seed=seed)
        plain = c.generate([5, 9, 2], strategy="autoregressive", **kw).token_ids
        for tree in (dict(depth=1, top_k=1, budget=1), dict(depth=4, top_k=3, budget=12)):
            assert c.generate([5, 9, 2], strategy="single", drafter="self", tree=tree, **kw).token_ids == plain
            assert c.generate([5, 9, 2], strategy="merged_tree", tree=tree, **kw).token_ids == plain


def test_feature_drafters_in_lockstep_serve_concurrent_requests():
    """Two feature drafters of one architecture draft as a lockstep group (one stacked model);
    each request gets its own copy of the group's state, so concurrent requests stay exact."""
    from drafter_fixtures import tiny_drafter_model
    from drafters import FeatureDrafter

    c = Composer(TARGET, drafters={f"f{i}": FeatureDrafter(tiny_drafter_model(TARGET, "eagle3", seed=20 + i), name=f"f{i}")
                                   for i in range(2)})
    tree = dict(depth=3, top_k=2, budget=6)
    requests = [([5, 9, 2, 7], "merged_tree", dict(max_new_tokens=14, tree=tree)),
                ([1, 2, 3], "confidence", dict(max_new_tokens=18, tree=tree, calibrated=False)),  # no shared fits
                ([40, 41], "single", dict(drafter="f1", max_new_tokens=11, tree=tree)),
                ([6, 6, 6], "merged_tree", dict(max_new_tokens=16, tree=tree))]
    slots, sinks = run_batch(c, requests, max_batch=4)
    for request, slot, sink in zip(requests, slots, sinks):
        assert sink.error is None
        assert slot.tokens == reference_greedy(request[0], request[2]["max_new_tokens"])
        # the same drafts as alone (greedy output alone cannot tell: verification repairs any draft)
        alone, _ = run_batch(c, [request])
        assert slot.stats.accept_lengths == alone[0].stats.accept_lengths


def test_row_buckets_are_few_and_tight():
    from runtime.prepacked import bucket  # what the batched forward pads to (serve/batch.py)

    sizes = {bucket(n) for n in range(1, 4097)}
    assert all(bucket(n) >= n for n in range(1, 4097)) and [bucket(n) for n in range(1, 65)] == list(range(1, 65))
    # exact up to 64 rows, then four sizes per doubling (6 doublings to 4096), under 1/4 padding
    assert len(sizes) == 64 + 4 * 6 and all(bucket(n) - n < n // 4 for n in range(65, 4097))


def test_served_requests_leave_nothing_behind():
    """Memory stays flat over a long run: once its client has its answer, nothing of a request
    (slot, cache, drafter state, tensors) is held by the scheduler, and the cache pool and the
    tree policy's history stay bounded whatever the number of requests."""
    import gc
    import weakref

    c = composer()
    scheduler = Scheduler(c, max_batch=3, max_queue=40, trees=BatchTrees(draft_max_batch=3, row_budget=12))
    refs = []
    for i in range(24):  # every strategy, several prompt lengths, greedy and seeded sampling
        strategy = ("autoregressive", "merged_tree", "confidence")[i % 3]
        slot = new_slot(c, list(range(1, 2 + i % 7)), strategy, Collector(),
                        dict(max_new_tokens=5 + i % 4, tree="auto" if i % 2 else dict(depth=2, top_k=2, budget=4),
                             **({"temperature": 0.8, "seed": i} if i % 4 == 3 else {})))
        scheduler.submit(slot)
        refs.append(weakref.ref(slot))
        del slot
        if i % 5 == 4:
            scheduler.run_until_idle()
    scheduler.run_until_idle()
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert len(scheduler.caches._free) <= scheduler.max_batch


def test_trimmer_asks_glibc_at_most_once_per_interval():
    from serve import memory

    calls = []

    class FakeLibc:
        def malloc_trim(self, pad):
            calls.append(pad)

    trimmer = memory.Trimmer(interval=3600)
    trimmer._libc = FakeLibc()
    assert trimmer.maybe_trim() and not trimmer.maybe_trim() and calls == [0]
    trimmer.interval = 0
    assert trimmer.maybe_trim() and calls == [0, 0]
    if memory._libc() is not None:  # the real one runs
        assert memory.Trimmer(interval=0).maybe_trim()

