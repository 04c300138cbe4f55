"""The specialist-drafter suite: one corpus, a measured recipe, three shipped drafters.

    specmux train-suite --config drafters/pretrained/smollm2-135m-instruct/suite.json

Stages (each resumes from what it wrote under work_dir; the data stages live in suite_data.py):
  prompts     math word problems (templates + reasoning-gym), requests for the target to write
              more, ShareGPT chat turns; the evaluation prompts are saved beside them so later
              stages filter without the asset packages (run this stage where they are installed)
  written     the target writes math word problems from the requests
  regenerate  the target answers every prompt (greedy); held-out split per domain
  states      the target's states for every record, cached once per layer set the ablations and
              the final use (bf16 on a CPU with bf16 matrix units; `states`: cache, the CPU
              default, or online; drafters/training/suite_training.py); later stages cache what is missing
  ablate      each recipe variant trained on the mixed train set for the same number of steps,
              scored by greedy chain tau on the held-out math and chat sets
  final       the best variant trained on math, chat and mixed (both sets together, reused);
              each checkpoint gets a manifest (sha256, recipe, data, overlap, metrics, command)
On a GPU the whole suite takes minutes; there target states are computed per batch by default.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime import assets
from runtime.atomic import write_json
from drafters.checkpoint import save_drafter
from .corpus_archive import unpack_corpus
from .suite_data import read_json, stage_prompts, stage_regenerate
from .suite_training import SuiteStates, drafter_layers, mixed_train, train_one
from .train import TrainConfig

STAGES = ("prompts", "written", "regenerate", "states", "ablate", "final")
DOMAINS = ("math", "chat", "mixed")


class ExtraData(BaseModel):
    """A second round of prompts (another seed, disjoint from the first round) whose answers join
    the training sets only: the held-out sets stay those of the first round, so metrics stay
    comparable when a later run adds data to a corpus already made."""
    model_config = ConfigDict(extra="forbid")

    seed: int = 1000
    n_math_templates: int = Field(default=0, ge=0)
    n_math_gym: int = Field(default=0, ge=0)
    n_chat: int = Field(default=0, ge=0)


class SuiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = "smollm2-135m-instruct"
    target_path: str | None = None  # a transformers folder (or a folder with gguf_file) instead of the built-in
    gguf_file: str | None = None
    # the shipped corpus (drafters/training/corpus_archive.py): unpacked into work_dir before the stages, so
    # `prompts` and `regenerate` find their output done (no asset packages, no regeneration)
    corpus_archive: str | None = None
    seed: int = 0
    n_math_templates: int = Field(default=2000, ge=0)
    n_math_gym: int = Field(default=500, ge=0)
    n_math_requests: int = Field(default=1500, ge=0)
    n_chat: int = Field(default=3500, ge=1)
    heldout_per_domain: int = Field(default=150, ge=1)
    extra: ExtraData | None = None
    max_new_tokens: int = Field(default=256, ge=1)
    max_prompt_tokens: int = Field(default=768, ge=8)
    write_max_new_tokens: int = Field(default=96, ge=8)
    regen_batch_size: int = Field(default=256, ge=1)
    # who writes the target's answers: transformers' batched generate, or vLLM where installed
    # (drafters/training/vllm_regen.py; for large targets on GPU machines)
    regen_engine: Literal["transformers", "vllm"] = "transformers"
    # vLLM's LLM(...) arguments, e.g. {"gpu_memory_utilization": 0.5} beside the loaded target
    regen_engine_args: dict[str, Any] = Field(default_factory=dict)
    # target states for training: "cache" (computed once, read back memory-mapped), "online"
    # (a target forward per step); "auto": online on a GPU, cached on the CPU
    states: Literal["auto", "cache", "online"] = "auto"
    states_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 where it is native
    states_batch_tokens: int = Field(default=4096, ge=1)  # padded tokens per caching forward
    eval_depth: int = Field(default=5, ge=1)
    base: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields shared by every run
    ablations: dict[str, dict[str, Any]] = Field(default_factory=dict)  # variant name -> overrides
    ablation_max_steps: int = Field(default=300, ge=1)
    final_max_steps: int = Field(default=1000, ge=1)
    final_variant: str | None = None  # None: the ablation winner
    final_domains: list[Literal["math", "chat", "mixed"]] = ["math", "chat", "mixed"]
    # learning curves: evaluate the held-out sets every this many steps and stop a final when its
    # curve flattens (gain < final_min_gain in chain tau over final_patience points);
    # final_max_steps is then a ceiling, not the step count
    final_eval_every: int | None = Field(default=None, ge=1)
    final_patience: int = Field(default=3, ge=1)
    final_min_gain: float = Field(default=0.02, ge=0)
    final_init_from: dict[str, str] = Field(default_factory=dict)  # domain -> checkpoint to continue
    # wall-clock budget for the stages after `prompts` (a lent GPU's time is capped): later
    # ablations are skipped and the final step count shrinks so the three finals still fit;
    # the step counts actually used are recorded in each manifest's recipe
    time_budget_s: float | None = None
    max_checkpoint_bytes: int = 15_000_000
    # stages' outputs and the cached target states (~4 GB for the shipped corpus' eagle3 layers):
    # default $SPECMUX_HOME/suite, a folder that outlives /tmp; the manifests' commands set their own
    work_dir: str = Field(default_factory=lambda: str(assets.specmux_home() / "suite"))
    output_dir: str = "drafters/pretrained/smollm2-135m-instruct"
    command: str = "specmux train-suite --config drafters/pretrained/smollm2-135m-instruct/suite.json"

    def train_config(self, name: str, domain: str, overrides: dict, max_steps: int) -> TrainConfig:
        fields = {"target": self.target, "domain": domain, "seed": self.seed, "max_len": 1024,
                  "max_new_tokens": self.max_new_tokens, **self.base, **overrides, "max_steps": max_steps,
                  "work_dir": str(Path(self.work_dir) / "runs" / name), "name": name}
        return TrainConfig(**fields)


# --- training one drafter --------------------------------------------------------------------------
def score(metrics: dict) -> float:
    return (metrics["heldout_math"]["chain_tau"] + metrics["heldout_chat"]["chain_tau"]) / 2


class Clock:
    """Seconds per training step (measured) against an optional deadline."""

    def __init__(self, budget_s: float | None):
        self.deadline = time.time() + budget_s if budget_s else None
        self.step_s: float | None = None

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()

    def observe(self, metrics: dict) -> None:
        if "train_seconds" in metrics and metrics.get("steps"):
            self.step_s = max(self.step_s or 1e-6, metrics["train_seconds"] / metrics["steps"])

    def affordable_steps(self, runs: int, overhead_s: float = 20.0) -> int | None:
        if self.deadline is None or self.step_s is None:
            return None
        return int((self.left() - runs * overhead_s) / (runs * self.step_s))


def stage_states(cfg: SuiteConfig, target, states: SuiteStates) -> None:
    """Cache the states of every layer set the ablations and the final variant read."""
    variants = dict(cfg.ablations)
    if cfg.final_variant:
        variants.setdefault(cfg.final_variant, {})
    for name, overrides in (variants or {"base": {}}).items():
        split = states.split_for(drafter_layers(cfg.train_config(name, "mixed", overrides, 1), target))
        for set_name in split:  # sets are cached when first read: read them all now
            split[set_name]


def stage_ablate(cfg: SuiteConfig, work: Path, target, split, log, clock: Clock, states: SuiteStates) -> dict[str, dict]:
    results_path = work / "ablations.json"
    results = read_json(results_path) if results_path.exists() else {}
    for name, overrides in cfg.ablations.items():
        if name in results:
            clock.observe(results[name])
            continue
        finals_need = 3 * (cfg.final_max_steps * (clock.step_s or 0) + 20)
        if clock.step_s and clock.left() < finals_need + cfg.ablation_max_steps * clock.step_s + 20:
            log(f"ablation {name} skipped: {clock.left():.0f} s left, the finals need about {finals_need:.0f} s")
            continue
        tcfg = cfg.train_config(f"ablate-{name}", "mixed", overrides, cfg.ablation_max_steps)
        try:
            _, metrics = train_one(cfg, tcfg, target, "mixed", split, log, states, cfg.eval_depth)
        except Exception as e:  # one broken variant must not cost the others; recorded, never hidden
            log(f"ablation {name} FAILED: {type(e).__name__}: {e}")
            metrics = {"error": f"{type(e).__name__}: {e}"}
        results[name] = {"overrides": overrides, **metrics}
        clock.observe(metrics)
        write_json(results_path, results)
    return results


def pick_variant(cfg: SuiteConfig, results: dict[str, dict]) -> str:
    if cfg.final_variant:
        return cfg.final_variant
    ok = {k: v for k, v in results.items() if "error" not in v and v["overrides"].get("head", cfg.base.get("head")) != "target"}
    if not ok:
        raise ValueError("no ablation variant with a stored head finished; cannot pick a recipe")
    return max(ok, key=lambda k: score(ok[k]))


def stage_final(cfg: SuiteConfig, work: Path, target, split, results, log, clock: Clock,
                states: SuiteStates) -> dict[str, dict]:
    variant = pick_variant(cfg, results)
    log(f"final recipe: {variant}")
    overrides = cfg.ablations.get(variant, {})
    train_records = {"math": len(split["math_train"]), "chat": len(split["chat_train"]),
                     "mixed": len(mixed_train(split, cfg.seed))}
    data_report = read_json(work / "data_report.json")
    out = {}
    for domain in cfg.final_domains:
        folder = Path(cfg.output_dir) / domain
        done = work / f"final-{domain}.json"
        if done.exists():
            out[domain] = read_json(done)
            continue
        left = sum(not (work / f"final-{d}.json").exists() for d in cfg.final_domains)
        affordable = clock.affordable_steps(left)
        floor = min(50, cfg.final_max_steps)  # a budget overrun still ships a usable drafter
        steps = cfg.final_max_steps if affordable is None else max(floor, min(cfg.final_max_steps, affordable))
        extra = {"init_from": cfg.final_init_from[domain]} if domain in cfg.final_init_from else {}
        tcfg = cfg.train_config(f"final-{domain}", domain, {**overrides, **extra}, steps)
        model, metrics = train_one(cfg, tcfg, target, domain, split, log, states, cfg.eval_depth,
                                   cfg.final_eval_every, cfg.final_patience, cfg.final_min_gain)
        if tcfg.repspec != "off":
            model.merge_repspec()
        model = model.cpu()
        save_drafter(model, folder, target=target, dtype=torch.bfloat16,
                     extra={"training": json.loads(tcfg.model_dump_json()), "train_metrics": metrics})
        size = (folder / "model.safetensors").stat().st_size
        if size > cfg.max_checkpoint_bytes:
            raise ValueError(f"{folder} is {size} bytes, over the {cfg.max_checkpoint_bytes}-byte limit")
        manifest = {
            "domain": domain, "variant": variant, "recipe": json.loads(tcfg.model_dump_json()),
            "sha256": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.glob("*.safetensors"))},
            "bytes": size, "data": {"train_records": train_records[domain],
                                    "heldout_records": {d: len(split[f"{d}_heldout"]) for d in ("math", "chat")},
                                    "sources": SOURCES[domain]},
            "overlap": data_report, "metrics": metrics, "command": cfg.command,
        }
        write_json(folder / "manifest.json", manifest)
        write_json(done, manifest)
        out[domain] = manifest
        clock.observe(metrics)
    return out


SOURCES = {
    "math": "seeded word-problem templates (drafters/training/word_problems.py), reasoning-gym generators, word problems "
            "written by the target from seeded topics; answers regenerated by the target (greedy)",
    "chat": "ShareGPT human turns (first turns and later turns with the conversation so far); the last answer "
            "regenerated by the target (greedy)",
    "mixed": "every math and every chat training record together (reused, not regenerated)",
}


# --- driver ----------------------------------------------------------------------------------------
def load_suite_target(cfg: SuiteConfig, device: str, load_target=None):
    if cfg.target_path:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
        tok = AutoTokenizer.from_pretrained(cfg.target_path, **kw)
        model = AutoModelForCausalLM.from_pretrained(cfg.target_path, dtype=torch.float32, **kw)
    else:
        model, tok = (load_target or assets.load_target)(cfg.target)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model.to(device).eval().requires_grad_(False), tok


def run(cfg: SuiteConfig, stages: tuple[str, ...] = STAGES, device: str | None = None, load_target=None) -> dict:
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "suite_config.json", json.loads(cfg.model_dump_json()))
    log_file = work / "suite.log"

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(log_file, "a") as f:
            f.write(line + "\n")

    if cfg.corpus_archive:
        manifest = unpack_corpus(cfg.corpus_archive, work)
        log(f"corpus: unpacked {cfg.corpus_archive} ({json.dumps(manifest['counts'])})")
    if "prompts" in stages:
        stage_prompts(cfg, work)
        log(f"prompts: {json.dumps({k: len(v) for k, v in read_json(work / 'prompts.json').items() if k != 'dropped'})}")
    rest = [s for s in stages if s != "prompts"]
    if not rest:
        return {}
    clock = Clock(cfg.time_budget_s)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    target, tokenizer = load_suite_target(cfg, device, load_target)
    split = stage_regenerate(cfg, work, target, tokenizer)
    log(f"corpus: {json.dumps({k: len(v) for k, v in split.items()})}")
    states = SuiteStates(cfg.states, cfg.states_dtype, work, target, split, log, device,
                         batch_tokens=cfg.states_batch_tokens)
    if "states" in stages:
        stage_states(cfg, target, states)
    results = stage_ablate(cfg, work, target, split, log, clock, states) if "ablate" in stages else {}
    if "final" in stages and not results and (work / "ablations.json").exists():
        results = read_json(work / "ablations.json")
    finals = stage_final(cfg, work, target, split, results, log, clock, states) if "final" in stages else {}
    return {"ablations": results, "finals": finals}


def main(argv: list[str] | None = None, load_target=None) -> int:
    parser = argparse.ArgumentParser(prog="specmux train-suite", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="JSON file with SuiteConfig fields")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="override a config field")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    try:
        fields = json.loads(Path(args.config).read_text())
        for item in args.set:
            key, _, raw = item.partition("=")
            try:
                fields[key] = json.loads(raw)
            except json.JSONDecodeError:
                fields[key] = raw
        cfg = SuiteConfig(**fields)
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    except (OSError, json.JSONDecodeError, ValidationError, ValueError) as e:
        print(f"specmux train-suite: {e}", file=sys.stderr)
        return 2
    try:
        run(cfg, stages, args.device, load_target)
    except ValueError as e:
        print(f"specmux train-suite: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
