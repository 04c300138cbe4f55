"""A drafter's first-step agreement by position and by whether the target is repeating itself
(issue 20, item 4), from the suite's cached states of a held-out set.

    python benchmarks/copy_positions.py --states /work/suite-work/states/layers-30/chat_heldout \
        --drafter drafters/pretrained/smollm2-135m-instruct/chat [--records 40]

"Repeating" positions are answer tokens whose 4-gram (the token and the three before it) already
occurred earlier in the same answer: a rule that copies what followed the last occurrence of the
three tokens before is right there by construction. A drafter that has learnt to copy agrees
with the target there far more often than elsewhere.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import assets  # noqa: E402
from drafters.checkpoint import load_drafter_model  # noqa: E402
from drafters.training.hidden_cache import load_hidden_cache  # noqa: E402
from drafters.training.train import Unroll, collate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--states", required=True, help="a held-out set's state-cache folder of the drafter's layers")
    ap.add_argument("--drafter", required=True)
    ap.add_argument("--target", default="smollm2-135m-instruct")
    ap.add_argument("--records", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target, _ = assets.load_target(args.target)
    model = load_drafter_model(args.drafter, target).float().eval()
    unroll, draft_ids = Unroll(model), model.head.draft_ids
    by_position: dict[int, list[int]] = {}
    by_repeat = {True: [0, 0], False: [0, 0]}
    for r in load_hidden_cache(args.states, target)[: args.records]:
        b = collate([r], 1024)
        with torch.no_grad():
            logits = unroll(b["ids"], b["feats"].float(), b["rows"], 1)[0]
        hit = draft_ids[logits.argmax(-1)] == b["top"][:, 1:][b["rows"]].long()
        ids, start = b["ids"][0].tolist(), r["prompt_len"]
        for k, u in enumerate(torch.nonzero(b["rows"][0]).squeeze(1).tolist()):
            t = u + 2  # entry u predicts the token at u + 2
            cell = by_position.setdefault(min(t // 128, 7) * 128, [0, 0])
            cell[0], cell[1] = cell[0] + int(hit[k]), cell[1] + 1
            if t - 3 >= start:
                seen = {tuple(ids[i : i + 4]) for i in range(start, t - 3)}
                rep = by_repeat[tuple(ids[t - 3 : t + 1]) in seen]
                rep[0], rep[1] = rep[0] + int(hit[k]), rep[1] + 1
    print("| sequence position | answer tokens | first-step agreement |\n|---|---:|---:|")
    for pos, (a, n) in sorted(by_position.items()):
        print(f"| {pos}-{pos + 127 if pos < 896 else ''} | {n:,} | {a / n:.3f} |")
    print("\n| answer token | tokens | first-step agreement |\n|---|---:|---:|")
    for rep, (a, n) in by_repeat.items():
        print(f"| {'repeats an earlier 4-gram' if rep else 'new text'} | {n:,} | {a / max(n, 1):.3f} |")


if __name__ == "__main__":
    main()
