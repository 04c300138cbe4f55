"""Target hidden states for training: cached to disk in safetensors shards (resumable, each
shard written atomically), or computed online when the target fits beside the drafter.

A shard holds a run of records concatenated along tokens: input_ids [N], features [N, F] (the
drafter's target_layers, concatenated), last_hidden [N, d] (the final normed state, from which
the target's logits are recomputed with its LM head), offsets [R + 1], prompt_lens [R].
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .atomic import save_tensors, write_json
from .checkpoint import target_fingerprint


@torch.no_grad()
def target_states(target, ids: torch.Tensor, layers) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [T, F], last_hidden [T, d]) for one sequence of token ids [T]."""
    dev = next(target.parameters()).device
    out = target(ids[None].to(dev), output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    return torch.cat([hs[i][0] for i in layers], dim=-1), hs[-1][0]


def cache_hidden_states(target, records: list[dict], layers, out_dir: str | Path, shard_records: int = 32,
                        dtype: torch.dtype = torch.float32) -> Path:
    out_dir = Path(out_dir)
    manifest = {"records": len(records), "layers": list(layers), "shard_records": shard_records,
                "dtype": str(dtype), "target_fingerprint": target_fingerprint(target)}
    man_path = out_dir / "manifest.json"
    if man_path.exists() and json.loads(man_path.read_text()) != manifest:
        raise ValueError(f"{out_dir} caches other records, layers or another target; use a new folder")
    write_json(man_path, manifest)
    n_shards = -(-len(records) // shard_records)
    for s in tqdm(range(n_shards), desc="cache hidden states", unit="shard"):
        path = out_dir / f"shard-{s:05d}.safetensors"
        if path.exists():
            continue
        chunk = records[s * shard_records : (s + 1) * shard_records]
        ids, feats, last, lens = [], [], [], []
        for rec in chunk:
            t = torch.tensor(rec["input_ids"])
            f, h = target_states(target, t, layers)
            ids.append(t)
            feats.append(f.to(dtype).cpu())
            last.append(h.to(dtype).cpu())
            lens.append(len(rec["input_ids"]))
        offsets = torch.tensor([0] + lens).cumsum(0)
        save_tensors(path, {
            "input_ids": torch.cat(ids), "features": torch.cat(feats), "last_hidden": torch.cat(last),
            "offsets": offsets, "prompt_lens": torch.tensor([r["prompt_len"] for r in chunk]),
        })
    return out_dir


def load_hidden_cache(out_dir: str | Path, target=None) -> list[dict]:
    """Per record: input_ids [T], features [T, F], last_hidden [T, d], prompt_len."""
    out_dir = Path(out_dir)
    man = json.loads((out_dir / "manifest.json").read_text())
    if target is not None and man["target_fingerprint"] != target_fingerprint(target):
        raise ValueError(f"{out_dir} was cached from another target")
    n_shards = -(-man["records"] // man["shard_records"])
    records = []
    for s in range(n_shards):
        path = out_dir / f"shard-{s:05d}.safetensors"
        if not path.exists():
            raise ValueError(f"{path} is missing: the cache is incomplete (re-run to resume)")
        t = load_file(str(path))
        off = t["offsets"].tolist()
        for r in range(len(off) - 1):
            a, b = off[r], off[r + 1]
            records.append({"input_ids": t["input_ids"][a:b], "features": t["features"][a:b],
                            "last_hidden": t["last_hidden"][a:b], "prompt_len": int(t["prompt_lens"][r])})
    return records


class OnlineStates:
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
