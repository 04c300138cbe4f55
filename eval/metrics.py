"""Metrics aggregated across prompts (docs/design.md "Measuring").

Everything pools the step logs of all turns in a group; nothing averages per-prompt ratios:
- τ = tokens emitted by verifier forwards (accepted drafts + the bonus token) / verifier forwards;
- per-depth acceptance: unconditional[d-1] = forwards that accepted >= d draft tokens / forwards,
  conditional[d-1] = the same / forwards that accepted >= d-1 (nan where none did);
- tokens/s = new tokens / decode seconds (prefill included); speed-up = a strategy's tokens/s over
  the autoregressive baseline's tokens/s on the same (prompt, temperature, seed) units;
- accepted-token share of a drafter = accepted draft tokens it proposed / accepted draft tokens (a
  token proposed by several drafters counts for each, so shares may sum above 1);
- routing share = verifier forwards whose tree came from a drafter / forwards with a routing choice;
- routing accuracy (analysis mode), per step = forwards whose chosen drafter was among the
  oracle's best there; per turn = turns whose most chosen drafter is among the drafters with the
  most draft tokens accepted over the turn's forwards (each drafter replayed alone at every one).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

from compose.types import NAN, mean_accepted_length, per_depth_acceptance
from compose.types import drafter_shares as shares_of_accepted

from .records import BASELINE, RunRecord, TurnLog
PHASES = ("prefill", "draft", "verify", "forward", "total")


def tau(turns: Iterable[TurnLog]) -> float:
    return mean_accepted_length(a for t in turns for a in t.accepted)


def drafter_shares(turns: Iterable[TurnLog]) -> dict[str, float]:
    turns = list(turns)
    counts: Counter[str] = Counter()
    for t in turns:
        counts.update(t.accepted_by)
    return shares_of_accepted(counts, sum(sum(t.accepted) for t in turns))


def routing_shares(turns: Iterable[TurnLog]) -> dict[str, float]:
    choices = Counter(d for t in turns for d in t.step_drafters if d is not None)
    total = sum(choices.values())
    return {name: choices[name] / total for name in sorted(choices)} if total else {}


def routing_accuracy(turns: Iterable[TurnLog]) -> dict[str, float] | None:
    """Against the oracle (analysis mode). Per step: the share of verifier forwards whose routed
    drafter was among the drafters that would have had the most tokens accepted there, the τ an
    oracle router would have reached on those forwards, and the τ the strategy reached on them.
    Per turn: the share of turns whose most chosen drafter (ties: the first chosen) is among the
    drafters with the most draft tokens accepted summed over the turn's analysed forwards."""
    correct = analysed = 0
    oracle_emitted = routed_emitted = 0
    turn_correct = turns_analysed = 0
    for t in turns:
        if not t.oracle:
            continue
        totals: Counter[str] = Counter()
        chosen_counts: Counter[str] = Counter()
        for chosen, accepted, options in zip(t.step_drafters, t.accepted, t.oracle):
            if chosen is None or chosen not in options:
                continue
            best = max(options.values())
            analysed += 1
            correct += options[chosen] == best
            oracle_emitted += best + 1
            routed_emitted += accepted + 1
            totals.update(options)
            chosen_counts[chosen] += 1
        if chosen_counts:
            turns_analysed += 1
            turn_correct += totals[chosen_counts.most_common(1)[0][0]] == max(totals.values())
    if not analysed:
        return None
    return {"steps": analysed, "accuracy": correct / analysed, "oracle_tau": oracle_emitted / analysed,
            "routed_tau": routed_emitted / analysed, "turns": turns_analysed,
            "turn_accuracy": turn_correct / turns_analysed}


def phase_seconds(turns: Iterable[TurnLog]) -> dict[str, float]:
    sums = dict.fromkeys(PHASES, 0.0)
    for t in turns:
        for phase in PHASES:
            sums[phase] += t.times.get(phase, 0.0)
    sums["other"] = max(0.0, sums["total"] - sum(sums[p] for p in PHASES if p != "total"))
    return sums


def tokens_per_second(records: Iterable[RunRecord]) -> float:
    tokens = seconds = 0.0
    for r in records:
        for t in r.turns:
            tokens += t.new_tokens
            seconds += t.times.get("total", 0.0)
    return tokens / seconds if seconds else NAN


def greedy_mismatches(records: Iterable[RunRecord]) -> tuple[int, list[dict]]:
    """Compare every greedy (T = 0) strategy record with the baseline record of its unit, turn by
    turn. Returns (records checked, mismatches); a missing baseline counts as a mismatch."""
    records = list(records)
    baselines = {r.unit: r for r in records if r.strategy == BASELINE}
    checked, failures = 0, []
    for r in records:
        if r.temperature != 0 or r.strategy == BASELINE:
            continue
        checked += 1
        base = baselines.get(r.unit)
        where = dict(benchmark=r.benchmark, prompt_id=r.prompt_id, strategy=r.strategy, temperature=r.temperature, seed=r.seed)
        if base is None:
            failures.append({**where, "turn": None, "problem": "no baseline record to compare with"})
            continue
        for turn, (got, want) in enumerate(zip(r.turns, base.turns)):
            if got.token_ids != want.token_ids:
                pos = next((i for i, (a, b) in enumerate(zip(got.token_ids, want.token_ids)) if a != b),
                           min(len(got.token_ids), len(want.token_ids)))
                failures.append({
                    **where, "turn": turn, "position": pos,
                    "baseline_token": want.token_ids[pos] if pos < len(want.token_ids) else None,
                    "strategy_token": got.token_ids[pos] if pos < len(got.token_ids) else None,
                    "problem": f"greedy output differs from the baseline at token {pos} of turn {turn + 1}",
                })
                break
        else:
            if len(r.turns) != len(base.turns):
                failures.append({**where, "turn": None, "problem": "different number of turns from the baseline"})
    return checked, failures


def aggregate(records: Sequence[RunRecord], baseline: Sequence[RunRecord], max_depth: int) -> dict:
    """Metrics of one strategy's records (one benchmark x temperature group, or pooled). `baseline`:
    baseline records; only those of the same units count for the speed-up."""
    turns = [t for r in records for t in r.turns]
    units = {r.unit for r in records}
    base = [b for b in baseline if b.unit in units]
    common = units & {b.unit for b in base}
    own_tps = tokens_per_second(records)
    base_tps = tokens_per_second(base)
    paired_tps = tokens_per_second([r for r in records if r.unit in common])
    times = phase_seconds(turns)
    new_tokens = sum(t.new_tokens for t in turns)
    steps = sum(len(t.accepted) for t in turns)
    return {
        "prompts": len(records),
        "turns": len(turns),
        "verifier_forwards": steps,
        "new_tokens": new_tokens,
        "tau": tau(turns),
        "mean_tree_size": sum(sum(t.tree_sizes) for t in turns) / steps if steps else NAN,
        "tokens_per_s": own_tps,
        "baseline_tokens_per_s": base_tps,
        "speedup": paired_tps / base_tps if common and base_tps and not math.isnan(base_tps) else NAN,
        "acceptance": per_depth_acceptance([a for t in turns for a in t.accepted], max_depth),
        "drafter_shares": drafter_shares(turns),
        "routing_shares": routing_shares(turns),
        "routing_log_counts": dict(sorted(Counter(c for t in turns for c in t.routing).items())),  # per step or per turn, as the strategy logs
        "routing_accuracy": routing_accuracy(turns),
        "phase_seconds": times,
        "ms_per_token": {p: 1000 * s / new_tokens for p, s in times.items()} if new_tokens else {},
        # drafting cost per verifier forward: what a router's probing costs next to one drafter's
        "draft_ms_per_forward": 1000 * times["draft"] / steps if steps else NAN,
    }


ALL_BENCHMARKS = "all"


def summary_rows(records: Sequence[RunRecord], max_depth: int) -> list[dict]:
    """One row per benchmark x temperature x strategy, plus pooled rows with benchmark "all";
    ordered by temperature, benchmark, then strategy (the baseline first)."""
    rows = []
    temperatures = sorted({r.temperature for r in records})
    benchmarks = list(dict.fromkeys(r.benchmark for r in records))
    strategies = list(dict.fromkeys([BASELINE] * any(r.strategy == BASELINE for r in records)
                                    + [r.strategy for r in records if r.strategy != BASELINE]))
    for temperature in temperatures:
        for bench in benchmarks + ([ALL_BENCHMARKS] if len(benchmarks) > 1 else []):
            group = [r for r in records if r.temperature == temperature and bench in (ALL_BENCHMARKS, r.benchmark)]
            baseline = [r for r in group if r.strategy == BASELINE]
            for strategy in strategies:
                mine = [r for r in group if r.strategy == strategy]
                if mine:
                    rows.append({"benchmark": bench, "temperature": temperature, "strategy": strategy,
                                 **aggregate(mine, baseline, max_depth)})
    return rows
