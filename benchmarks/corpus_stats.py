"""What the shipped corpus's answers look like, per corpus: how many end with the end-of-turn
token, how many hit the generation cap, how much they repeat themselves.

    python benchmarks/corpus_stats.py [--archive data/smollm2-135m-instruct/corpus.tar.xz]

Prints a markdown table (docs/results/corpus-2026-12-04/README.md quotes it).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drafters.training.corpus_archive import unpack_corpus  # noqa: E402

END_OF_TURN = 2  # SmolLM2's <|im_end|>, also its eos_token_id


def answer_stats(records: list[dict], cap: int) -> dict:
    answers = [r["input_ids"][r["prompt_len"]:] for r in records]
    repeated = total = looping = 0
    for a in answers:
        seen, rep = set(), 0
        for i in range(len(a) - 3):
            gram = tuple(a[i : i + 4])
            rep += gram in seen
            seen.add(gram)
        repeated, total = repeated + rep, total + max(len(a) - 3, 0)
        looping += len(a) > 40 and rep / max(len(a) - 3, 1) > 0.5
    n = len(answers)
    return {"records": n, "ended": sum(bool(a) and a[-1] == END_OF_TURN for a in answers) / n,
            "capped": sum(len(a) >= cap for a in answers) / n, "repeated_4grams": repeated / max(total, 1),
            "looping": looping / n, "median_answer": sorted(len(a) for a in answers)[n // 2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", default="data/smollm2-135m-instruct/corpus.tar.xz")
    parser.add_argument("--cap", type=int, default=200, help="the suite's max_new_tokens")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = unpack_corpus(args.archive, tmp)
        print("| corpus | records | ended by end-of-turn | hit the cap | repeated 4-grams | answers > 50% looping | median answer |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in manifest["counts"]:
            records = [json.loads(line) for part in sorted((Path(tmp) / "corpus" / name).glob("part-*.jsonl"))
                       for line in part.read_text().splitlines() if line.strip()]
            s = answer_stats(records, args.cap)
            print(f"| {name} | {s['records']:,} | {s['ended']:.1%} | {s['capped']:.1%} | {s['repeated_4grams']:.1%} "
                  f"| {s['looping']:.1%} | {s['median_answer']} |")


if __name__ == "__main__":
    main()
