"""Drafter benchmark (issue 4): cost of one draft level of the feature drafter (a forward over
the current frontier, head included) against one target forward over the same number of tokens,
both on top of the same context length, interleaved in one run. Compares the full (frozen
target), truncated and low-rank heads.

    python benchmarks/bench_drafters.py [--context 256] [--frontier 1 8 16] [--reps 30] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache

from drafters.assets import load_target
from drafters import DrafterConfig, FeatureDrafter, build_drafter_model
from drafters.kv import truncate_cache
from trees import DraftTree


def make_drafters(target, draft_vocab: int) -> dict[str, FeatureDrafter]:
    torch.manual_seed(0)
    out = {}
    for label, head in (("full", "target"), ("truncated", "truncated"), ("lowrank", "lowrank")):
        extra = {"draft_vocab_size": draft_vocab} if head == "truncated" else {}
        cfg = DrafterConfig.from_target(target.config, "smollm2-135m-instruct", style="eagle1", head=head, **extra)
        ids = torch.randperm(cfg.vocab_size)[:draft_vocab].sort().values if head == "truncated" else None
        out[label] = FeatureDrafter(build_drafter_model(cfg, target, ids).eval(), name=label)
    return out


def time_target(target, cache: DynamicCache, ctx: int, tokens: torch.Tensor) -> float:
    n = tokens.numel()
    t = time.perf_counter()
    target(tokens[None], past_key_values=cache, position_ids=torch.arange(ctx, ctx + n)[None], use_cache=True)
    dt = time.perf_counter() - t
    truncate_cache(cache, ctx)
    return dt


def time_draft_level(drafter: FeatureDrafter, root: int, level: DraftTree, frontier: torch.Tensor) -> float:
    drafter.begin_tree(root)
    drafter.step(level, torch.tensor([0]))  # the root (not timed): the level below is
    t = time.perf_counter()
    drafter.step(level, frontier)
    dt = time.perf_counter() - t
    drafter.end_tree()
    return dt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--frontier", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--draft-vocab", type=int, default=16384)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    target, _ = load_target("smollm2-135m-instruct")
    drafters = make_drafters(target, args.draft_vocab)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        prompt = torch.randint(0, target.config.vocab_size, (args.context,), generator=g)
        out = target(prompt[None], output_hidden_states=True, use_cache=True)
        cache = out.past_key_values
        for d in drafters.values():
            d.start(prompt, out.hidden_states[-1][0])
        root = int(out.logits[0, -1].argmax())
        rows = []
        for f in args.frontier:
            tokens = torch.randint(0, target.config.vocab_size, (f,), generator=g)
            level = DraftTree.from_lists([root] + tokens.tolist(), [-1] + [0] * f)
            frontier = torch.arange(1, f + 1)
            times = {k: [] for k in ["target", *drafters]}
            for _ in range(args.reps + 3):  # interleaved; the first 3 are warm-up
                times["target"].append(time_target(target, cache, args.context, tokens))
                for name, d in drafters.items():
                    times[name].append(time_draft_level(d, root, level, frontier))
            med = {k: statistics.median(v[3:]) * 1e3 for k, v in times.items()}
            rows.append((f, med))
    cfg = drafters["lowrank"].model.config
    print(f"SmolLM2-135M-Instruct, fp32, {torch.get_num_threads()} threads, context {args.context}, "
          f"median of {args.reps}; one-layer eagle1 drafter; truncated head {args.draft_vocab} tokens, "
          f"low-rank head rank {cfg.head_rank}")
    print("| frontier | target fwd ms | full head ms (ratio) | truncated ms (ratio) | low-rank ms (ratio) |")
    print("|---:|---:|---:|---:|---:|")
    for f, m in rows:
        t = m["target"]
        cells = " | ".join(f"{m[h]:.2f} ({m[h] / t:.1%})" for h in ("full", "truncated", "lowrank"))
        print(f"| {f} | {t:.2f} | {cells} |")


if __name__ == "__main__":
    main()
