"""The decode loop (docs/design.md "Data flow of one decode step"):
prefill -> [draft -> pack -> one target forward -> verify -> compact cache -> advance] ..."""
from __future__ import annotations

import time
from typing import Iterator

import torch

from trees import DraftTree, SamplingSpec, StepFeedback, pack_tree, process_logits, require_finite_logits, sample, verify

from .strategies import ComposedTree, Strategy
from .target import TargetModel
from .threads import ThreadPolicy
from .tree_policy import StepTimes, TreePolicy
from .types import GenerationStats, StepRecord


def decode(
    target: TargetModel,
    strategy: Strategy,
    prompt_ids: torch.Tensor,
    tree_policy: TreePolicy,
    sampling: SamplingSpec,
    stats: GenerationStats,
    generator: torch.Generator | None = None,
    capacity: int = 0,
    threads: ThreadPolicy | None = None,
) -> Iterator[list[int]]:
    """Yield the tokens emitted by each target forward (the first after prefill, then
    accepted drafts + bonus per step). Runs until the consumer stops iterating. `capacity`:
    the cache positions the run is expected to need (the cache grows past it if needed).
    `tree_policy` chooses each step's tree shape (None: verify the root alone, no drafting) and
    learns from each verification (compose/tree_policy.py). `threads`: sets torch's threads at the
    start and as the run goes (compose/threads.py)."""
    layers = strategy.target_layers
    threads = threads or ThreadPolicy(None)
    with torch.inference_mode():
        threads.apply()
        t0 = time.perf_counter()
        out = target.prefill(prompt_ids, layers, capacity)
        require_finite_logits(out.logits[-1:], "the target's prefill forward")
        root = int(sample(process_logits(out.logits[-1], sampling), generator))
        strategy.start(prompt_ids, out.hidden_states)
        stats.prefill_time = time.perf_counter() - t0
        yield [root]

        while True:
            threads.apply()
            t0 = time.perf_counter()
            spec = tree_policy.choose()
            if spec is None:
                composed = ComposedTree(DraftTree.root_only(root))
            else:
                composed = strategy.compose_tree(root, spec, sampling, generator)
            t1 = time.perf_counter()
            prefix_len = target.cached
            packed = pack_tree(composed.tree, prefix_len, target.dtype)
            t2 = time.perf_counter()
            out = target.forward_tree(packed, layers)
            t3 = time.perf_counter()
            result = verify(composed.tree, out.logits, sampling, generator)
            target.keep_path(prefix_len, result.path)
            strategy.advance(result.tokens, out.hidden_states, result.path)
            strategy.observe(StepFeedback(
                tree=composed.tree, path=result.path, tokens=result.tokens, bonus=result.bonus, logits=out.logits,
                sampling=sampling, drafter_trees=composed.drafter_trees, hidden_states=out.hidden_states, prefix_length=prefix_len))
            t4 = time.perf_counter()
            tree_policy.observe(spec, composed.tree, result.path, StepTimes(t1 - t0, t3 - t2, (t2 - t1) + (t4 - t3)))

            path = result.path.tolist()
            stats.steps.append(
                StepRecord(
                    accepted=result.accepted,
                    tree_size=len(composed.tree),
                    drafter=composed.drafter,
                    accepted_by=[sorted(composed.tree.proposers_of(n)) for n in path[1:]],
                    draft_groups=composed.draft_groups if composed.draft_groups is not None
                    else [[n] for n in composed.drafter_trees],
                    t_draft=t1 - t0,
                    t_verify=(t2 - t1) + (t4 - t3),
                    t_forward=t3 - t2,
                )
            )
            root = result.bonus
            yield result.tokens[1:].tolist() + [root]
