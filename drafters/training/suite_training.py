"""Training one drafter of the suite (drafters/training/suite.py) and the target states it reads.

States come from one of two places (`SuiteConfig.states`):
  cache   the target's states for every record of the corpus, computed once per layer set by a
          copy of the target in `states_dtype` (bf16 on a CPU with bf16 matrix units), stored
          under work_dir/states/<layer set>/<split set> (drafters/training/hidden_cache.py: sharded,
          memory-mapped, resumable, rebuilt when the target, the records or the dtype change);
          every ablation and final of that layer set reads the same cache, `mixed` included
          (its records are views of the math and chat sets' shards). The CPU default.
  online  one batched target forward per training step (the GPU default: there the forward is
          cheaper than reading states from disk).
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch

from drafters.heads import most_frequent_tokens
from .hidden_cache import cache_hidden_states, load_hidden_cache
from drafters.model import build_drafter_model
from .precision import compute_dtype
from .train import TrainConfig, evaluate_drafter, train_drafter

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def mixed_train(split: dict[str, list], seed: int) -> list:
    """Every math and every chat training record, shuffled: the tokens the two specialists are
    trained on together, so `mixed` is compared with them like with like (issue 20). Which
    records go where depends only on the sets' lengths and the seed, so the same draw from a
    parallel split (records with cached states) gives the same records."""
    out = list(split["math_train"]) + list(split["chat_train"])
    random.Random(seed).shuffle(out)
    return out


def train_set(split: dict[str, list], name: str, seed: int) -> list:
    """The training records of `name` (math, chat or mixed)."""
    return mixed_train(split, seed) if name == "mixed" else split[f"{name}_train"]


def shared_vocabulary_records(split: dict[str, list[dict]], seed: int) -> list[dict]:
    """Every drafter of a suite takes its draft vocabulary from the same math+chat records,
    so the specialists share d2t: weight averaging and lockstep drafting need one vocabulary."""
    return mixed_train(split, seed)


class SuiteStates:
    """The split's records with their target states for a layer set: cached (computed on first
    use, then read back) or the plain records (online: the target runs per step)."""

    def __init__(self, mode: str, dtype: str, work: Path, target, split: dict[str, list[dict]],
                 log: Callable[[str], None], device: str | torch.device = "cpu", shard_records: int = 64,
                 batch_tokens: int = 4096):
        dev = torch.device(device)
        if mode == "auto":
            mode = "online" if dev.type == "cuda" else "cache"
        if mode not in ("cache", "online"):
            raise ValueError(f"unknown states mode {mode!r}; choose auto, cache or online")
        self.cached = mode == "cache"
        self.dtype = compute_dtype(dev, "auto") if dtype == "auto" else DTYPES[dtype]
        self.work, self.target, self.split, self.log = work, target, split, log
        self.shard_records, self.batch_tokens = shard_records, batch_tokens
        self._loaded: dict[str, CachedSplit] = {}

    def split_for(self, layers: list[int]) -> Mapping[str, list[dict]]:
        """The split (same names, same record order) whose records carry states for `layers`;
        each set's states are cached on first use (a math run never computes chat_train's)."""
        if not self.cached:
            return self.split
        n = int(self.target.config.num_hidden_layers) + 1
        key = "layers-" + "-".join(str(i % n) for i in layers)
        if key not in self._loaded:
            self._loaded[key] = CachedSplit(self, layers, self.work / "states" / key)
        return self._loaded[key]

    def cached_set(self, name: str, layers: list[int], folder: Path) -> list[dict]:
        """Set `name`'s records with their states for `layers`, computed into folder/name where
        missing (KeyError for a set the split does not hold), then read back memory-mapped."""
        t0 = time.time()
        cache_hidden_states(self.target, self.split[name], layers, folder / name,
                            shard_records=self.shard_records, dtype=self.dtype, compute_dtype=self.dtype,
                            batch_tokens=self.batch_tokens, on_change="rebuild", progress=False)
        timing = folder / name / "timing.json"
        if time.time() - t0 > 1 and timing.exists():
            self.log(f"states {folder.name}/{name}: {timing.read_text().strip()}")
        return load_hidden_cache(folder / name, self.target)

    def online_target(self):
        """What train_drafter / evaluate_drafter take as `target`: None when states are cached."""
        return None if self.cached else self.target


class CachedSplit(Mapping):
    """A split's sets with cached states, each computed (or read back) when first asked for."""

    def __init__(self, states: SuiteStates, layers: list[int], folder: Path):
        self.states, self.layers, self.folder = states, layers, folder
        self._sets: dict[str, list[dict]] = {}

    def __getitem__(self, name: str) -> list[dict]:
        if name not in self._sets:
            self._sets[name] = self.states.cached_set(name, self.layers, self.folder)
        return self._sets[name]

    def __iter__(self):
        return iter(sorted(self.states.split))

    def __len__(self) -> int:
        return len(self.states.split)


def drafter_layers(tcfg: TrainConfig, target) -> list[int]:
    from .cli import make_drafter_config  # one place decides the drafter's shape

    return list(make_drafter_config(tcfg, target).target_layers)


class LearningCurve:
    """Held-out chain tau and first-step agreement against tokens seen, one point per
    evaluation, appended to `path` (JSONL); says stop when the score (the drafter's own domain,
    the mean of both for mixed) gained less than `min_gain` over the last `patience` points."""

    def __init__(self, path: Path, model, head, heldout: dict[str, list], tcfg: TrainConfig, target,
                 depth: int, set_name: str, patience: int, min_gain: float, log: Callable[[str], None]):
        self.path, self.model, self.head, self.heldout, self.tcfg = path, model, head, heldout, tcfg
        self.target, self.depth, self.set_name, self.log = target, depth, set_name, log
        self.patience, self.min_gain = patience, min_gain
        self.seconds = 0.0  # spent evaluating (not training)
        self.last: tuple[int, dict[str, dict]] | None = None  # (step, held-out metrics per domain)

    def points(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def score(self, point: dict) -> float:
        domains = ("math", "chat") if self.set_name == "mixed" else (self.set_name,)
        return sum(point[f"{d}_chain_tau"] for d in domains) / len(domains)

    def __call__(self, step: int) -> bool:
        metrics_file = self.path.parent / "metrics.jsonl"
        seen = sum(r["tokens"] for r in map(json.loads, metrics_file.read_text().splitlines()) if r["step"] <= step)
        t0 = time.time()
        point = {"step": step, "tokens_seen": seen, "time": round(t0)}
        measured = {}
        for domain, records in self.heldout.items():
            m = measured[domain] = evaluate_drafter(self.model, self.head, records, self.tcfg, target=self.target,
                                                    steps=self.depth)
            point[f"{domain}_chain_tau"] = round(m["chain_tau"], 4)
            point[f"{domain}_acc_0"] = round(m["acc_0"], 4)
        self.last = (step, measured)
        self.seconds += time.time() - t0
        points = [p for p in self.points() if p["step"] < step] + [point]
        with open(self.path, "a") as f:
            f.write(json.dumps(point) + "\n")
        self.log(f"{self.tcfg.name} curve: {json.dumps(point)}")
        scores = [self.score(p) for p in points]
        return len(scores) > self.patience and max(scores[-self.patience:]) < max(scores[:-self.patience]) + self.min_gain


def initial_model(tcfg: TrainConfig, dcfg, target, draft_ids):
    """The recipe's fresh drafter, or the checkpoint `tcfg.init_from` (which must read the same
    target layers: the cached states are those layers')."""
    if tcfg.init_from is None:
        torch.manual_seed(tcfg.seed)
        return build_drafter_model(dcfg, target, draft_ids).float()
    from drafters.checkpoint import load_drafter_model

    model = load_drafter_model(tcfg.init_from, target).float()
    if list(model.config.target_layers) != list(dcfg.target_layers):
        raise ValueError(f"init_from {tcfg.init_from} reads target layers {list(model.config.target_layers)}, "
                         f"the recipe {list(dcfg.target_layers)}")
    return model


def train_one(cfg, tcfg: TrainConfig, target, set_name: str, split, log, states: SuiteStates,
              eval_depth: int, eval_every: int | None = None, patience: int = 3,
              min_gain: float = 0.02) -> tuple[Any, dict]:
    """Train the drafter of `tcfg` on the train set `set_name` (math, chat, mixed) and score it
    on both held-out sets (chain tau at `eval_depth`). With `eval_every`, a learning curve is
    recorded in work_dir/curve.jsonl and training stops when it flattens (LearningCurve)."""
    from .cli import make_drafter_config

    dcfg = make_drafter_config(tcfg, target)
    raw = train_set(split, set_name, cfg.seed)
    draft_ids = None
    if dcfg.head == "truncated":
        vocab_records = shared_vocabulary_records(split, cfg.seed)
        tokens = torch.cat([torch.tensor(r["input_ids"][r["prompt_len"]:]) for r in vocab_records])
        draft_ids = most_frequent_tokens(tokens, dcfg.vocab_size, dcfg.draft_vocab_size)
    data = states.split_for(list(dcfg.target_layers))
    records = train_set(data, set_name, cfg.seed)
    model = initial_model(tcfg, dcfg, target, draft_ids)
    head = target.get_output_embeddings().weight
    curve = None
    if eval_every:
        heldout = {d: data[f"{d}_heldout"] for d in ("math", "chat")}
        curve = LearningCurve(Path(tcfg.work_dir) / "curve.jsonl", model, head, heldout, tcfg,
                              states.online_target(), eval_depth, set_name, patience, min_gain, log)
    t0 = time.time()
    train_drafter(model, head, records, tcfg, tcfg.work_dir, target=states.online_target(), progress=False,
                  evaluate=curve, eval_every=eval_every)
    seconds = time.time() - t0 - (curve.seconds if curve is not None else 0.0)
    logged = [json.loads(line) for line in (Path(tcfg.work_dir) / "metrics.jsonl").read_text().splitlines()]
    n_tokens, steps_done = sum(r["tokens"] for r in logged), len(logged)
    # a resumed run logged its earlier steps in another process: the rate counts this one's steps
    this_run = sum(r["tokens"] for r in logged if r.get("time", t0) >= t0)
    metrics = {"train_seconds": round(seconds, 3), "train_tokens": n_tokens,
               "train_tokens_per_s": round(this_run / max(seconds, 1e-9)), "steps": steps_done,
               "train_records": len(records), "states": "cache" if states.cached else "online"}
    if dcfg.head == "truncated":
        resp = torch.cat([torch.tensor(r["input_ids"][r["prompt_len"]:]) for r in raw])
        metrics["draft_vocab_coverage"] = round(float(torch.isin(resp, draft_ids).float().mean()), 4)
    # the curve's last point scored these same weights on the same sets: not evaluated twice
    measured = curve.last[1] if curve is not None and curve.last and curve.last[0] == steps_done else {}
    for domain in ("math", "chat"):
        m = measured.get(domain) or evaluate_drafter(model, head, data[f"{domain}_heldout"], tcfg,
                                                     target=states.online_target(), steps=eval_depth)
        metrics[f"heldout_{domain}"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
    if curve is not None:
        metrics["curve"] = curve.points()
    log(f"{tcfg.name}: {json.dumps(metrics)}")
    return model, metrics
