"""Target hidden states for training: computed once per corpus and cached to disk in safetensors
shards (resumable, each shard written atomically, read back memory-mapped), or computed online
when the target sits beside the drafter.

A shard holds a run of records concatenated along tokens: input_ids [N], features [N, F] (the
drafter's target_layers, concatenated), last_hidden [N, d] (the final normed state, from which
the target's logits at the draft ids are recomputed; not stored when the features are that very
state, as for eagle1's layer -1), target_lse [N] and target_top [N] (the log-normaliser and
argmax of the target's logits over its whole vocabulary, so training never runs the full head;
drafters/training/target_side.py), offsets [R + 1], prompt_lens [R].

The manifest names what the cache was made from: the records (a digest of their token ids), the
layer set, the stored dtype and the target's fingerprint. A cache made from anything else is
refused (`on_change="error"`) or emptied and rebuilt (`"rebuild"`); shards found without a
manifest (a rebuild a crash interrupted) are removed before any is trusted. The states are
computed by batches of length-sorted records of one shard (right padding, so every real position
is exact), in `compute_dtype`: a bf16 copy of a float32 target on a CPU with bf16 matrix units.
"""
from __future__ import annotations

import copy
import hashlib
import json
import struct
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from runtime.allocator import keep_freed_memory, release_freed_memory
from runtime.atomic import save_tensors, write_json
from drafters.checkpoint import target_fingerprint
from .target_side import full_vocab_stats

FORMAT, VERSION = "specmux-target-states", 2
SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "U8": torch.uint8, "BOOL": torch.bool}


@torch.no_grad()
def target_states(target, ids: torch.Tensor, layers) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [T, F], last_hidden [T, d]) for one sequence of token ids [T]."""
    dev = next(target.parameters()).device
    out = target(ids[None].to(dev), output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    return torch.cat([hs[i][0] for i in layers], dim=-1), hs[-1][0]


@torch.no_grad()
def batched_states(target, seqs: list[list[int]], layers) -> list[dict[str, torch.Tensor]]:
    """Per sequence: features, last_hidden, target_lse, target_top, from one right-padded forward
    of all of them (the target's logits only for the last position; the full-vocabulary
    normaliser and argmax are taken in row blocks from the final states)."""
    dev = next(target.parameters()).device
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    attn = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.as_tensor(s)
        attn[b, : len(s)] = 1
    ids, attn = ids.to(dev), attn.to(dev)
    kwargs = dict(input_ids=ids, attention_mask=attn, output_hidden_states=True, use_cache=False)
    try:
        hs = target(**kwargs, logits_to_keep=1).hidden_states  # skip the [B, T, V] logits
    except TypeError:  # a model class without logits_to_keep
        hs = target(**kwargs).hidden_states
    feats = torch.cat([hs[i] for i in layers], dim=-1)
    last = hs[-1]
    valid = attn.bool()
    lse, top = full_vocab_stats(last[valid], target.get_output_embeddings().weight)
    out, at = [], 0
    for b, s in enumerate(seqs):
        n = len(s)
        out.append({"features": feats[b, :n], "last_hidden": last[b, :n],
                    "target_lse": lse[at : at + n], "target_top": top[at : at + n]})
        at += n
    return out


def records_digest(records) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(np.asarray(r["input_ids"], dtype=np.int64).tobytes())
        h.update(struct.pack("<qq", len(r["input_ids"]), int(r["prompt_len"])))
    return h.hexdigest()[:16]


def features_are_last(target, layers) -> bool:
    """True when the features are exactly the final normed state (eagle1's [-1])."""
    n = int(target.config.num_hidden_layers) + 1
    return [i % n for i in layers] == [n - 1]


def compute_copy(target, dtype: torch.dtype | None):
    """The target in `dtype` (a copy when it has another dtype; the caller's model is untouched)."""
    if dtype is None or next(target.parameters()).dtype == dtype:
        return target
    return copy.deepcopy(target).to(dtype)


def cache_hidden_states(target, records: list[dict], layers, out_dir: str | Path, shard_records: int = 32,
                        dtype: torch.dtype = torch.float32, compute_dtype: torch.dtype | None = None,
                        batch_tokens: int = 4096, on_change: Literal["error", "rebuild"] = "error",
                        progress: bool = True) -> Path:
    """Cache the states of `records` under `out_dir`, resuming after the last finished shard.
    `dtype`: what is stored; `compute_dtype`: what the target runs in (None: its own dtype);
    `batch_tokens`: padded tokens per forward."""
    keep_freed_memory()  # runtime/allocator.py
    out_dir = Path(out_dir)
    layers = list(layers)
    dedup = features_are_last(target, layers)
    manifest = {"format": FORMAT, "version": VERSION, "records": len(records), "records_digest": records_digest(records),
                "layers": layers, "shard_records": shard_records, "dtype": str(dtype),
                "target_fingerprint": target_fingerprint(target), "features_are_last": dedup,
                "stats": ["target_lse", "target_top"]}
    prepare_folder(out_dir, manifest, on_change)
    n_shards = -(-len(records) // shard_records)
    todo = [s for s in range(n_shards) if not shard_path(out_dir, s).exists()]
    if not todo:
        return out_dir
    model = compute_copy(target, compute_dtype)
    for s in tqdm(todo, desc="cache target states", unit="shard", disable=not progress):
        t0 = time.perf_counter()
        chunk = records[s * shard_records : (s + 1) * shard_records]
        states: list[dict | None] = [None] * len(chunk)
        for batch in length_batches([len(r["input_ids"]) for r in chunk], batch_tokens):
            for i, st in zip(batch, batched_states(model, [list(chunk[i]["input_ids"]) for i in batch], layers)):
                states[i] = st
        tensors = {
            "input_ids": torch.cat([torch.as_tensor(r["input_ids"], dtype=torch.int64) for r in chunk]),
            "features": torch.cat([st["features"] for st in states]).to(dtype).cpu(),
            "target_lse": torch.cat([st["target_lse"] for st in states]).float().cpu(),
            "target_top": torch.cat([st["target_top"] for st in states]).to(torch.int32).cpu(),
            "offsets": torch.tensor([0] + [len(r["input_ids"]) for r in chunk]).cumsum(0),
            "prompt_lens": torch.tensor([int(r["prompt_len"]) for r in chunk]),
        }
        if not dedup:
            tensors["last_hidden"] = torch.cat([st["last_hidden"] for st in states]).to(dtype).cpu()
        save_tensors(shard_path(out_dir, s), tensors)
        add_timing(out_dir, int(tensors["input_ids"].numel()), time.perf_counter() - t0)
        del tensors, states
        release_freed_memory()  # shards differ in shape: the kept heap fragments without it (runtime/allocator.py)
    return out_dir


def shard_path(out_dir: Path, s: int) -> Path:
    return out_dir / f"shard-{s:05d}.safetensors"


def prepare_folder(out_dir: Path, manifest: dict, on_change: str) -> None:
    """Keep a cache made from the same inputs; refuse or empty one made from others. The old
    manifest goes first, so a crash mid-cleanup leaves shards without a manifest, which the
    next call removes before it writes its own."""
    man_path = out_dir / "manifest.json"
    if man_path.exists():
        if json.loads(man_path.read_text()) == manifest:
            return
        if on_change != "rebuild":
            raise ValueError(f"{out_dir} caches other records, layers, dtype or another target; use a new folder")
        man_path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("shard-*.safetensors"), out_dir / "timing.json"]:
        stale.unlink(missing_ok=True)
    write_json(man_path, manifest)


def add_timing(out_dir: Path, tokens: int, seconds: float) -> None:
    """Tokens and seconds spent computing states, summed over every run that added shards."""
    path = out_dir / "timing.json"
    t = json.loads(path.read_text()) if path.exists() else {"tokens": 0, "seconds": 0.0}
    t = {"tokens": t["tokens"] + tokens, "seconds": round(t["seconds"] + seconds, 3)}
    write_json(path, t | {"tokens_per_s": round(t["tokens"] / max(t["seconds"], 1e-9))})


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first so a batch's padded size (count x its longest) stays within
    `batch_tokens` (a longer sequence goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def read_safetensors_mmap(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of a private memory map: nothing is read until
    used, the page cache is shared between processes (DDP ranks), and writes never reach the file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="c")
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which the state cache never writes")
        a, b = info["data_offsets"]
        raw = torch.from_numpy(data[base + a : base + b])
        out[name] = raw.view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def load_hidden_cache(out_dir: str | Path, target=None) -> list[dict]:
    """Per record: input_ids [T], features [T, F], last_hidden [T, d], prompt_len, and the
    full-vocabulary target_lse / target_top [T]; memory-mapped views into the shards."""
    out_dir = Path(out_dir)
    man_path = out_dir / "manifest.json"
    if not man_path.exists():
        raise ValueError(f"{out_dir} holds no state cache (no manifest.json)")
    man = json.loads(man_path.read_text())
    if man.get("format") != FORMAT or man.get("version") != VERSION:
        raise ValueError(f"{out_dir} is a state cache of another format or version; rebuild it")
    if target is not None and man["target_fingerprint"] != target_fingerprint(target):
        raise ValueError(f"{out_dir} was cached from another target")
    n_shards = -(-man["records"] // man["shard_records"])
    records = []
    for s in range(n_shards):
        path = shard_path(out_dir, s)
        if not path.exists():
            raise ValueError(f"{path} is missing: the cache is incomplete (re-run to resume)")
        t = read_safetensors_mmap(path)
        last = t["features"] if man["features_are_last"] else t["last_hidden"]
        off = t["offsets"].tolist()
        for r in range(len(off) - 1):
            a, b = off[r], off[r + 1]
            records.append({"input_ids": t["input_ids"][a:b], "features": t["features"][a:b],
                            "last_hidden": last[a:b], "target_lse": t["target_lse"][a:b],
                            "target_top": t["target_top"][a:b], "prompt_len": int(t["prompt_lens"][r])})
    return records


class LiveTargetStates:
    """Computes a record's target states on demand (the target sits beside the drafter)."""

    def __init__(self, target, records: list[dict], layers):
        self.target, self.records, self.layers = target, records, list(layers)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        ids = torch.tensor(rec["input_ids"])
        f, h = target_states(self.target, ids, self.layers)
        return {"input_ids": ids, "features": f.cpu(), "last_hidden": h.cpu(), "prompt_len": rec["prompt_len"]}
