"""eval.metrics on hand-made step logs: τ, per-depth acceptance, shares, speed-up, greedy check,
routing accuracy. Every expected number is worked out by hand in the comments."""
from __future__ import annotations

import math

import pytest

from compose.types import GenerationResult, GenerationStats, StepRecord
from eval.metrics import (
    aggregate, drafter_shares, greedy_mismatches, per_depth_acceptance, routing_accuracy, routing_shares,
    summary_rows, tau,
)
from eval.records import RunRecord, TurnLog


def turn(accepted, drafters=None, accepted_by=None, tokens=None, total=1.0, new_tokens=None, oracle=None):
    steps = [
        StepRecord(accepted=a, tree_size=1 + 4 * (a > 0), drafter=(drafters or [None] * len(accepted))[i],
                   accepted_by=(accepted_by or [[["x"]] * a for a in accepted])[i], t_draft=0.1, t_forward=0.2)
        for i, a in enumerate(accepted)
    ]
    emitted = 1 + sum(a + 1 for a in accepted)  # the prefill's token, then every step's
    tokens = tokens if tokens is not None else list(range(emitted))
    stats = GenerationStats(strategy="s", steps=steps, prefill_time=0.05, total_time=total,
                            new_tokens=new_tokens if new_tokens is not None else len(tokens))
    log = TurnLog.from_result(GenerationResult(text="", token_ids=tokens, prompt_ids=[1, 2], finish_reason="length", stats=stats))
    log.oracle = oracle
    return log


def record(strategy, turns, prompt="p1", temperature=0.0, benchmark="b"):
    return RunRecord(benchmark=benchmark, prompt_id=prompt, strategy=strategy, temperature=temperature, seed=0,
                     turns=turns, wall_seconds=1.0, order=0, finished_at="2026-01-01T00:00:00+00:00")


def test_tau_counts_the_bonus_token_and_pools_steps_not_prompts():
    assert tau([turn([0, 2, 3, 1])]) == (1 + 3 + 4 + 2) / 4  # 2.5
    long_good, short_bad = turn([3, 3]), turn([0, 0, 0, 0, 0, 0])
    # pooled: (4 + 4 + 6 * 1) / 8 forwards = 1.75; the mean of per-prompt τ would be (4 + 1) / 2 = 2.5
    assert tau([long_good, short_bad]) == 14 / 8
    assert math.isnan(tau([turn([])]))


def test_per_depth_acceptance_unconditional_and_conditional():
    acc = per_depth_acceptance([0, 2, 3, 1], max_depth=5)
    # forwards reaching depth d: d0 4, d1 3, d2 2, d3 1, d4 0, d5 0
    assert acc["unconditional"] == [3 / 4, 2 / 4, 1 / 4, 0.0, 0.0]
    assert acc["conditional"][:4] == [3 / 4, 2 / 3, 1 / 2, 0.0]
    assert math.isnan(acc["conditional"][4])  # nobody reached depth 4


def test_drafter_and_routing_shares():
    a = turn([2, 1, 0], drafters=["math", "chat", "math"],
             accepted_by=[[["math"], ["math", "chat"]], [["chat"]], []])
    b = turn([1], drafters=[None], accepted_by=[[["chat"]]])
    # accepted draft tokens: 4; math proposed 2 of them, chat 3 (one token shared): shares may sum above 1
    assert drafter_shares([a, b]) == {"chat": 3 / 4, "math": 2 / 4}
    # routing: 3 forwards with a choice (None is not a choice): math 2, chat 1
    assert routing_shares([a, b]) == {"chat": 1 / 3, "math": 2 / 3}
    assert drafter_shares([turn([0, 0])]) == {} and routing_shares([turn([0])]) == {}


def test_speedup_is_a_ratio_of_pooled_tokens_per_second_on_the_same_units():
    fast = [record("s", [turn([1], tokens=[0] * 10, total=1.0)], prompt="p1"),
            record("s", [turn([1], tokens=[0] * 30, total=1.0)], prompt="p2")]
    base = [record("autoregressive", [turn([0], tokens=[0] * 10, total=2.0)], prompt="p1"),
            record("autoregressive", [turn([0], tokens=[0] * 30, total=4.0)], prompt="p2"),
            record("autoregressive", [turn([0], tokens=[0] * 99, total=1.0)], prompt="other")]  # not a unit of "s"
    row = aggregate(fast, base, max_depth=2)
    assert row["tokens_per_s"] == 40 / 2.0  # 20 tokens/s
    assert row["baseline_tokens_per_s"] == 40 / 6.0  # p1 and p2 only
    assert row["speedup"] == pytest.approx(3.0)
    assert row["new_tokens"] == 40 and row["verifier_forwards"] == 2 and row["tau"] == 2.0
    # phases are sums over turns: draft 0.1 and forward 0.2 per step
    assert row["phase_seconds"]["draft"] == pytest.approx(0.2) and row["phase_seconds"]["forward"] == pytest.approx(0.4)


def test_greedy_mismatch_is_found_with_its_position():
    base = record("autoregressive", [turn([0, 0], tokens=[5, 6, 7])])
    same = record("single:a", [turn([2], tokens=[5, 6, 7])])
    wrong = record("merged_tree", [turn([2], tokens=[5, 9, 7])])
    sampled = record("merged_tree", [turn([2], tokens=[1, 1, 1])], temperature=1.0)  # never compared
    checked, failures = greedy_mismatches([base, same, wrong, sampled])
    assert checked == 2
    assert len(failures) == 1
    f = failures[0]
    assert (f["strategy"], f["turn"], f["position"], f["baseline_token"], f["strategy_token"]) == ("merged_tree", 0, 1, 6, 9)
    # a shorter output is a mismatch at the first missing position; a missing baseline is a failure too
    _, failures = greedy_mismatches([base, record("s", [turn([0], tokens=[5, 6])])])
    assert failures[0]["position"] == 2
    _, failures = greedy_mismatches([record("s", [turn([0])], prompt="lonely")])
    assert failures[0]["problem"] == "no baseline record to compare with"


def test_routing_accuracy_against_the_oracle():
    t = turn([2, 0, 1], drafters=["a", "b", "a"],
             oracle=[{"a": 2, "b": 1}, {"a": 3, "b": 0}, {"a": 1, "b": 1}])
    # step 1: a is best (right); step 2: b chosen, a best (wrong); step 3: tie, a is among the best (right)
    result = routing_accuracy([t])
    assert result["steps"] == 3
    assert result["accuracy"] == 2 / 3
    assert result["oracle_tau"] == (3 + 4 + 2) / 3
    assert result["routed_tau"] == (3 + 1 + 2) / 3
    assert routing_accuracy([turn([1], drafters=["a"])]) is None  # no oracle: not analysed
    # per turn: the turn chose a most (2 of 3); over the turn a would have had 6 accepted, b 2: right
    assert result["turns"] == 1 and result["turn_accuracy"] == 1.0
    wrong = turn([0, 0], drafters=["b", "b"], oracle=[{"a": 1, "b": 0}, {"a": 0, "b": 0}])
    assert routing_accuracy([t, wrong])["turn_accuracy"] == 0.5


def test_summary_rows_pool_benchmarks_and_order_the_baseline_first():
    records = [record("s", [turn([1])], benchmark="x"), record("autoregressive", [turn([0])], benchmark="x"),
               record("s", [turn([3])], benchmark="y"), record("autoregressive", [turn([0])], benchmark="y")]
    rows = summary_rows(records, max_depth=3)
    assert [(r["benchmark"], r["strategy"]) for r in rows] == [
        ("x", "autoregressive"), ("x", "s"), ("y", "autoregressive"), ("y", "s"), ("all", "autoregressive"), ("all", "s")]
    pooled = rows[-1]
    assert pooled["tau"] == (2 + 4) / 2 and pooled["prompts"] == 2
    assert pooled["acceptance"]["unconditional"] == [1.0, 0.5, 0.5]
