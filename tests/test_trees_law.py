"""Losslessness of tree verification, by law: for a small vocabulary the target's law of the
first K emitted tokens is computed exactly, and the real verification's emitted tokens are
checked against it with a stated power (tests/tree_law.py explains the check). The same check
run against deliberately wrong verifiers must reject."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given

import trees.verifying as verify_module
from tree_law import (LAW_SETTINGS, POWER, TV, LawCase, SimDrafter, Verifier, assert_lossless, check_law,
                      deterministic_cases, n_paths, pool_batch, power_at, random_logits, required_samples,
                      sampled_cases, simulate_sampled, table_step_fn)
from trees import Proposals, SamplingSpec, TreeSpec, build_tree
from trees.verifying import TreeBatch, verify_batch


@LAW_SETTINGS
@given(deterministic_cases())
def test_match_rule_is_lossless_for_deterministic_children(case):
    assert_lossless(check_law(verify_batch, case))


@LAW_SETTINGS
@given(sampled_cases())
def test_rejection_sampling_is_lossless_for_sampled_children(case):
    assert_lossless(check_law(verify_batch, case))


# --- pitfalls, and the power shown on deliberately wrong verifiers ------------------------------
def exact_root_law(p: np.ndarray, draws: list[tuple[float, list[tuple[int, np.ndarray]]]], rule: str) -> np.ndarray:
    """Law of the first emitted token when the root's proposal rows are `draws` (a list of
    (probability, rows in order); a row = (token, q it was drawn from)) under a verifier rule:
    "correct" (recursive rejection), "drop_duplicates" (a repeated token's row is skipped) or
    "unnormalised" (the residual max(0, p - q) is not renormalised)."""
    law = np.zeros_like(p)
    for weight, rows in draws:
        cur, stay, seen = p.copy(), weight, set()
        for token, q in rows:
            if rule == "drop_duplicates" and token in seen:
                continue
            seen.add(token)
            accept = min(1.0, cur[token] / q[token])
            law[token] += stay * accept
            stay *= 1 - accept
            left = np.maximum(cur - q, 0)
            if stay == 0:
                break
            cur = left if rule == "unnormalised" else left / left.sum()
        if stay > 0:
            law += stay * cur / cur.sum()
    return law


def with_replacement_draws(q: np.ndarray, count: int):
    for seq in itertools.product(range(len(q)), repeat=count):
        weight = float(np.prod(q[list(seq)]))
        if weight > 0:
            yield weight, [(t, q) for t in seq]


def without_replacement_draws(q: np.ndarray, count: int):
    for seq in itertools.permutations(range(len(q)), count):
        weight, left, rows = 1.0, q.copy(), []
        for t in seq:
            row = left / left.sum()
            weight *= row[t]
            rows.append((t, row))
            left[t] = 0
        if weight > 0:
            yield weight, rows


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())


def root_case(vocab: int, p_root: list[float], draw_batch, seed: int = 7) -> LawCase:
    """Target: temperature 1, `p_root` at the root (-inf logits for zeros), random deeper rows."""
    logits = random_logits(vocab, 2, seed, 1.0)
    logits[0] = torch.tensor(p_root).log()
    return LawCase(vocab, 2, logits, SamplingSpec(temperature=1.0), draw_batch)


def only_root_table(q: list[float], vocab: int) -> np.ndarray:
    table = np.full((n_paths(vocab, 2), vocab), 1.0 / vocab)
    table[0] = q
    return table


def drop_duplicate_rows(verifier: Verifier) -> Verifier:
    """Wrong: a with-replacement duplicate (a second row for the same child) is dropped, so its
    residual update is lost."""
    def wrong(batch, logits, spec, g):
        props = batch.proposals
        _, first = np.unique(props.child.numpy(), return_index=True)
        keep = torch.from_numpy(np.sort(first))
        rows = Proposals(parent=props.parent[keep], child=props.child[keep], q=props.q[keep])
        return verifier(TreeBatch(batch.tokens, batch.parents, batch.depths, batch.starts, rows), logits, spec, g)
    return wrong


def ratio_test_on_top_k(q_table: np.ndarray, vocab: int) -> Verifier:
    """Wrong: top-k (deterministic) children verified with the p/q ratio, as if drawn from q."""
    def wrong(batch, logits, spec, g):
        child = (batch.parents >= 0).nonzero().flatten()
        ids = torch.zeros_like(batch.tokens)
        for d in range(1, int(batch.depths.max()) + 1):
            level = (batch.depths == d).nonzero().flatten()
            ids[level] = ids[batch.parents[level]] * vocab + batch.tokens[level] + 1
        parent = batch.parents[child]
        rows = Proposals(parent=parent, child=child, q=torch.from_numpy(q_table[ids[parent]]).float())
        return verify_batch(TreeBatch(batch.tokens, batch.parents, batch.depths, batch.starts, rows), logits, spec, g)
    return wrong


def unnormalised_residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Wrong: max(0, p - q) without renormalisation."""
    return (p - q).clamp(min=0)


@pytest.mark.parametrize("p, q, draws, bias", [
    ([0.4, 0.6, 0.0], [0.2, 0.0, 0.8], 3, 0.2),  # docs/design.md "Verification rules": TV ~0.2 on 3 tokens
    ([0.15, 0.55, 0.30], [0.45, 0.30, 0.25], 2, 0.0225),  # just above the 0.02 the check is sized for
])
def test_with_replacement_duplicates_keep_their_residual_update(p, q, draws, bias):
    """Draws with replacement from q: a duplicate draw is always rejected, but dropping its row
    (and with it its residual update) moves the output law; the check must see it."""
    p, q = np.array(p), np.array(q)
    enumerated = list(with_replacement_draws(q, draws))
    assert total_variation(exact_root_law(p, enumerated, "correct"), p) < 1e-12
    assert total_variation(exact_root_law(p, enumerated, "drop_duplicates"), p) >= bias
    drafter = SimDrafter(kind="with", q=only_root_table(q, 3), count=draws, expand=0.0)
    case = root_case(3, p.tolist(), lambda n, rng: simulate_sampled([drafter], 3, 1, n, rng))
    assert_lossless(check_law(verify_batch, case))
    wrong = check_law(drop_duplicate_rows(verify_batch), case)
    assert wrong.rejects, f"the law check missed a TV >= {bias} bias: {wrong}"


def test_residual_must_be_renormalised(monkeypatch):
    """Two draws without replacement; the second row's acceptance must use the renormalised
    residual (TV of the unnormalised variant ~0.2 here)."""
    p, q = np.array([0.75, 0.01, 0.24]), np.array([0.3, 0.0, 0.7])
    draws = list(without_replacement_draws(q, 2))
    assert total_variation(exact_root_law(p, draws, "correct"), p) < 1e-12
    assert total_variation(exact_root_law(p, draws, "unnormalised"), p) >= 0.1
    drafter = SimDrafter(kind="without", q=only_root_table(q, 3), count=2, expand=0.0)
    case = root_case(3, p.tolist(), lambda n, rng: simulate_sampled([drafter], 3, 1, n, rng))
    assert_lossless(check_law(verify_batch, case))
    monkeypatch.setattr(verify_module, "residual", unnormalised_residual)
    wrong = check_law(verify_batch, case)
    assert wrong.rejects, f"the law check missed an unnormalised residual: {wrong}"


def test_deterministic_children_use_the_match_rule_not_the_ratio():
    """Top-2 children of q = [.5, .3, .2] under target p = [.2, .3, .5]: the match rule is exact;
    the p/q ratio (as if the children were draws from q) emits token 0 with probability 0.4."""
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.5, 0.3, 0.2])
    rows = [(0, q), (1, q)]
    assert total_variation(exact_root_law(p, [(1.0, rows)], "correct"), p) >= 0.2
    q_table = only_root_table(q.tolist(), 3)
    tree = build_tree(0, table_step_fn(torch.from_numpy(np.log(q_table)).float(), 3), TreeSpec(depth=1, top_k=2, budget=2))
    assert tree.tokens.tolist() == [0, 0, 1]
    case = root_case(3, p.tolist(), lambda n, rng: pool_batch([tree], 3, n))
    assert_lossless(check_law(verify_batch, case))
    wrong = check_law(ratio_test_on_top_k(q_table, 3), case)
    assert wrong.rejects, f"the law check missed the ratio rule on deterministic children: {wrong}"


def test_sample_size_meets_the_power_requirement():
    """n from ncx2 gives power >= 0.99 at TV 0.02, and one sample fewer would not (minimality)."""
    for df in (1, 3, 8, 26):
        n = required_samples(df, TV)
        assert power_at(n, df, TV) >= POWER > power_at(n - 50, df, TV)

