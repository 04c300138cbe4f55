"""Chat training data, checked on a few records (issue 20, item 4): what the loss mask covers,
whether the target's regenerated answers end with the end-of-turn token, repeat themselves or
run to the token limit, and how sure the target is of its own greedy answer (the ceiling a
drafter's top-1 agreement works under), chat beside math.

    python benchmarks/probe_chat_data.py [--chat 6] [--math 6] [--max-new-tokens 200] [--threads 2]

Answers are regenerated the suite's way (drafters.training.corpus.regenerate_corpus: the chat template,
greedy, float32); the prompts are ShareGPT turns (first turns and later turns with their context,
drafters.training.data.chat_turns) and seeded word problems, as in suite.json. Small: a probe, not a corpus.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import assets  # noqa: E402
from drafters.training.corpus import load_corpus, regenerate_corpus  # noqa: E402
from drafters.training.data import chat_turns  # noqa: E402
from drafters.training.train import collate  # noqa: E402
from drafters.training.word_problems import word_problems  # noqa: E402


def repeated_share(tokens: list[int], n: int = 8) -> float:
    """Share of positions whose n-gram (ending there) already occurred earlier in the answer."""
    seen, rep = set(), 0
    for i in range(n, len(tokens) + 1):
        g = tuple(tokens[i - n : i])
        rep += g in seen
        seen.add(g)
    return rep / max(1, len(tokens) - n + 1)


@torch.no_grad()
def target_confidence(target, rec: dict) -> torch.Tensor:
    """The target's top-1 probability at each trained row of `rec` (teacher-forced)."""
    ids = torch.tensor([rec["input_ids"]])
    probs = target(ids).logits[0].float().softmax(-1).max(-1).values
    rows = collate([rec], 10**6)["rows"][0]  # entry u is scored with the target's p at u + 1
    return probs[1:][rows]


def describe(name: str, target, tokenizer, records: list[dict], max_new: int, eos: int) -> None:
    lens = [len(r["input_ids"]) - r["prompt_len"] for r in records]
    ended = sum(r["input_ids"][-1] == eos for r in records)
    reps = [repeated_share(r["input_ids"][r["prompt_len"] :]) for r in records]
    conf = torch.cat([target_confidence(target, r) for r in records])
    print(f"\n## {name}: {len(records)} answers")
    print(f"- new tokens per answer: {sorted(lens)} (limit {max_new}); ended with <|im_end|>: {ended}/{len(records)}")
    print(f"- share of answer positions repeating an earlier 8-gram of the same answer: "
          f"{', '.join(f'{x:.2f}' for x in reps)}")
    print(f"- target's top-1 probability on its own greedy answer (trained rows, teacher-forced): mean "
          f"{float(conf.mean()):.3f}, median {float(conf.median()):.3f}, share below 0.5: {float((conf < 0.5).float().mean()):.3f}")
    r = records[0]
    rows = collate([r], 10**6)["rows"][0]
    first = int(rows.nonzero()[0]) + 2  # entry u predicts the token at u + 2
    print(f"- mask of one record: prompt {r['prompt_len']} tokens ending {tokenizer.decode(r['input_ids'][r['prompt_len'] - 5 : r['prompt_len']])!r}; "
          f"first trained target token {tokenizer.decode(r['input_ids'][first : first + 1])!r} at {first}; "
          f"answer ends {tokenizer.decode(r['input_ids'][-6:])!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chat", type=int, default=6)
    p.add_argument("--math", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    target, tokenizer = assets.load_target("smollm2-135m-instruct")
    target.eval().requires_grad_(False)
    tokenizer.padding_side = "left"
    chats = chat_turns(args.chat, seed=0, later_share=0.5)
    later = [c for c in chats if isinstance(c, list)]
    print(f"chat prompts: {len(chats) - len(later)} first turns, {len(later)} later turns "
          f"(context: {[len(c) for c in later]} messages)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, items in (("chat", [("chat", c) for c in chats]), ("math", [("math", q) for q in word_problems(args.math, seed=7)])):
            regenerate_corpus(target, tokenizer, items, Path(tmp) / name, batch_size=len(items),
                              max_new_tokens=args.max_new_tokens, desc=f"regenerate {name}")
            recs = load_corpus(Path(tmp) / name)
            describe(name, target, tokenizer, recs, args.max_new_tokens, tokenizer.eos_token_id)
            if name == "chat":
                for r in recs[:3]:
                    print(f"  answer {r['id']}: {tokenizer.decode(r['input_ids'][r['prompt_len']:])[:300]!r}")
    print("\nload %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
