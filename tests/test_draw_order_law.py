"""Rows of draws without replacement are verified in draw order (the j-th draw's q is only its
law after the earlier draws): a verifier that takes them last draw first is lossy, and the law
check of tests/test_trees_law.py sees it."""
from __future__ import annotations

import numpy as np
import torch

from test_trees_law import exact_root_law, only_root_table, root_case, total_variation, without_replacement_draws
from tree_law import SimDrafter, Verifier, assert_lossless, check_law, simulate_sampled
from trees import Proposals
from trees.verifying import TreeBatch, verify_batch


def reversed_rows(verifier: Verifier) -> Verifier:
    """Wrong: each node's proposal rows verified last draw first."""
    def wrong(batch, logits, spec, g):
        props = batch.proposals
        order = torch.from_numpy(np.lexsort((-np.arange(len(props)), props.parent.numpy())))
        rows = Proposals(parent=props.parent[order], child=props.child[order], q=props.q[order])
        return verifier(TreeBatch(batch.tokens, batch.parents, batch.depths, batch.starts, rows), logits, spec, g)
    return wrong


def test_draws_without_replacement_are_verified_in_draw_order():
    """The j-th draw without replacement came from q renormalised without the earlier draws, so
    its row is only a valid proposal after theirs: verified last draw first, the output law moves
    (TV 0.18 here), and the check sees it."""
    p, q = np.array([0.1, 0.2, 0.7]), np.array([0.6, 0.3, 0.1])
    draws = list(without_replacement_draws(q, 2))
    assert total_variation(exact_root_law(p, draws, "correct"), p) < 1e-12
    assert total_variation(exact_root_law(p, [(w, rows[::-1]) for w, rows in draws], "correct"), p) >= 0.15
    drafter = SimDrafter(kind="without", q=only_root_table(q, 3), count=2, expand=0.0)
    case = root_case(3, p.tolist(), lambda n, rng: simulate_sampled([drafter], 3, 1, n, rng))
    assert_lossless(check_law(verify_batch, case))
    wrong = check_law(reversed_rows(verify_batch), case)
    assert wrong.rejects, f"the law check missed rows verified out of draw order: {wrong}"
