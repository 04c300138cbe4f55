"""Where a drafter's held-out acceptance comes from (issue 20, item 4: chat quality, understood):
chain τ and first-step agreement on groups of held-out records, from the suite's cached states.

    python benchmarks/heldout_breakdown.py --states /work/suite-work/states/layers-2-15-27 \
        --drafter chat=/work/suite-out/chat [--drafter math=...] [--depth 5]

Groups: chat first turns and later turns (a continued ShareGPT conversation before the turn),
answers that loop (more than half their 4-grams repeat an earlier 4-gram of the same answer) and
answers that do not, answers that end with the end-of-turn token and answers cut at the cap; math
as a whole. The states must be of the drafters' target layers (the suite's layer-set folder).
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
from drafters.checkpoint import load_drafter_model  # noqa: E402
from drafters.training.hidden_cache import load_hidden_cache  # noqa: E402
from drafters.training.train import TrainConfig, evaluate_drafter  # noqa: E402
from eval.heldout import heldout_records  # noqa: E402

END_OF_TURN = 2  # SmolLM2's <|im_end|>


def looping(answer: list[int]) -> bool:
    seen, rep = set(), 0
    for i in range(len(answer) - 3):
        gram = tuple(answer[i : i + 4])
        rep += gram in seen
        seen.add(gram)
    return len(answer) > 40 and rep / max(len(answer) - 3, 1) > 0.5


def groups(domain: str, corpus: tuple[dict, ...]) -> dict[str, list[int]]:
    answers = [r["input_ids"][r["prompt_len"]:] for r in corpus]
    out = {"all": list(range(len(corpus)))}
    if domain == "chat":
        out["first turns"] = [i for i, r in enumerate(corpus) if isinstance(r["prompt"], str)]
        out["later turns"] = [i for i, r in enumerate(corpus) if not isinstance(r["prompt"], str)]
    out["looping answers"] = [i for i, a in enumerate(answers) if looping(a)]
    out["not looping"] = [i for i, a in enumerate(answers) if not looping(a)]
    out["ended (end-of-turn)"] = [i for i, a in enumerate(answers) if a and a[-1] == END_OF_TURN]
    out["cut at the cap"] = [i for i, a in enumerate(answers) if not a or a[-1] != END_OF_TURN]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--states", required=True)
    ap.add_argument("--drafter", action="append", required=True, metavar="NAME=FOLDER")
    ap.add_argument("--target", default="smollm2-135m-instruct")
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--domains", default="math,chat", help="held-out sets to read (cached in --states)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target, _ = assets.load_target(args.target)
    head = target.get_output_embeddings().weight
    drafters = {}
    for spec in args.drafter:
        name, _, folder = spec.partition("=")
        drafters[name] = load_drafter_model(folder, target).float().eval()
    cfg = TrainConfig(target=args.target, batch_size=16, max_len=1024, unroll_steps=args.depth)
    print(f"target {args.target}; states {args.states}; depth {args.depth}; load {os.getloadavg()[0]:.2f}\n")
    print("| held-out set | group | records | answer tokens | " + " | ".join(f"{n} acc_0 | {n} chain τ" for n in drafters) + " |")
    print("|---|---|---:|---:|" + "---:|---:|" * len(drafters))
    for domain in args.domains.split(","):
        records = load_hidden_cache(Path(args.states) / f"{domain}_heldout", target)
        corpus = heldout_records(domain)
        if [list(map(int, r["input_ids"])) for r in records] != [r["input_ids"] for r in corpus]:
            raise SystemExit(f"{args.states}/{domain}_heldout holds other records than the shipped held-out set")
        for group, idx in groups(domain, corpus).items():
            if not idx:
                continue
            subset = [records[i] for i in idx]
            cells, tokens = [], 0
            for model in drafters.values():
                with torch.no_grad():
                    m = evaluate_drafter(model, head, subset, cfg, steps=args.depth)
                tokens = m["tokens"]
                cells.append(f"{m['acc_0']:.3f} | {m['chain_tau']:.2f}")
            print(f"| {domain} | {group} | {len(idx)} | {tokens:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
