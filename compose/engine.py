"""The decode loop (docs/design.md "Data flow of one decode step"):
prefill -> [draft -> pack -> one target forward -> verify -> compact cache -> advance] ..."""
from __future__ import annotations

import time
from typing import Iterator

import torch

from trees import (DraftTree, SamplingSpec, StepFeedback, TreeSpec, pack_tree, process_logits, require_finite_logits,
                   sample, verify)

from .autotree import AutoTree
from .strategies import Proposal, Strategy
from .target import TargetModel
from .threads import ThreadPolicy
from .types import GenerationStats, StepRecord


def decode(
    target: TargetModel,
    strategy: Strategy,
    prompt_ids: torch.Tensor,
    tree: TreeSpec | AutoTree,
    sampling: SamplingSpec,
    stats: GenerationStats,
    generator: torch.Generator | None = None,
    capacity: int = 0,
    threads: ThreadPolicy | None = None,
) -> Iterator[list[int]]:
    """Yield the tokens emitted by each target forward (the first after prefill, then
    accepted drafts + bonus per step). Runs until the consumer stops iterating. `capacity`:
    the cache positions the run is expected to need (the cache grows past it if needed).
    `tree`: a fixed tree shape, or an AutoTree choosing each step's (None: verify the root alone,
    no drafting) and learning from each verification. `threads`: sets torch's threads at the
    start and as the run goes (compose/threads.py)."""
    auto = tree if isinstance(tree, AutoTree) else None
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
            spec = auto.choose() if auto is not None else tree
            if spec is None:
                proposal = Proposal(DraftTree.root_only(root))
            else:
                proposal = strategy.propose(root, spec, sampling, generator)
            t1 = time.perf_counter()
            prefix_len = target.cached
            packed = pack_tree(proposal.tree, prefix_len, target.dtype)
            t2 = time.perf_counter()
            out = target.forward_tree(packed, layers)
            t3 = time.perf_counter()
            result = verify(proposal.tree, out.logits, sampling, generator)
            target.keep_path(prefix_len, result.path)
            strategy.advance(result.tokens, out.hidden_states, result.path)
            strategy.observe(StepFeedback(
                tree=proposal.tree, path=result.path, tokens=result.tokens, bonus=result.bonus, logits=out.logits,
                sampling=sampling, proposed=proposal.proposed, hidden_states=out.hidden_states, prefix_length=prefix_len))
            t4 = time.perf_counter()
            if auto is not None:
                auto.observe(spec, proposal.tree, result.path, t1 - t0, t3 - t2, (t2 - t1) + (t4 - t3))

            path = result.path.tolist()
            stats.steps.append(
                StepRecord(
                    accepted=result.accepted,
                    tree_size=len(proposal.tree),
                    drafter=proposal.drafter,
                    accepted_by=[sorted(proposal.tree.proposers_of(n)) for n in path[1:]],
                    draft_groups=proposal.draft_groups if proposal.draft_groups is not None
                    else [[n] for n in proposal.proposed],
                    t_draft=t1 - t0,
                    t_verify=(t2 - t1) + (t4 - t3),
                    t_forward=t3 - t2,
                )
            )
            root = result.bonus
            yield result.tokens[1:].tolist() + [root]
