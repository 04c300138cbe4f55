"""Fixed benchmark prompts from different domains (chat messages; the chat template is applied),
and the flags every benchmark script shares."""
import argparse
import os

import torch

PROMPTS = {
    "math": "A train travels 120 km in 1.5 hours, then 80 km in 1 hour. What is its average speed? Show the steps.",
    "code": "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "chat": "What are three good habits for staying focused while working from home?",
    "summary": "Summarize in two sentences: The mitochondrion is an organelle found in most eukaryotic cells. "
               "It generates most of the cell's supply of adenosine triphosphate, used as a source of chemical energy.",
    "facts": "List the planets of the solar system in order from the Sun, with one fact about each.",
}


def add_common_args(p: argparse.ArgumentParser, depth: int, budget: int, top_k: int = 4) -> None:
    p.add_argument("--depth", type=int, default=depth)
    p.add_argument("--budget", type=int, default=budget)
    p.add_argument("--top-k", type=int, default=top_k)
    p.add_argument("--threads", default="1", help='torch intra-op threads: a number, or "auto" (compose/threads.py)')
    p.add_argument("--prompts", type=int, default=len(PROMPTS), help="use the first N benchmark prompts")


def apply_common_args(args: argparse.Namespace) -> tuple[dict, dict]:
    """Set torch threads; return (tree options, the prompts to run)."""
    os.environ["SPECMUX_THREADS"] = str(args.threads)  # what every Composer of the run uses
    if args.threads != "auto":
        torch.set_num_threads(int(args.threads))
    print(f"torch threads: {args.threads}")
    tree = dict(depth=args.depth, budget=args.budget, top_k=args.top_k)
    return tree, dict(list(PROMPTS.items())[: args.prompts])


def load_average() -> str:
    """`uptime`'s 1, 5 and 15 minute load averages, printed next to every timing."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_goals(goals: list[tuple[str, str, str, bool]], mismatches: list[str]) -> None:
    """An issue's goals as a markdown table (goal, measured, target, met), then any greedy mismatches."""
    print("| goal | measured | target | met |")
    print("|---|---:|---:|:---:|")
    for name, measured, target, met in goals:
        print(f"| {name} | {measured} | {target} | {'yes' if met else 'no'} |")
    if mismatches:
        print(f"\nmismatches: {mismatches}")
