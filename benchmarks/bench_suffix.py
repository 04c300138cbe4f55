"""Issue 22's benchmark: the suffix drafter alone and merged with the math + chat drafters, on the
composition benchmarks and on a repetitive workload, in one run with its own plain-decoding
baseline; every greedy output is checked against plain decoding.

    python benchmarks/bench_suffix.py [--items 2] [--new-tokens 64] [--threads 1]
        [--depth 6 --top-k 4 --budget 12] [--benchmarks gsm8k mtbench humaneval math code-edit] [--equal] [--auto]

Workloads: the first user turn of `--items` seeded items of each composition benchmark (eval's
datasets), and `code-edit`: HumanEval functions quoted whole (signature, docstring and canonical
body) with an instruction to rewrite them ("rewrite this function with type hints", ...), where
the answer repeats most of its prompt. Strategies, every one on the same prompts, the merges at
the same node budget per drafter (`sum`): autoregressive, single:suffix, merged_tree (math +
chat), merged_tree (math + chat + suffix). Tables: τ and speed-up over autoregressive per
workload; the suffix drafter's drafting cost per step (its propose + advance, median) as a share
of a one-token target forward (the median autoregressive step of the same run); the issue's goals.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent))  # measure the checkout this script is in
from prompts import PROMPTS, load_average, print_goals  # noqa: E402

from compose import Composer, default_drafters  # noqa: E402
from drafters.suffix import SuffixDrafter  # noqa: E402
from eval.datasets import load_benchmark, sample_items  # noqa: E402

COMPOSITION = ("gsm8k", "mtbench", "humaneval", "math")
REPETITIVE = "code-edit"
EDITS = ("with type hints on every argument and on the return value",
         "with a comment above every line that says what the line does",
         "with more descriptive names for its local variables",
         "so that it raises ValueError when an argument has the wrong type")
STRATEGIES = {  # label -> (strategy, drafter names, tree options)
    "autoregressive": ("autoregressive", (), {}),
    "single:suffix": ("single", ("suffix",), {}),
    "merged_tree (math+chat)": ("merged_tree", ("math", "chat"), {}),
    "merged_tree (math+chat+suffix)": ("merged_tree", ("math", "chat", "suffix"), {}),
}
EQUAL = {  # --equal: the union cut to one drafter's budget
    "merged_tree equal (math+chat)": ("merged_tree", ("math", "chat"), {"merge_budget": "equal"}),
    "merged_tree equal (math+chat+suffix)": ("merged_tree", ("math", "chat", "suffix"), {"merge_budget": "equal"}),
}


def code_edit_prompts(n: int) -> list[str]:
    """HumanEval functions quoted whole, each with a rewrite instruction."""
    prompts = []
    for i, item in enumerate(sample_items(load_benchmark("humaneval"), n, seed=1)):
        head = item.turns[0].split("```python\n", 1)[1].rsplit("```", 1)[0]
        prompts.append(f"Rewrite this Python function {EDITS[i % len(EDITS)]}. Reply with the complete function in one "
                       f"code block.\n\n```python\n{head}{item.reference or ''}```")
    return prompts


def workload_prompts(name: str, n: int) -> list[str]:
    if name == REPETITIVE:
        return code_edit_prompts(n)
    return [item.turns[0] for item in sample_items(load_benchmark(name), n, seed=0)]


class Timed:
    """Wraps the suffix drafter's propose and advance to time them per decode step."""

    def __init__(self, drafter: SuffixDrafter):
        self.ms: list[float] = []
        self._pending = 0.0
        for method in ("propose", "advance"):
            setattr(drafter, method, self._timed(getattr(drafter, method), method == "advance"))

    def _timed(self, fn, closes_step: bool):
        def call(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            self._pending += time.perf_counter() - t
            if closes_step:
                self.ms.append(1e3 * self._pending)
                self._pending = 0.0
            return out
        return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=2, help="prompts per workload")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--budget", type=int, default=12, help="draft nodes per drafter tree (merges: `sum`)")
    p.add_argument("--benchmarks", nargs="+", default=[*COMPOSITION, REPETITIVE])
    p.add_argument("--equal", action="store_true", help="also the `equal` merges (the union cut to one budget)")
    p.add_argument("--auto", action="store_true", help='tree="auto" instead of the fixed tree (each strategy sizes its own)')
    p.add_argument("--suffix-min-prob", type=float, default=None,
                   help="the suffix drafter's min_prob (default: the drafter's own)")
    args = p.parse_args()
    strategies = {**STRATEGIES, **(EQUAL if args.equal else {})}
    os.environ["SPECMUX_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}; load average at start {load_average()}", flush=True)
    base = Composer("smollm2-135m-instruct", drafters={**default_drafters("smollm2-135m-instruct"), "suffix": "suffix"},
                    threads=args.threads)
    if args.suffix_min_prob is not None:
        base.drafters["suffix"].min_prob = args.suffix_min_prob
    print(f"suffix drafter min_prob {base.drafters['suffix'].min_prob}", flush=True)
    missing = {"math", "chat"} - set(base.drafters)
    if missing:
        raise SystemExit(f"the shipped {sorted(missing)} drafters are missing (drafters/pretrained)")
    timer = Timed(base.drafters["suffix"])
    composers = {label: Composer(base.target.model, drafters={n: base.drafters[n] for n in names}, tokenizer=base.tokenizer,
                                 threads=args.threads) for label, (_, names, _) in strategies.items()}
    tree = dict(auto=True) if args.auto else dict(depth=args.depth, top_k=args.top_k, budget=args.budget)
    warm = base.encode([{"role": "user", "content": PROMPTS["code"]}])
    for label, (strategy, _, extra) in strategies.items():  # first calls (allocation, kernels) are not timed
        composers[label].generate(warm, strategy=strategy, max_new_tokens=16, tree={**tree, **extra})
    timer.ms.clear()

    results: dict[tuple[str, str], list] = {}  # (workload, label) -> [seconds, tokens, steps, emitted]
    ar_forward_ms: list[float] = []
    mismatches: list[str] = []
    for bench in args.benchmarks:
        for i, text in enumerate(workload_prompts(bench, args.items)):
            ids = base.encode([{"role": "user", "content": text}])
            reference = None
            for label, (strategy, _, extra) in strategies.items():  # interleaved prompt by prompt: load hits all alike
                r = composers[label].generate(ids, strategy=strategy, max_new_tokens=args.new_tokens, tree={**tree, **extra})
                s = r.stats
                acc = results.setdefault((bench, label), [0.0, 0, 0, 0])
                acc[0] += s.total_time
                acc[1] += s.new_tokens
                acc[2] += s.n_steps
                acc[3] += sum(st.accepted + 1 for st in s.steps)
                if label == "autoregressive":
                    reference = r.token_ids
                    ar_forward_ms += [1e3 * st.t_forward for st in s.steps]
                elif r.token_ids != reference:
                    mismatches.append(f"{label} on {bench} item {i}")
            print(f"  {bench} item {i} done (load {load_average()})", file=sys.stderr, flush=True)

    header = f"{args.items} item(s) per workload x {args.new_tokens} new tokens, greedy, tree {tree}"
    print(f"\n### τ / speed-up over autoregressive (same run), {header}; load average {load_average()}\n")
    benches = args.benchmarks
    print("| strategy | " + " | ".join(benches) + " |")
    print("|---|" + "---|" * len(benches))
    for label in strategies:
        cells = []
        for bench in benches:
            secs, toks, steps, emitted = results[(bench, label)]
            ar_secs, ar_toks, _, _ = results[(bench, "autoregressive")]
            cells.append(f"{emitted / steps:.2f} / {(toks / secs) / (ar_toks / ar_secs):.2f}x")
        print(f"| {label} | " + " | ".join(cells) + " |")

    forward = statistics.median(ar_forward_ms)
    cost = statistics.median(timer.ms) if timer.ms else float("nan")
    print(f"\n### suffix drafter's drafting cost per step (load average {load_average()})\n")
    print("| quantity | ms |")
    print("|---|---:|")
    print(f"| one-token target forward (median autoregressive step) | {forward:.2f} |")
    print(f"| suffix drafter propose + advance, median over {len(timer.ms)} steps | {cost:.3f} ({cost / forward:.2%}) |")
    print(f"| same, 90th percentile | {statistics.quantiles(timer.ms, n=10)[-1]:.3f} |" if len(timer.ms) > 1 else "")

    def tau(bench, label):
        _, _, steps, emitted = results[(bench, label)]
        return emitted / steps

    def speed(bench, label):
        secs, toks, _, _ = results[(bench, label)]
        ar_secs, ar_toks, _, _ = results[(bench, "autoregressive")]
        return (toks / secs) / (ar_toks / ar_secs)

    two, three = "merged_tree (math+chat)", "merged_tree (math+chat+suffix)"
    comp = [b for b in benches if b != REPETITIVE]
    goals = [("suffix drafter's drafting cost per step / one-token forward", f"{cost / forward:.2%}", "<= 2%", cost / forward <= 0.02)]
    if comp:
        ratio = statistics.mean(tau(b, three) for b in comp) / statistics.mean(tau(b, two) for b in comp)
        goals.append(("τ merged (math+chat+suffix) / merged (math+chat), composition benchmarks (mean τ)",
                      f"{ratio:.2f}", ">= 1.1", ratio >= 1.1))
    if REPETITIVE in benches:
        ratio = tau(REPETITIVE, three) / tau(REPETITIVE, two)
        goals.append((f"τ merged (math+chat+suffix) / merged (math+chat), {REPETITIVE}", f"{ratio:.2f}", ">= 1.5", ratio >= 1.5))
        alone = speed(REPETITIVE, "single:suffix")
        goals.append((f"single:suffix speed-up over autoregressive, {REPETITIVE}", f"{alone:.2f}x", ">= 1.3x", alone >= 1.3))
    worst = min(speed(b, three) / speed(b, two) for b in benches)
    goals.append(("speed merged (math+chat+suffix) / merged (math+chat), worst workload", f"{worst:.2f}", ">= 0.97",
                  worst >= 0.97))
    goals.append(("greedy outputs equal to plain decoding", f"{len(mismatches)} mismatches", "0", not mismatches))
    print(f"\n### goals (load average {load_average()})\n")
    print_goals(goals, mismatches)


if __name__ == "__main__":
    main()
