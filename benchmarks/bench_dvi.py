"""dvi:K against plain decoding on a prompt stream: where a step's time goes, and what the exit
head's vocabulary and the tree shape do to the speed (issue 11: "a feature that makes decoding
slower is not done").

    python benchmarks/bench_dvi.py [--domain math] [--prompts 40] [--new-tokens 32] [--exit-layer 6]
        [--runs full:d3k3b8 draft:d3k3b8 draft:auto] [--threads 1]

A run is `<head>:<tree>`: head `full` (the target's 49k-token head), `draft` (the shipped
drafters' draft vocabulary, DVIConfig.draft_vocab="shipped") or `early-exit` (no learning);
tree `auto` (tree="auto") or dDkKbB (depth, top-k, budget). Every dvi run is a fresh learner
(the stream's learner settings: reward_missed) over the same prompts in stream order; runs are
interleaved prompt by prompt so load drift hits them alike, plain decoding runs on every prompt,
and every greedy output is checked against it. Per run: τ over the first and second half,
ms per step (draft, target forward, verify + learning), tokens/s and the ratio to plain decoding
over the whole stream and its second half (the learner is warmer there).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent))  # measure the checkout this script is in, not the installed copy
from prompts import load_average  # noqa: E402

from compose import Composer  # noqa: E402
from drafters.dvi import DVIConfig, DVIDrafter  # noqa: E402
from drafters.lm import EarlyExitDrafter  # noqa: E402
from drafters.dvi_learner import LearnConfig  # noqa: E402
from eval.stream import stream_prompts  # noqa: E402

AUTOREGRESSIVE = "autoregressive"


def parse_run(run: str) -> tuple[str, dict]:
    head, _, tree = run.partition(":")
    if head not in ("full", "draft", "early-exit"):
        raise SystemExit(f"run {run!r}: head must be full, draft or early-exit")
    if tree == "auto":
        return head, {"auto": True}
    m = re.fullmatch(r"d(\d+)k(\d+)b(\d+)", tree)
    if not m:
        raise SystemExit(f"run {run!r}: tree must be auto or dDkKbB, e.g. d3k3b8")
    return head, dict(depth=int(m[1]), top_k=int(m[2]), budget=int(m[3]))


def make_drafter(target, head: str, exit_layer: int):
    if head == "early-exit":
        return EarlyExitDrafter(target, exit_layer)
    config = DVIConfig(draft_vocab="shipped" if head == "draft" else "full", learning=LearnConfig(reward_missed=True))
    return DVIDrafter(target, exit_layer, config)


def summarise(recs: list[dict]) -> dict:
    steps = sum(r["steps"] for r in recs)
    return {"tau": sum(r["emitted"] for r in recs) / max(1, steps),
            "tokens_per_s": sum(r["tokens"] for r in recs) / max(1e-9, sum(r["seconds"] for r in recs)),
            **{k: 1e3 * sum(r[k] for r in recs) / max(1, steps) for k in ("draft", "forward", "verify", "learn")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domain", choices=["math", "chat"], default="math")
    p.add_argument("--prompts", type=int, default=40)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--exit-layer", type=int, default=6)
    p.add_argument("--runs", nargs="+", default=["full:d3k3b8", "draft:d3k3b8", "draft:auto"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = {run: parse_run(run) for run in args.runs}
    if sum(tree.get("auto", False) for _, tree in runs.values()) > 1:  # one Composer keeps one AutoTree per strategy
        raise SystemExit("at most one tree=auto run per invocation")
    prompts, _ = stream_prompts(args.domain, args.prompts)
    composer = Composer(threads=args.threads)
    target = composer.target.model
    drafters = {run: composer.add_drafter(run, make_drafter(target, head, args.exit_layer)) for run, (head, _) in runs.items()}
    options = dict(max_new_tokens=args.new_tokens, chat=True)
    for run, (_, tree) in runs.items():  # tree="auto" measures the machine on first use: not in the timings
        if tree.get("auto"):
            composer.generate(prompts[0], strategy="single", drafter=run, tree=tree, max_new_tokens=1, chat=True)
    load_start = load_average()
    print(f"dvi:{args.exit_layer} on {args.prompts} {args.domain} stream prompts, {args.new_tokens} new tokens, "
          f"{args.threads} thread(s); load average at start {load_start}", flush=True)
    records: dict[str, list[dict]] = {run: [] for run in [AUTOREGRESSIVE, *runs]}
    mismatches = []
    for i, prompt in enumerate(prompts):
        reference = composer.generate(prompt, strategy="autoregressive", **options)
        records[AUTOREGRESSIVE].append({"steps": len(reference.stats.steps), "emitted": len(reference.stats.steps),
                                        "tokens": len(reference.token_ids), "seconds": reference.stats.total_time,
                                        "draft": 0.0, "forward": sum(s.t_forward for s in reference.stats.steps),
                                        "verify": 0.0, "learn": 0.0})
        for run, (_, tree) in runs.items():
            drafter = drafters[run]
            learned = getattr(drafter, "learn_seconds", 0.0)
            result = composer.generate(prompt, strategy="single", drafter=run, tree=tree, **options)
            steps = result.stats.steps
            learn = getattr(drafter, "learn_seconds", 0.0) - learned
            records[run].append({"steps": len(steps), "emitted": sum(s.accepted + 1 for s in steps),
                                 "tokens": len(result.token_ids), "seconds": result.stats.total_time,
                                 "draft": sum(s.t_draft for s in steps), "forward": sum(s.t_forward for s in steps),
                                 "verify": sum(s.t_verify for s in steps) - learn, "learn": learn})
            if result.token_ids != reference.token_ids:
                mismatches.append((run, i))
    half = args.prompts // 2
    base = {part: summarise(records[AUTOREGRESSIVE][sl])["tokens_per_s"] for part, sl in
            (("all", slice(None)), ("late", slice(half, None)))}
    print(f"\n| run | τ first {half} | τ last {args.prompts - half} | draft ms/step | forward | verify | learning | "
          f"tokens/s | x autoregressive | x autoregressive, last {args.prompts - half} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run, recs in records.items():
        s, first, late = summarise(recs), summarise(recs[:half]), summarise(recs[half:])
        print(f"| {run} | {first['tau']:.3f} | {late['tau']:.3f} | {s['draft']:.1f} | {s['forward']:.1f} | "
              f"{s['verify']:.1f} | {s['learn']:.1f} | {s['tokens_per_s']:.2f} | {s['tokens_per_s'] / base['all']:.2f}x | "
              f"{late['tokens_per_s'] / base['late']:.2f}x |")
    print(f"\nload average at start {load_start}, at end {load_average()}; greedy mismatches against plain decoding: "
          f"{mismatches or 'none'}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
