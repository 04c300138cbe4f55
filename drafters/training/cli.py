"""`specmux train`: prompts -> target-regenerated corpus -> target states -> drafter -> checkpoint.

    specmux train --config train.json --domain chat --epochs 3
Every TrainConfig field is a flag (--unroll-steps 3, --target-layers '[2, 15, 27]'); flags
override the config file. Each stage resumes from what it already wrote under --work-dir.
Multi-GPU: `accelerate launch $(which specmux) train ...` (or torchrun with the same script);
training shards batches over the processes. Build the corpus and the state cache with one
process first (a plain run with --epochs 0 is not allowed, so use the same command once on one
GPU and interrupt it after "cache hidden states", or simply let it finish).

"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from pydantic import ValidationError

from drafters.checkpoint import save_drafter
from drafters.config import DrafterConfig
from drafters.heads import most_frequent_tokens
from drafters.model import build_drafter_model
from runtime import assets
from runtime.atomic import write_json, write_text

from .corpus import load_corpus, regenerate_corpus
from .data import domain_prompts, drop_overlapping, eval_prompts, overlap_report
from .hidden_cache import LiveTargetStates, cache_hidden_states, load_hidden_cache
from .train import TrainConfig, evaluate_drafter, train_drafter

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_config(argv: list[str] | None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="specmux train", description="train a specialist drafter for a target")
    parser.add_argument("--config", help="JSON file with TrainConfig fields")
    for name, field in TrainConfig.model_fields.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=field.description or None)
    args = parser.parse_args(argv)
    fields = {}
    if args.config:
        try:
            fields = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read config file {args.config}: {e}") from None
    for name in TrainConfig.model_fields:
        raw = getattr(args, name)
        if raw is not None:
            fields[name] = _parse_value(raw)
    try:
        return TrainConfig(**fields)
    except ValidationError as e:
        raise ValueError(f"invalid training config:\n{e}") from None


def _parse_value(raw: str):
    """JSON when it parses (numbers, lists, true/false, null), else the string itself."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def build_corpus(cfg: TrainConfig, model, tokenizer, work: Path) -> list[dict]:
    prompts = domain_prompts(cfg.domain, cfg.n_prompts, cfg.seed, cfg.mix_ratio)
    evals = eval_prompts()
    kept = drop_overlapping(prompts, evals)
    report = {"before_filter": overlap_report([p for _, p in prompts], evals),
              "after_filter": overlap_report([p for _, p in kept], evals),
              "dropped_prompts": len(prompts) - len(kept)}
    corpus_dir = work / "corpus"
    write_json(corpus_dir / "overlap.json", report)
    regenerate_corpus(model, tokenizer, kept, corpus_dir, cfg.regen_batch_size, cfg.max_new_tokens, seed=cfg.seed)
    return load_corpus(corpus_dir)


def make_drafter_config(cfg: TrainConfig, target) -> DrafterConfig:
    extra = {"repspec": cfg.repspec, "repspec_branches": cfg.repspec_branches}
    if cfg.head == "truncated":
        extra["draft_vocab_size"] = min(cfg.draft_vocab_size, int(target.config.vocab_size))
    if cfg.head == "lowrank" and cfg.head_rank:
        extra["head_rank"] = cfg.head_rank
    return DrafterConfig.from_target(target.config, cfg.target, style=cfg.drafter, head=cfg.head,
                                     target_layers=cfg.target_layers, **extra)


def run(cfg: TrainConfig, target, tokenizer, progress: bool = True) -> Path:
    work = Path(cfg.work_dir)
    write_text(work / "train_config.json", cfg.model_dump_json(indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    records = build_corpus(cfg, target, tokenizer, work)
    dcfg = make_drafter_config(cfg, target)
    draft_ids = None
    if dcfg.head == "truncated":
        tokens = torch.cat([torch.tensor(r["input_ids"]) for r in records])
        draft_ids = most_frequent_tokens(tokens, dcfg.vocab_size, dcfg.draft_vocab_size)
    torch.manual_seed(cfg.seed)
    model = build_drafter_model(dcfg, target, draft_ids)
    if cfg.features == "cache":
        dtype = DTYPES[cfg.feature_dtype]  # bf16 states come from a bf16 copy of the target (batched)
        cache_hidden_states(target, records, dcfg.target_layers, work / "states", dtype=dtype, compute_dtype=dtype)
        states = load_hidden_cache(work / "states", target)
    else:
        states = LiveTargetStates(target, records, dcfg.target_layers)
    head = target.get_output_embeddings().weight
    train_drafter(model, head, states, cfg, work, progress=progress)
    stats = evaluate_drafter(model, head, states, cfg)
    if cfg.repspec != "off":
        model.merge_repspec()
    out = Path(cfg.output or work / "drafter")
    save_drafter(model, out, target=target, dtype=DTYPES[cfg.save_dtype],
                 extra={"training": json.loads(cfg.model_dump_json()), "train_metrics": stats,
                        "corpus_records": len(records), "corpus_tokens": sum(len(r["input_ids"]) for r in records)})
    print(json.dumps({"checkpoint": str(out), **stats}, indent=2))
    return out


def main(argv: list[str] | None = None, load_target: Callable[[str], tuple] | None = None) -> int:
    """`specmux train`; `load_target` (name -> (model, tokenizer)) defaults to the built-in loader."""
    try:
        cfg = parse_config(argv)
    except ValueError as e:
        print(f"specmux train: {e}", file=sys.stderr)
        return 2
    model, tokenizer = (load_target or assets.load_target)(cfg.target)
    model.eval().requires_grad_(False)
    run(cfg, model, tokenizer)
    return 0
