"""Threads benchmark (issue 10): plain decoding speed of the default target with each thread
setting, on a quiet machine and beside one busy process (a one-core spin loop), in one run.
Each measurement runs in a fresh process (OMP_WAIT_POLICY is read at start-up).

    python benchmarks/bench_threads.py [--new-tokens 48] [--settings 1 2 auto 2:passive]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from prompts import PROMPTS, load_average  # noqa: E402

SPIN = "while True: pass"


@contextmanager
def one_core_busy(busy: bool = True):
    """Another process spinning on one core while the block runs (nothing when `busy` is False)."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def child(setting: str, new_tokens: int) -> None:
    from compose import Composer

    threads = setting.split(":")[0]
    composer = Composer("smollm2-135m-instruct", threads=threads if threads == "auto" else int(threads))
    ids = composer.encode([{"role": "user", "content": PROMPTS["facts"]}])
    composer.generate(ids, strategy="autoregressive", max_new_tokens=4)  # warm-up
    import torch

    result = composer.generate(ids, strategy="autoregressive", max_new_tokens=new_tokens)
    print(f"{result.stats.new_tokens / result.stats.total_time:.3f} {torch.get_num_threads()}")


def measure(setting: str, new_tokens: int, busy: bool) -> tuple[float, int]:
    env = dict(os.environ, SPECMUX_THREADS="none")
    env.pop("OMP_NUM_THREADS", None)
    if setting.endswith(":passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    with one_core_busy(busy):
        time.sleep(0.5 if busy else 0)
        out = subprocess.run([sys.executable, __file__, "--child", setting, "--new-tokens", str(new_tokens)],
                             env=env, capture_output=True, text=True, check=True).stdout.split()
    return float(out[-2]), int(out[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--settings", nargs="+", default=["1", "2", "auto", "2:passive"])
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        child(args.child, args.new_tokens)
        return
    print(f"cores: {len(os.sched_getaffinity(0))}; load average before: {load_average()}", flush=True)
    rows = []
    for setting in args.settings:
        quiet, q_threads = measure(setting, args.new_tokens, busy=False)
        busy, b_threads = measure(setting, args.new_tokens, busy=True)
        rows.append((setting, quiet, q_threads, busy, b_threads))
        print(f"  {setting}: quiet {quiet:.2f} tok/s ({q_threads} thr), busy {busy:.2f} tok/s ({b_threads} thr); "
              f"load {load_average()}", file=sys.stderr, flush=True)
    best_quiet = max(r[1] for r in rows)
    print(f"\n### plain decoding, SmolLM2-135M, {args.new_tokens} tokens, beside one busy process (a one-core spin loop)\n")
    print("| threads setting | quiet tok/s (threads used) | busy tok/s (threads used) | busy time / quiet time | quiet vs best quiet |")
    print("|---|---:|---:|---:|---:|")
    for setting, quiet, qt, busy, bt in rows:
        print(f"| {setting} | {quiet:.2f} ({qt}) | {busy:.2f} ({bt}) | {quiet / busy:.2f}x | {quiet / best_quiet:.2f} |")
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
