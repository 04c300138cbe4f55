"""The suite's data stages (drafters/training/suite.py): prompts, the target's written word
problems, and the regenerated corpus with its held-out split and overlap report."""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from runtime.atomic import write_json

from .corpus import load_corpus, regenerate_corpus
from .data import chat_turns, drop_overlapping, math_prompts, overlap_report, prompt_text
from .word_problems import clean_written_problem, word_problems, writing_requests

if TYPE_CHECKING:
    from .suite import SuiteConfig


def read_json(path: Path):
    return json.loads(path.read_text())


# --- stage: prompts (CPU, needs the asset packages) ---------------------------------------------
def stage_prompts(cfg: SuiteConfig, work: Path) -> None:
    from .data import eval_prompts

    if not (work / "prompts.json").exists():
        evals = eval_prompts()
        math = [("math", p) for p in word_problems(cfg.n_math_templates, cfg.seed)]
        math += [("math", p) for p in math_prompts(cfg.n_math_gym, cfg.seed)] if cfg.n_math_gym else []
        chat = [("chat", p) for p in chat_turns(cfg.n_chat, cfg.seed)]
        requests = [("write", p) for p in writing_requests(cfg.n_math_requests, cfg.seed)]
        write_json(work / "eval_prompts.json", evals)
        write_json(work / "prompts.json", {**without_eval_overlap(math, chat, evals), "write": requests})
    if cfg.extra and not (work / "prompts-extra.json").exists():
        stage_extra_prompts(cfg, work)


def stage_extra_prompts(cfg: SuiteConfig, work: Path) -> None:
    """The extra round's prompts: drawn with its own seed, minus any prompt of the first round
    (compared as JSON, so chat histories count too) and any sharing an 8-gram with evaluation."""
    x, base = cfg.extra, read_json(work / "prompts.json")
    seen = {json.dumps(p) for _, p in base["math"] + base["chat"]}
    math = [("math", p) for p in word_problems(x.n_math_templates, x.seed)] if x.n_math_templates else []
    math += [("math", p) for p in math_prompts(x.n_math_gym, x.seed)] if x.n_math_gym else []
    chat = [("chat", p) for p in chat_turns(cfg.n_chat + x.n_chat, x.seed)] if x.n_chat else []
    math = [(d, p) for d, p in math if json.dumps(p) not in seen]
    chat = [(d, p) for d, p in chat if json.dumps(p) not in seen][: x.n_chat]
    write_json(work / "prompts-extra.json", without_eval_overlap(math, chat, read_json(work / "eval_prompts.json")))


def without_eval_overlap(math: list, chat: list, evals) -> dict:
    """{"math", "chat": the prompts sharing no word 8-gram with an evaluation prompt, "dropped": counts}."""
    kept = {"math": drop_overlapping(math, evals), "chat": drop_overlapping(chat, evals)}
    return {**kept, "dropped": {"math": len(math) - len(kept["math"]), "chat": len(chat) - len(kept["chat"])}}


_ENGINES: dict[tuple, object] = {}  # one vLLM engine per target for every regeneration of a run


def engine(cfg: SuiteConfig) -> dict:
    """regenerate_corpus's `generate` / `engine` arguments for cfg.regen_engine."""
    if cfg.regen_engine == "transformers":
        return {}
    from runtime.assets import resolve_model_dir
    from .vllm_regen import VLLMGenerator

    folder = Path(cfg.target_path or resolve_model_dir(cfg.target))
    model = folder / cfg.gguf_file if cfg.gguf_file else folder  # vLLM reads a GGUF file itself
    key = (str(model), json.dumps(cfg.regen_engine_args, sort_keys=True))
    if key not in _ENGINES:
        _ENGINES[key] = VLLMGenerator(model, tokenizer=str(folder), **cfg.regen_engine_args)
    return {"generate": _ENGINES[key], "engine": "vllm"}


# --- stage: written (the target writes word problems) -------------------------------------------
def stage_written(cfg: SuiteConfig, work: Path, target, tokenizer) -> list[tuple[str, str]]:
    prompts = read_json(work / "prompts.json")
    if not prompts["write"]:
        return []
    out = work / "written"
    regenerate_corpus(target, tokenizer, [tuple(p) for p in prompts["write"]], out, cfg.regen_batch_size,
                      cfg.write_max_new_tokens, seed=cfg.seed, desc="target writes word problems", **engine(cfg))
    texts = [clean_written_problem(tokenizer.decode(r["input_ids"][r["prompt_len"]:], skip_special_tokens=True))
             for r in load_corpus(out)]
    unique = list(dict.fromkeys(t for t in texts if t))
    kept = drop_overlapping([("math", t) for t in unique], read_json(work / "eval_prompts.json"))
    write_json(work / "written.json", {"requests": len(texts), "usable": len(unique), "kept": len(kept)})
    return kept


def split_heldout(records: list, seed: int, n: int) -> tuple[list, list]:
    """(held out, train) of a first-round corpus in load order: the one rule the suite and the
    held-out evaluation benchmarks (eval/heldout.py) share."""
    records = list(records)
    random.Random(seed).shuffle(records)
    return records[:n], records[n:]


# --- stage: regenerate ---------------------------------------------------------------------------
def stage_regenerate(cfg: SuiteConfig, work: Path, target, tokenizer) -> dict[str, list[dict]]:
    prompts = read_json(work / "prompts.json")
    written = stage_written(cfg, work, target, tokenizer)
    split: dict[str, list[dict]] = {}
    for domain in ("math", "chat"):
        items = [tuple(p) for p in prompts[domain]] + (written if domain == "math" else [])
        records = regenerate_timed(cfg, target, tokenizer, items, work / "corpus" / domain, f"target answers {domain}")
        heldout, train = split_heldout(records, cfg.seed, cfg.heldout_per_domain)
        split[f"{domain}_heldout"] = heldout
        split[f"{domain}_train"] = train + regenerate_extra(cfg, work, target, tokenizer, domain)
    evals = read_json(work / "eval_prompts.json")
    report = {name: overlap_report([prompt_text(r["prompt"]) for r in recs], evals)
              for name, recs in split.items() if name.endswith("_train")}
    report["dropped_before_generation"] = prompts["dropped"]
    report["regeneration"] = {d: read_json(timing) for d in ("math", "chat", "math-extra", "chat-extra")
                              if (timing := work / "corpus" / d / "timing.json").exists()}
    if (work / "prompts-extra.json").exists():
        report["dropped_before_generation_extra"] = read_json(work / "prompts-extra.json")["dropped"]
    if (work / "written.json").exists():
        report["written_problems"] = read_json(work / "written.json")
    write_json(work / "data_report.json", report)
    return split


def regenerate_timed(cfg: SuiteConfig, target, tokenizer, items: list[tuple], folder: Path, desc: str) -> list[dict]:
    """Regenerate (resumably) into `folder`; the first run that makes the whole corpus records its
    tokens/s in timing.json. Returns the records with a non-trivial answer."""
    t0 = time.time()
    regenerate_corpus(target, tokenizer, items, folder, cfg.regen_batch_size, cfg.max_new_tokens,
                      seed=cfg.seed, max_prompt_tokens=cfg.max_prompt_tokens, desc=desc, **engine(cfg))
    timing = folder / "timing.json"
    everything = load_corpus(folder)
    if not timing.exists():
        new = sum(len(r["input_ids"]) - r["prompt_len"] for r in everything)
        write_json(timing, {"seconds": round(time.time() - t0, 1), "new_tokens": new,
                            "tokens_per_s": round(new / max(time.time() - t0, 1e-9)),
                            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"})
    return answered(everything)


def answered(records: list[dict]) -> list[dict]:
    """The records whose regenerated answer is more than a token or two (what the suite trains on)."""
    return [r for r in records if len(r["input_ids"]) > r["prompt_len"] + 2]


def regenerate_extra(cfg: SuiteConfig, work: Path, target, tokenizer, domain: str) -> list[dict]:
    path = work / "prompts-extra.json"
    items = [tuple(p) for p in read_json(path)[domain]] if cfg.extra and path.exists() else []
    if not items:
        return []
    return regenerate_timed(cfg, target, tokenizer, items, work / "corpus" / f"{domain}-extra", f"target answers {domain} (extra)")
