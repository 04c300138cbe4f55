"""What verifying a tree costs against a one-token forward: the default target in bf16 (or
--dtype float32, the path of CPUs without native bf16) after a random context, forwards of
1 / 16 / 32 / 64 rows (a random tree of that many nodes, depth <= 6, as the engine packs it:
positions context + depth, the ancestor mask), on 1 and 2 threads, the attention's AMX tile
path and its vector path interleaved in one process. Prints best and median
ms and the ratio to the one-token forward of the same path and threads (issue 21's goal: a
32-node tree <= 1.5x a one-token forward on one thread), with the load average.

    python benchmarks/bench_verify.py [--context 300] [--rows 1,16,32,64] [--threads 1,2] [--reps 15]
                                      [--dtype bfloat16]

The header names the linears' kernel (ours, or oneDNN's with SPECMUX_NATIVE_LINEAR=0): run it
once with each for an A/B of the linears (docs/results/avx2-2026-12-06).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def random_tree(n: int, g: torch.Generator, max_depth: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Parents (-1: a root's child of the context) and depths of a random tree in node order."""
    parents, depths = [-1], [0]
    for i in range(1, n):
        choices = [j for j in range(i) if depths[j] < max_depth - 1]
        p = choices[int(torch.randint(len(choices), (1,), generator=g))]
        parents.append(p)
        depths.append(depths[p] + 1)
    return torch.tensor(parents), torch.tensor(depths)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context", type=int, default=300)
    p.add_argument("--rows", default="1,16,32,64")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    args = p.parse_args()
    from compose import Composer
    from runtime import native, native_linear
    from trees import ancestor_matrix, attention_mask

    dec = Composer("smollm2-135m-instruct", drafters={}, dtype=args.dtype, threads=1).target.decoder
    vocab = int(dec.model.config.vocab_size)
    paths = {"tiles": contextlib.nullcontext} if native.tile_path() and args.dtype == "bfloat16" else {}
    paths["vectors"] = native.vector_path
    sizes = [int(r) for r in args.rows.split(",")]
    g = torch.Generator().manual_seed(0)
    cases = {}
    for n in sizes:
        parents, depths = random_tree(n, g)
        mask = attention_mask(ancestor_matrix(parents, depths), args.context, dec.dtype)
        cases[n] = (torch.randint(0, vocab, (n,), generator=g), args.context + depths, mask)
    prompt = torch.randint(0, vocab, (args.context,), generator=g)
    times: dict = {}
    loads = []
    with torch.inference_mode():
        for threads in map(int, args.threads.split(",")):
            torch.set_num_threads(threads)
            cache = dec.new_cache(args.context + max(sizes) + 1)
            dec.forward(prompt, torch.arange(args.context), cache, None)
            for rep in range(args.reps + 2):  # two warm-up rounds
                for name, path in paths.items():
                    with path():
                        for n, (ids, positions, mask) in cases.items():
                            t = time.perf_counter()
                            dec.forward(ids, positions, cache, mask if n > 1 else None)
                            cache.crop(args.context)  # (the forward joins its rows to the cache)
                            if rep >= 2:
                                times.setdefault((threads, name, n), []).append(time.perf_counter() - t)
            loads.append(os.getloadavg()[0])
    linears = "ours (runtime/linear_kernel.c)" if native_linear.native_dtype(dec.dtype) else "oneDNN's"
    print(f"{args.dtype} SmolLM2-135M after {args.context} tokens, linears on {linears} kernel, "
          f"{args.reps} interleaved reps, load average {min(loads):.2f}-{max(loads):.2f}\n")
    print("| threads | attention | rows | best ms | median ms | x one token (best / median) |")
    print("|---:|---|---:|---:|---:|---|")
    for (threads, name, n), ts in times.items():
        one = times[(threads, name, sizes[0])]
        print(f"| {threads} | {name} | {n} | {min(ts) * 1e3:.2f} | {statistics.median(ts) * 1e3:.2f} | "
              f"{min(ts) / min(one):.2f} / {statistics.median(ts) / statistics.median(one):.2f} |")


if __name__ == "__main__":
    main()
