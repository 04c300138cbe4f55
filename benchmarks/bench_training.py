"""Drafter-training throughput on this machine: trained tokens/s of the suite's training step
(float32 vs bf16 autocast) and state-caching tokens/s (float32 target vs a bf16 copy), with the
load average beside every figure.

    python benchmarks/bench_training.py [--threads 2] [--steps 6] [--batch 8] [--seq 384]
        [--cache-records 16] [--parts train,cache] [--recipe suite|plain]

Data: real text, not random ids: ShareGPT conversations (a human turn and the ShareGPT answer)
through the target's chat template, cut to --seq tokens; the loss covers the answer (what the
suite trains), and "trained tokens" counts exactly those rows. The drafter is the shipped math
drafter's shape (eagle1, one layer, truncated 3,584-token head, 3-step unroll, AdamW), with the
suite's final recipe (RepSpec during training, `--recipe suite`) or without it (`plain`).
Training reads states from the cache (the suite's CPU path): each run times `train_drafter`
itself over --steps steps after --warmup untimed ones, from its own per-step log.
Run it alone: on 2 cores another busy process changes the figures several-fold.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drafters import assets  # noqa: E402
from drafters.cli import make_drafter_config  # noqa: E402
from drafters.corpus import chat_prompt_ids  # noqa: E402
from drafters.data import iter_sharegpt  # noqa: E402
from drafters.hidden_cache import cache_hidden_states, load_hidden_cache  # noqa: E402
from drafters.model import build_drafter_model  # noqa: E402
from drafters.precision import cpu_native_bf16  # noqa: E402
from drafters.train import TrainConfig, train_drafter  # noqa: E402


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def sharegpt_records(tokenizer, n: int, seq: int) -> list[dict]:
    """n conversations' first exchange with at least `seq` tokens, cut to `seq`."""
    out = []
    for rec in iter_sharegpt():
        turns = rec.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        user, answer = str(turns[0]["value"]), str(turns[1]["value"])
        prompt = chat_prompt_ids(tokenizer, user)
        if len(prompt) > seq // 2:
            continue
        ids = tokenizer.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                                            tokenize=True, return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        if len(ids) >= seq:
            out.append({"input_ids": ids[:seq], "prompt_len": len(prompt)})
        if len(out) == n:
            return out
    raise ValueError(f"ShareGPT gave only {len(out)} conversations of {seq}+ tokens")


def bench_cache(target, records, dtype, batch_tokens: int, folder: Path) -> dict:
    t0 = time.perf_counter()
    cache_hidden_states(target, records, [-1], folder, shard_records=len(records), dtype=dtype, compute_dtype=dtype,
                        batch_tokens=batch_tokens, progress=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(r["input_ids"]) for r in records)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "load": load()}


def bench_train(target, records, precision: str, args, work: Path) -> dict:
    cfg = TrainConfig(drafter="eagle1", head="truncated", draft_vocab_size=3584, loss="kl", unroll_steps=3,
                      step_weights=[1.0, 0.8, 0.64], lr=6e-4, warmup_steps=2, batch_size=args.batch, max_len=args.seq,
                      repspec="repspec" if args.recipe == "suite" else "off", precision=precision,
                      epochs=1000, max_steps=args.warmup + args.steps, checkpoint_every=10**6)
    dcfg = make_drafter_config(cfg, target)
    tokens = torch.cat([torch.as_tensor(r["input_ids"][r["prompt_len"]:]) for r in records])
    from drafters.heads import most_frequent_tokens

    torch.manual_seed(0)
    model = build_drafter_model(dcfg, target, most_frequent_tokens(tokens, dcfg.vocab_size, 3584)).float()
    train_drafter(model, target.get_output_embeddings().weight, records, cfg, work, progress=False)
    log = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    timed = log[args.warmup :]
    # each line's "time" is stamped after its step: the timed span is warm-up end -> last step
    seconds = timed[-1]["time"] - log[args.warmup - 1]["time"]
    trained = sum(r["tokens"] for r in timed[1:])
    processed = args.batch * (args.seq - 1) * (len(timed) - 1)
    return {"steps": len(timed) - 1, "seconds": seconds, "trained_per_s": trained / seconds,
            "processed_per_s": processed / seconds, "loss": [round(log[0]["loss"], 3), round(log[-1]["loss"], 3)],
            "load": load()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=384)
    p.add_argument("--steps", type=int, default=6, help="timed training steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cache-records", type=int, default=16, help="records whose states are timed (x --seq tokens)")
    p.add_argument("--cache-batch-tokens", type=int, default=4096)
    p.add_argument("--recipe", choices=("suite", "plain"), default="suite")
    p.add_argument("--parts", default="train,cache")
    p.add_argument("--precisions", default="float32,bfloat16")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    parts, precisions = args.parts.split(","), args.precisions.split(",")
    target, tokenizer = assets.load_target(args.target)
    target.eval().requires_grad_(False)
    n_train = args.batch * (args.warmup + args.steps)
    records = sharegpt_records(tokenizer, max(n_train, args.cache_records), args.seq)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU native bf16: {cpu_native_bf16()}, "
          f"{torch.backends.cpu.get_cpu_capability()}; {len(records)} ShareGPT records of {args.seq} tokens")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    with tempfile.TemporaryDirectory() as tmp:
        states = {}
        if "cache" in parts:
            print("\n| target states (layer -1) | tokens | seconds | tokens/s | load |\n|---|---:|---:|---:|---|")
            for prec in precisions:
                r = bench_cache(target, records[: args.cache_records], dtypes[prec], args.cache_batch_tokens,
                                Path(tmp) / f"bench-{prec}")
                print(f"| {prec} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | {r['load']} |", flush=True)
                states[prec] = load_hidden_cache(Path(tmp) / f"bench-{prec}")
            if len(states) == 2:
                a, b = (torch.cat([s["target_top"] for s in states[k]]) for k in precisions)
                print(f"\nbf16 vs float32 states: the target's argmax agrees on {float((a == b).float().mean()):.4f} "
                      "of the tokens")
        if "train" in parts:
            cache_dir = Path(tmp) / "train-states"
            cache_hidden_states(target, records[:n_train], [-1], cache_dir, shard_records=64, dtype=torch.bfloat16,
                                compute_dtype=torch.bfloat16, progress=False)
            train_records = load_hidden_cache(cache_dir)
            print(f"\n| drafter training ({args.recipe} recipe), batch {args.batch} x {args.seq} | steps | s/step | "
                  "trained tokens/s | all tokens/s | loss first -> last | load |\n|---|---:|---:|---:|---:|---|---|")
            for prec in precisions:
                r = bench_train(target, train_records, prec, args, Path(tmp) / f"train-{prec}")
                print(f"| {prec} | {r['steps']} | {r['seconds'] / r['steps']:.2f} | {r['trained_per_s']:,.0f} | "
                      f"{r['processed_per_s']:,.0f} | {r['loss'][0]} -> {r['loss'][1]} | {r['load']} |", flush=True)


if __name__ == "__main__":
    main()
