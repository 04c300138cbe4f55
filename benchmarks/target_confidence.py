"""How sure the target is of its own greedy answers, per domain (issue 20, item 4: why chat's
first-step agreement is low), read from the suite's cached target states: no generation.

    python benchmarks/target_confidence.py --states /work/suite-work/states/layers-2-15-27 [--positions 6000]

For answer positions of the held-out sets (a seeded sample of --positions each), the target's
probability of its own top token p_max = softmax(head(final state))[argmax], from the cached
final states and the target's head in float32. A drafter predicts that argmax from less than the
target sees; where p_max is low the argmax sits among near-equals and a small error in the
drafter's logits picks another one. Printed per domain, and for chat split into first turns and
later turns (a continued ShareGPT conversation as context), with the share of positions where the
cached argmax is not the corpus's next token (the corpus was generated in float32 on a GPU, the
states by a bf16 copy: a floor on any drafter's disagreement).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import assets  # noqa: E402
from drafters.training.hidden_cache import load_hidden_cache  # noqa: E402
from eval.heldout import heldout_records  # noqa: E402


def answer_positions(records: list[dict], groups: list[str]) -> list[tuple[int, int, str]]:
    """(record, position, group) for every position whose next token is an answer token."""
    out = []
    for i, r in enumerate(records):
        n = len(r["input_ids"])
        out += [(i, p, groups[i]) for p in range(r["prompt_len"] - 1, n - 1)]
    return out


@torch.no_grad()
def confidence(records, sample, head) -> dict[str, torch.Tensor]:
    last = torch.stack([records[i]["last_hidden"][p] for i, p, _ in sample]).float()
    logits = last @ head.T
    p_max = torch.softmax(logits, dim=-1).max(dim=-1).values
    top = torch.stack([records[i]["target_top"][p] for i, p, _ in sample]).long()
    nxt = torch.tensor([int(records[i]["input_ids"][p + 1]) for i, p, _ in sample])
    return {"p_max": p_max, "label_mismatch": (top != nxt).float()}


def row(name: str, stats: dict[str, torch.Tensor]) -> str:
    p = stats["p_max"]
    return (f"| {name} | {len(p):,} | {float(p.mean()):.3f} | {float(p.median()):.3f} | {float((p < 0.5).float().mean()):.1%} "
            f"| {float((p < 0.3).float().mean()):.1%} | {float(stats['label_mismatch'].mean()):.2%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--states", required=True, help="a layer set's folder of the suite's state cache")
    ap.add_argument("--target", default="smollm2-135m-instruct")
    ap.add_argument("--positions", type=int, default=6000, help="answer positions sampled per set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--domains", default="math,chat", help="held-out sets to read (cached in --states)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target, _ = assets.load_target(args.target)
    head = target.get_output_embeddings().weight.float()
    print(f"target {args.target}; states {args.states}; load {os.getloadavg()[0]:.2f}\n")
    print("| held-out set | positions | mean p_max | median p_max | p_max < 0.5 | p_max < 0.3 | cached argmax ≠ corpus token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for domain in args.domains.split(","):
        records = load_hidden_cache(Path(args.states) / f"{domain}_heldout", target)
        corpus = heldout_records(domain)
        if [list(map(int, r["input_ids"])) for r in records] != [r["input_ids"] for r in corpus]:
            raise SystemExit(f"{args.states}/{domain}_heldout holds other records than the shipped held-out set")
        groups = ["later turn" if not isinstance(r["prompt"], str) else "first turn" for r in corpus]
        positions = answer_positions(records, groups)
        pick = torch.randperm(len(positions), generator=gen)[: args.positions].tolist()
        sample = [positions[k] for k in pick]
        stats = confidence(records, sample, head)
        print(row(domain, stats))
        if domain == "chat":
            for g in ("first turn", "later turn"):
                mask = torch.tensor([s[2] == g for s in sample])
                print(row(f"chat, {g}s", {k: v[mask] for k, v in stats.items()}))
        early = torch.tensor([p - records[i]["prompt_len"] < 32 for i, p, _ in sample])
        print(row(f"{domain}, first 32 answer tokens", {k: v[early] for k, v in stats.items()}))


if __name__ == "__main__":
    main()
