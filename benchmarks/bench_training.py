"""Drafter-training throughput on this machine: trained tokens/s of the suite's training step
(float32 vs bf16 autocast) and state-caching tokens/s (float32 target vs a bf16 copy), with the
load average beside every figure.

    python benchmarks/bench_training.py [--threads 2] [--steps 6] [--batch 8] [--seq 384]
        [--cache-records 16] [--parts train,cache] [--recipe plain|suite] [--drafter eagle1|eagle3]
        [--loss-path fused|plain] [--compile on|off|auto] [--work DIR]

Data: real text, not random ids: ShareGPT conversations (a human turn and the ShareGPT answer)
through the target's chat template, cut to --seq tokens; the loss covers the answer (what the
suite trains), and "trained tokens" counts exactly those rows. The drafter: one layer, truncated
3,584-token head, 3-step unroll, KL, AdamW; `--drafter eagle3` (the shipped drafters: features
from three target layers) or eagle1 (the last layer's state); RepSpec branches while training
(`--recipe suite`, the earlier suite recipe) or a plain layer (`plain`, what the shipped drafters
train). `--loss-path plain` takes the whole step's logits instead of the fused, blocked head and
loss (drafters/training/fused_head_loss.py), for comparison.
Training reads states from the cache (the suite's CPU path): each run times `train_drafter`
itself over --steps steps, resumed after --warmup untimed ones. Beside wall-clock figures it
prints tokens per CPU-second of this process, which other busy processes inflate far less (with
one thread, about what an idle core would give).
Run it alone: on 2 cores another busy process changes the figures several-fold.
`SPECMUX_KEEP_FREED_MEMORY=0` measures with glibc's default malloc (runtime/allocator.py; the
page faults column shows the difference).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import assets  # noqa: E402
from runtime.allocator import keep_freed_memory  # noqa: E402
from drafters.config import default_eagle3_layers  # noqa: E402
from drafters.training.cli import make_drafter_config  # noqa: E402
from drafters.training.corpus import chat_prompt_ids  # noqa: E402
from drafters.training.data import iter_sharegpt  # noqa: E402
from drafters.training.hidden_cache import cache_hidden_states, load_hidden_cache  # noqa: E402
from drafters.model import build_drafter_model  # noqa: E402
from drafters.training.precision import cpu_native_bf16  # noqa: E402
from drafters.training.train import TrainConfig, train_drafter  # noqa: E402


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
    t0, c0 = time.perf_counter(), time.process_time()
    cache_hidden_states(target, records, [-1], folder, shard_records=len(records), dtype=dtype, compute_dtype=dtype,
                        batch_tokens=batch_tokens, progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(len(r["input_ids"]) for r in records)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "per_cpu_s": tokens / cpu, "load": load()}


def bench_train(target, records, precision: str, args, work: Path) -> dict:
    # suite.json's recipe: lr 6e-4 after a 30-step warm-up (RepSpec diverges without one)
    cfg = TrainConfig(drafter=args.drafter, head="truncated", draft_vocab_size=3584, loss="kl", unroll_steps=3,
                      step_weights=[1.0, 0.8, 0.64], lr=6e-4, warmup_steps=30, batch_size=args.batch, max_len=args.seq,
                      repspec="repspec" if args.recipe == "suite" else "off", precision=precision,
                      epochs=1000, max_steps=args.warmup + args.steps, checkpoint_every=10**6, compile=args.compile)
    dcfg = make_drafter_config(cfg, target)
    tokens = torch.cat([torch.as_tensor(r["input_ids"][r["prompt_len"]:]) for r in records])
    from drafters.heads import most_frequent_tokens

    torch.manual_seed(0)
    model = build_drafter_model(dcfg, target, most_frequent_tokens(tokens, dcfg.vocab_size, 3584)).float()
    head = target.get_output_embeddings().weight
    # warm-up steps first (their checkpoint ends the run), then the timed steps resume from it,
    # timed around the call: wall seconds, and this process's CPU seconds, which a busy machine
    # inflates far less than wall time (one thread: about what an idle core would take)
    from drafters.training import train

    real = train.unroll_loss
    if args.loss_path == "plain":
        train.unroll_loss = lambda *a, **k: real(*a, **k, fused=False)
    try:
        train_drafter(model, head, records, cfg.model_copy(update={"max_steps": args.warmup}), work, progress=False)
        wall, cpu, faults = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        train_drafter(model, head, records, cfg, work, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    finally:
        train.unroll_loss = real
    log = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    timed = log[args.warmup :]
    trained = sum(r["tokens"] for r in timed)
    return {"steps": len(timed), "seconds": wall, "cpu_seconds": cpu, "trained_per_s": trained / wall,
            "trained_per_cpu_s": trained / cpu, "faults_per_step": faults / max(1, len(timed)), "processed_per_s": args.batch * (args.seq - 1) * len(timed) / wall,
            "loss": [round(log[0]["loss"], 4), round(log[-1]["loss"], 4)], "load": load()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=384)
    p.add_argument("--steps", type=int, default=6, help="timed training steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--train-records", type=int, default=32, help="records the training steps cycle over")
    p.add_argument("--cache-records", type=int, default=16, help="records whose states are timed (x --seq tokens)")
    p.add_argument("--cache-batch-tokens", type=int, default=4096)
    p.add_argument("--recipe", choices=("suite", "plain"), default="plain",
                   help="plain: the shipped (merged) drafter's layer; suite: RepSpec branches while training")
    p.add_argument("--drafter", choices=("eagle1", "eagle3"), default="eagle3",
                   help="eagle3: features from three target layers (the shipped drafters); eagle1: the last state")
    p.add_argument("--loss-path", choices=("fused", "plain"), default="fused",
                   help="fused: the KL loss through the blocked head (the default path); plain: whole-step logits")
    p.add_argument("--work", help="keep the training states here (reused by later runs) instead of a temporary folder")
    p.add_argument("--states", help="train on a suite state cache folder instead (real records, e.g. "
                   "$SPECMUX_HOME/suite/states/layers-2-15-27/chat_train): --train-records of them, seeded draw; "
                   "--seq is then the length cap, as the suite's max_len")
    p.add_argument("--parts", default="train,cache")
    p.add_argument("--compile", choices=("on", "off", "auto"), default="on",
                   help="the unroll's layer through torch.compile (TrainConfig.compile; 'auto' would skip it for a run this short)")
    p.add_argument("--precisions", default="float32,bfloat16")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    parts, precisions = args.parts.split(","), args.precisions.split(",")
    target, tokenizer = assets.load_target(args.target)
    target.eval().requires_grad_(False)
    n_train = max(args.train_records, args.batch)  # the steps cycle over them (epochs)
    # ShareGPT records of --seq tokens: the states benchmark's input, and training's unless --states gives it
    needed = max(args.cache_records if "cache" in parts else 0, 0 if args.states else n_train)
    records = sharegpt_records(tokenizer, needed, args.seq) if needed else []
    print(f"torch {torch.__version__}, {args.threads} threads, CPU native bf16: {cpu_native_bf16()}, "
          f"freed memory kept (runtime/allocator.py): {keep_freed_memory()}, "
          f"{torch.backends.cpu.get_cpu_capability()}; {len(records)} ShareGPT records of {args.seq} tokens")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    with tempfile.TemporaryDirectory() as tmp:
        keep = Path(args.work) if args.work else Path(tmp)
        states = {}
        if "cache" in parts:
            print("\n| target states (layer -1) | tokens | seconds | tokens/s | tokens per CPU-second | load |"
                  "\n|---|---:|---:|---:|---:|---|")
            for prec in precisions:
                r = bench_cache(target, records[: args.cache_records], dtypes[prec], args.cache_batch_tokens,
                                Path(tmp) / f"bench-{prec}")
                print(f"| {prec} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | {r['per_cpu_s']:,.0f} | "
                      f"{r['load']} |", flush=True)
                states[prec] = load_hidden_cache(Path(tmp) / f"bench-{prec}")
            if len(states) == 2:
                a, b = (torch.cat([s["target_top"] for s in states[k]]) for k in precisions)
                print(f"\nbf16 vs float32 states: the target's argmax agrees on {float((a == b).float().mean()):.4f} "
                      "of the tokens")
        if "train" in parts:
            layers = [-1] if args.drafter == "eagle1" else default_eagle3_layers(int(target.config.num_hidden_layers))
            if args.states:
                every = load_hidden_cache(args.states)
                train_records = [every[i] for i in random.Random(0).sample(range(len(every)), min(n_train, len(every)))]
                data = f"{len(train_records)} records of {args.states}"
            else:
                cache_dir = keep / f"train-states-{args.seq}-{args.drafter}"
                cache_hidden_states(target, records[:n_train], layers, cache_dir, shard_records=8, dtype=torch.bfloat16,
                                    compute_dtype=torch.bfloat16, on_change="rebuild", progress=False)
                train_records = load_hidden_cache(cache_dir)
                data = f"{len(train_records)} ShareGPT records"
            print(f"\n| {args.drafter} drafter training ({args.recipe} recipe, {args.loss_path} loss, compile {args.compile}), batch {args.batch} x {args.seq}, {data} | steps | s/step | "
                  "trained tokens/s | all tokens/s | trained tokens per CPU-second | page faults/step | loss first -> last | load |"
                  "\n|---|---:|---:|---:|---:|---:|---:|---|---|")
            for prec in precisions:
                r = bench_train(target, train_records, prec, args, Path(tmp) / f"train-{prec}")
                print(f"| {prec} | {r['steps']} | {r['seconds'] / r['steps']:.2f} | {r['trained_per_s']:,.0f} | "
                      f"{r['processed_per_s']:,.0f} | {r['trained_per_cpu_s']:,.0f} | {r['faults_per_step']:,.0f} | "
                      f"{r['loss'][0]} -> {r['loss'][1]} | "
                      f"{r['load']} |", flush=True)


if __name__ == "__main__":
    main()
