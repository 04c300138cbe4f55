"""Engine benchmark (issue 3): greedy, 128 new tokens, the same prompts for every method,
interleaved prompt by prompt. Prints tokens/s and the ratio to our autoregressive decoder.

    python benchmarks/bench_engine.py [--pair default|qwen|both] [--new-tokens 128]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from prompts import add_common_args, apply_common_args  # noqa: E402

from compose import Composer  # noqa: E402
from runtime.assets import load_target  # noqa: E402


def hf_generate(model, ids, n, **kw):
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)
    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - t


def ours(composer, ids, n, **kw):
    r = composer.generate(ids[0], max_new_tokens=n, **kw)
    return r.token_ids, r.stats.total_time, r.stats.tau


def run_pair(title: str, target_name: str, drafters: dict, hf_assistant, n: int, tree: dict, prompts: dict):
    composer = Composer(target_name, drafters=drafters)
    model, tok = composer.target.model, composer.tokenizer
    methods = ["ours: autoregressive", "transformers generate", "transformers prompt lookup"]
    if hf_assistant is not None:
        methods.append("transformers assisted")
    methods += [f"ours: single {name}" for name in drafters]
    totals = {m: [0, 0.0, []] for m in methods}  # tokens, seconds, taus
    mismatches = []
    for pname, text in prompts.items():
        ids = composer.encode([{"role": "user", "content": text}])[None]
        ref, dt, tau = ours(composer, ids, n, strategy="autoregressive")
        runs = {"ours: autoregressive": (ref, dt, tau)}
        runs["transformers generate"] = (*hf_generate(model, ids, n), 1.0)
        runs["transformers prompt lookup"] = (*hf_generate(model, ids, n, prompt_lookup_num_tokens=10), float("nan"))
        if hf_assistant is not None:
            runs["transformers assisted"] = (*hf_generate(model, ids, n, assistant_model=hf_assistant), float("nan"))
        for name in drafters:
            runs[f"ours: single {name}"] = ours(composer, ids, n, strategy="single", drafter=name, tree=tree)
        for m, (toks, dt, tau) in runs.items():
            totals[m][0] += len(toks)
            totals[m][1] += dt
            totals[m][2].append(tau)
            if m.startswith("ours") and toks != ref[: len(toks)]:
                mismatches.append((m, pname))
        print(f"  [{title}] prompt {pname} done", file=sys.stderr, flush=True)
    base = totals["ours: autoregressive"][0] / totals["ours: autoregressive"][1]
    print(f"\n### {title} — greedy, {n} new tokens, {len(prompts)} prompts, tree {tree}\n")
    print("| method | tokens/s | ratio to ours AR | mean τ |")
    print("|---|---:|---:|---:|")
    for m, (toks, secs, taus) in totals.items():
        tps = toks / secs
        mean_tau = sum(taus) / len(taus)
        print(f"| {m} | {tps:.2f} | {tps / base:.2f}x | {mean_tau:.2f} |")
    print(f"\ngreedy token mismatches vs our autoregressive: {mismatches or 'none'}")
    return composer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pair", choices=["default", "qwen", "both"], default="both")
    p.add_argument("--new-tokens", type=int, default=128)
    add_common_args(p, depth=5, budget=16)
    args = p.parse_args()
    tree, prompts = apply_common_args(args)
    if args.pair in ("default", "both"):
        run_pair("SmolLM2-135M-Instruct + early exit", "smollm2-135m-instruct",
                 {"ee6": "early-exit:6", "ee12": "early-exit:12"}, None, args.new_tokens, tree, prompts)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\npeak resident memory of this process so far (default model runs): {peak_mb:.0f} MB")
    if args.pair in ("qwen", "both"):
        draft_model, _ = load_target("qwen2.5-coder-0.5b-instruct")
        run_pair("Qwen2.5-Coder-1.5B + 0.5B drafter", "qwen2.5-coder-1.5b-instruct",
                 {"lm0.5b": "lm:qwen2.5-coder-0.5b-instruct"}, draft_model, args.new_tokens, tree, prompts)


if __name__ == "__main__":
    main()
