"""`specmux eval stream`: a drafter that learns while it serves (dvi:K), on a stream of prompts.

Each learning variant (KL->RL, KL-only) drafts the whole stream in order, learning as it goes.
The same-K early-exit drafter (no learning) and the autoregressive baseline run on the last
`window` prompts only (or the last `frozen_prompts` of them): their τ does not depend on what
came before. Runs are interleaved prompt
by prompt so machine drift hits them alike, and every greedy output is checked against the
baseline's where both ran. Writes stream.jsonl (one record per prompt and run), summary.json,
tau_over_time.png and the learned adapters (adapters/<domain>/<variant>/).

A long stream runs in pieces: `max_minutes` stops it at a prompt boundary, and `--resume` goes on
from the last checkpoint (checkpoint/: the adapters with their optimizer moments and buffered
examples, so the learners continue exactly as if never stopped), keeping each piece's load average.

Prompts are held out from every evaluation benchmark: math from reasoning-gym generators at
seeds disjoint from the training seeds and the held-out math benchmark; chat from ShareGPT
first turns sharing no word 8-gram with MT-Bench, GSM8K or HumanEval (overlap measured and
written to the summary)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from compose import Composer
from compose.options import TreeOptions, validation_message
from runtime import atomic
from runtime.assets import DEFAULT_TARGET
from drafters.dvi import DVIConfig, DVIDrafter
from drafters.lm import EarlyExitDrafter

from .datasets import HELDOUT_MATH_SEED, HELDOUT_MATH_TASKS, TRAINING_MATH_SEEDS

log = logging.getLogger(__name__)

# reasoning-gym seeds of the stream (generator i: seed + i): outside the training range and the held-out benchmark
STREAM_MATH_SEED = 9_000_000
STREAM_CHAT_SEED = 11
EARLY_EXIT, BASELINE = "early-exit", "autoregressive"


class StreamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(DEFAULT_TARGET, description="built-in model name or a local transformers folder")
    domain: Literal["math", "chat"] = "math"
    prompts: int = Field(200, ge=1, description="prompts in the stream")
    window: int = Field(50, ge=1, description="the last prompts, where learned and frozen drafters are compared")
    exit_layer: int = Field(6, ge=1, description="K of dvi:K and early-exit:K")
    variants: list[Literal["kl_rl", "kl"]] = Field(default_factory=lambda: ["kl_rl", "kl"], min_length=1)
    max_new_tokens: int = Field(64, ge=1)
    tree: TreeOptions = Field(default_factory=lambda: TreeOptions(depth=3, top_k=3, budget=8))
    dvi: DVIConfig = Field(default_factory=DVIConfig, description="adapter and learning settings (schedule set per variant)")
    baseline: bool = Field(True, description="run the autoregressive baseline on the window (speed, greedy check)")
    frozen_prompts: int | None = Field(
        None, ge=0, description="the frozen runs (early-exit, autoregressive) take the last this many prompts (None: the "
                                "window; 0: none): their τ does not depend on the past, so a subset measures a stationary stream")
    threads: int = Field(1, ge=1)
    out: Path | None = None
    max_minutes: float | None = Field(None, gt=0, description="stop at a prompt boundary after this long; go on with --resume")
    checkpoint_every: int = Field(10, ge=1, description="prompts between checkpoints")

    def measured(self) -> dict:
        """The settings a resumed run must share with the run it continues (threads may change:
        each piece records its own)."""
        return self.model_dump(mode="json", exclude={"out", "max_minutes", "checkpoint_every", "threads"})

    @model_validator(mode="after")
    def _window_fits(self) -> "StreamConfig":
        if self.window > self.prompts:
            raise ValueError(f"window ({self.window}) is longer than the stream ({self.prompts} prompts)")
        if self.frozen > self.window:
            raise ValueError(f"frozen_prompts ({self.frozen_prompts}) is longer than the window ({self.window})")
        return self

    @property
    def frozen(self) -> int:
        """How many of the last prompts the frozen runs take."""
        return self.window if self.frozen_prompts is None else self.frozen_prompts


def stream_prompts(domain: str, n: int) -> tuple[list[str], dict]:
    """n held-out prompts of the domain and the overlap report against the evaluation benchmarks."""
    from drafters.training.data import MATH_GENERATORS, chat_prompts, drop_overlapping, eval_prompts, math_prompts, overlap_report

    evals = eval_prompts()
    if domain == "math":  # generator i is seeded with STREAM_MATH_SEED + i
        seeds = range(STREAM_MATH_SEED, STREAM_MATH_SEED + len(MATH_GENERATORS))
        held = range(HELDOUT_MATH_SEED, HELDOUT_MATH_SEED + len(HELDOUT_MATH_TASKS))
        for name, used in (("training", TRAINING_MATH_SEEDS), ("held-out benchmark", held)):
            if seeds.start < used.stop and used.start < seeds.stop:
                raise ValueError(f"stream math seeds {seeds} overlap the {name} seeds {used}")
        prompts = math_prompts(n, seed=STREAM_MATH_SEED)
    else:
        candidates = [("chat", p) for p in chat_prompts(2 * n, seed=STREAM_CHAT_SEED, max_chars=600)]
        prompts = [p for _, p in drop_overlapping(candidates, evals)][:n]
        if len(prompts) < n:
            raise ValueError(f"only {len(prompts)} ShareGPT prompts are free of evaluation overlap; ask for fewer")
    return prompts, overlap_report(prompts, evals)


def make_runs(config: StreamConfig, composer: Composer) -> dict[str, DVIDrafter | EarlyExitDrafter | None]:
    target = composer.target.model
    runs: dict = {}
    for variant in config.variants:
        cfg = config.dvi.model_copy(update={"learning": config.dvi.learning.model_copy(update={"schedule": variant})})
        runs[f"dvi-{variant}"] = composer.add_drafter(f"dvi-{variant}", DVIDrafter(target, config.exit_layer, cfg))
    if config.frozen:
        runs[EARLY_EXIT] = composer.add_drafter(EARLY_EXIT, EarlyExitDrafter(target, config.exit_layer))
    if config.baseline and config.frozen:
        runs[BASELINE] = None
    return runs


def record(index: int, run: str, result, drafter, learn_seconds: float) -> dict:
    steps = result.stats.steps
    rec = {
        "index": index, "run": run, "tau": result.stats.tau, "steps": len(steps), "new_tokens": len(result.token_ids),
        "emitted": sum(s.accepted + 1 for s in steps), "seconds": result.stats.total_time,
        "prefill": result.stats.prefill_time, "draft": sum(s.t_draft for s in steps),
        "forward": sum(s.t_forward for s in steps), "verify": sum(s.t_verify for s in steps),
        "learn": learn_seconds, "tokens": result.token_ids,
    }
    if isinstance(drafter, DVIDrafter):
        last = drafter.learner.log[-1] if drafter.learner.log else {}
        rec |= {"updates": drafter.learner.updates, "phase": drafter.learner.phase, "kl": last.get("kl")}
    return rec


def pooled(records: list[dict]) -> dict:
    """τ pooled over steps (emitted tokens / verifier forwards), times summed."""
    steps = sum(r["steps"] for r in records)
    learn = sum(r["learn"] for r in records)
    step_time = sum(r["draft"] + r["forward"] + r["verify"] for r in records) - learn  # verify's time includes learning
    return {
        "prompts": len(records), "tau": sum(r["emitted"] for r in records) / max(1, steps),
        "tokens_per_s": sum(r["new_tokens"] for r in records) / max(1e-9, sum(r["seconds"] for r in records)),
        "learn_overhead": learn / step_time if step_time else 0.0,
    }


def summarise(config: StreamConfig, records: list[dict], runs: dict) -> dict:
    first = set(range(config.window))
    last = set(range(config.prompts - config.window, config.prompts))
    frozen = set(range(config.prompts - config.frozen, config.prompts))
    by_run = {run: [r for r in records if r["run"] == run] for run in runs}
    out = {}
    for run, recs in by_run.items():
        out[run] = {"window": pooled([r for r in recs if r["index"] in last])}
        if len({r["index"] for r in recs}) == config.prompts:
            out[run] |= {"first": pooled([r for r in recs if r["index"] in first]), "stream": pooled(recs)}
        if frozen and frozen != last:  # the prompts the frozen runs took: a paired comparison
            out[run]["frozen"] = pooled([r for r in recs if r["index"] in frozen])
    if EARLY_EXIT in out:
        ee_tau = out[EARLY_EXIT]["window"]["tau"]
        base = out.get(BASELINE, {}).get("window", {}).get("tokens_per_s")
        for run in out:
            paired = out[run].get("frozen", out[run]["window"])
            out[run]["window"]["tau_vs_early_exit"] = out[run]["window"]["tau"] / ee_tau
            paired["tau_vs_early_exit_paired"] = paired["tau"] / ee_tau
            if base:
                out[run]["window"]["speed_vs_autoregressive"] = paired["tokens_per_s"] / base
    mismatches = []
    if BASELINE in by_run:
        reference = {r["index"]: r["tokens"] for r in by_run[BASELINE]}
        mismatches = [(r["run"], r["index"]) for r in records if r["index"] in reference and r["tokens"] != reference[r["index"]]]
    return {"runs": out, "greedy_mismatches": mismatches}


def plot_tau_over_time(records: list[dict], config: StreamConfig, path: Path, smooth: int = 10) -> None:
    from .plots import _save, plt

    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    for run in dict.fromkeys(r["run"] for r in records):
        recs = sorted((r for r in records if r["run"] == run), key=lambda r: r["index"])
        if run == BASELINE:
            continue
        xs = [r["index"] for r in recs]
        taus = [r["tau"] for r in recs]
        points = ax.plot(xs, taus, ".", alpha=0.25)[0]
        # moving τ pooled over the last `smooth` prompts
        roll = [sum(r["emitted"] for r in recs[max(0, i - smooth + 1): i + 1]) /
                max(1, sum(r["steps"] for r in recs[max(0, i - smooth + 1): i + 1])) for i in range(len(recs))]
        ax.plot(xs, roll, color=points.get_color(), label=f"{run} (τ pooled over {smooth} prompts)")
    ax.axvline(config.prompts - config.window - 0.5, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("prompt in the stream")
    ax.set_ylabel("τ (tokens per verifier forward)")
    ax.set_title(f"dvi:{config.exit_layer} learning online, {config.domain} stream ({config.prompts} prompts, "
                 f"{config.max_new_tokens} new tokens)")
    ax.legend(fontsize=8)
    _save(fig, path)


def run_stream(config: StreamConfig, progress: bool = True, resume: bool = False) -> dict:
    """Run (or, with `resume`, continue) the stream. The summary has "complete": False when
    `max_minutes` stopped it early."""
    torch.set_num_threads(config.threads)
    out = config.out or Path("runs") / f"stream-{config.domain}-{time.strftime('%Y%m%d-%H%M%S')}"
    prompts, overlap = stream_prompts(config.domain, config.prompts)
    composer = Composer(config.target, threads=config.threads)  # fixed: "auto" would change it between pieces
    runs = make_runs(config, composer)
    records, pieces = restore(out, config, runs) if resume else ([], [])
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "config.json", config.model_dump(mode="json"))
    options = dict(max_new_tokens=config.max_new_tokens, chat=True, tree=config.tree.model_dump())
    first = 1 + max([r["index"] for r in records], default=-1)
    piece = {"from": first, "threads": config.threads, "load_average_start": os.getloadavg()}
    started = time.perf_counter()
    frozen_start = config.prompts - config.frozen
    i = first
    for i in tqdm(range(first, config.prompts), disable=not progress, desc=f"{config.domain} stream", initial=first,
                  total=config.prompts):
        for run, drafter in runs.items():
            if run in (EARLY_EXIT, BASELINE) and i < frozen_start:  # their τ does not depend on the past
                continue
            learned_before = getattr(drafter, "learn_seconds", 0.0)
            if drafter is None:
                result = composer.generate(prompts[i], strategy="autoregressive", **options)
            else:
                result = composer.generate(prompts[i], strategy="single", drafter=run, **options)
            records.append(record(i, run, result, drafter, getattr(drafter, "learn_seconds", 0.0) - learned_before))
        atomic.write_text(out / "stream.jsonl", "".join(_json_line(r) for r in records))
        done = i + 1 == config.prompts
        stop = config.max_minutes is not None and time.perf_counter() - started > 60 * config.max_minutes
        if done or stop or (i + 1) % config.checkpoint_every == 0:
            checkpoint(out, i + 1, runs, [*pieces, {**piece, "to": i + 1, "load_average_end": os.getloadavg()}])
        if stop and not done:
            break
    pieces.append({**piece, "to": i + 1 if first < config.prompts else first, "load_average_end": os.getloadavg()})
    if 1 + max([r["index"] for r in records], default=-1) < config.prompts:
        return {"complete": False, "next": i + 1, "out": str(out), "pieces": pieces}
    summary = {"complete": True, "config": config.model_dump(mode="json"), "pieces": pieces,
               "load_average": {"start": pieces[0]["load_average_start"], "end": pieces[-1]["load_average_end"]},
               "threads": torch.get_num_threads(), "overlap": overlap, **summarise(config, records, runs)}
    for run, drafter in runs.items():
        if isinstance(drafter, DVIDrafter):
            drafter.save_adapter(out / "adapters" / config.domain / run, domain=config.domain)
            summary["runs"][run]["learner"] = drafter.learner.state()
    atomic.write_json(out / "summary.json", summary)
    plot_tau_over_time(records, config, out / "tau_over_time.png")
    summary["out"] = str(out)
    return summary


def checkpoint(out: Path, next_index: int, runs: dict, pieces: list[dict]) -> None:
    """The learners' adapters and the stream position, replaced as one folder."""
    with atomic.replaced_folder(out / "checkpoint", keep_others=False) as staged:
        for run, drafter in runs.items():
            if isinstance(drafter, DVIDrafter):
                drafter.save_adapter(staged / run)
        atomic.write_json(staged / "state.json", {"next": next_index, "pieces": pieces})


def restore(out: Path, config: StreamConfig, runs: dict) -> tuple[list[dict], list[dict]]:
    """Records and pieces up to the last checkpoint of the run in `out`; loads its adapters."""
    folder = atomic.recover_folder(out / "checkpoint")
    if not (folder / "state.json").is_file():
        raise ValueError(f"--resume: {out} has no checkpoint to continue from")
    saved = json.loads((out / "config.json").read_text())
    saved.get("dvi", {}).setdefault("draft_vocab", "full")  # runs from before draft vocabularies had the full head
    saved = StreamConfig.model_validate(saved)
    if saved.measured() != config.measured():
        changed = sorted(k for k, v in config.measured().items() if saved.measured().get(k) != v)
        raise ValueError(f"--resume: the settings differ from the run in {out}: {changed}")
    state = json.loads((folder / "state.json").read_text())
    for run, drafter in runs.items():
        if isinstance(drafter, DVIDrafter):
            drafter.load_adapter(folder / run)
    lines = (out / "stream.jsonl").read_text().splitlines() if (out / "stream.jsonl").exists() else []
    records = [r for r in map(json.loads, lines) if r["index"] < state["next"]]
    return records, state["pieces"]


def _json_line(rec: dict) -> str:
    return json.dumps(rec) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specmux eval stream", description=__doc__.split("\n\n")[0])
    p.add_argument("--target")
    p.add_argument("--domain", choices=["math", "chat"])
    p.add_argument("--prompts", type=int)
    p.add_argument("--window", type=int)
    p.add_argument("--exit-layer", type=int)
    p.add_argument("--variants", help="comma-separated: kl_rl,kl")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--budget", type=int)
    p.add_argument("--tree-top-k", type=int)
    p.add_argument("--tree-auto", action="store_true",
                   help="tree=auto: each step's tree sized to this machine's costs and the running acceptance")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", default=None)
    p.add_argument("--frozen-prompts", type=int, help="early-exit and autoregressive on the last N prompts only (0: none)")
    p.add_argument("--dvi", help="JSON of DVIConfig fields, e.g. '{\"rank\": 8, \"learning\": {\"lr\": 0.001}}'")
    p.add_argument("--threads", type=int)
    p.add_argument("--out")
    p.add_argument("--max-minutes", type=float, help="stop at a prompt boundary after this long (go on with --resume)")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> StreamConfig:
    data = {k: v for k, v in {
        "target": args.target, "domain": args.domain, "prompts": args.prompts, "window": args.window,
        "exit_layer": args.exit_layer, "max_new_tokens": args.max_new_tokens, "baseline": args.baseline,
        "frozen_prompts": args.frozen_prompts,
        "threads": args.threads, "out": args.out, "max_minutes": args.max_minutes,
        "checkpoint_every": args.checkpoint_every,
        "variants": [v for v in args.variants.split(",") if v] if args.variants else None,
    }.items() if v is not None}
    tree = {k: v for k, v in {"depth": args.depth, "budget": args.budget, "top_k": args.tree_top_k,
                              "auto": args.tree_auto or None}.items() if v is not None}
    if tree:
        data["tree"] = {**StreamConfig.model_fields["tree"].default_factory().model_dump(), **tree}
    if args.dvi:
        try:
            data["dvi"] = json.loads(args.dvi)
        except json.JSONDecodeError as e:
            raise ValueError(f"--dvi is not valid JSON: {e}") from None
    return StreamConfig.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        if args.resume and config.out is None:
            raise ValueError("--resume needs --out (the run to continue)")
        summary = run_stream(config, progress=not args.no_progress, resume=args.resume)
    except ValidationError as e:
        print(f"specmux eval stream: error: invalid settings: {validation_message(e)[0]}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"specmux eval stream: error: {e}", file=sys.stderr)
        return 2
    if not summary["complete"]:
        print(f"stopped after {summary['next']} of the stream's prompts (--max-minutes); continue with "
              f"--resume --out {summary['out']}")
        return 0
    for run, figures in summary["runs"].items():
        w = figures["window"]
        print(f"{run:>16}: τ over the last {w['prompts']} prompts {w['tau']:.3f} "
              + (f"({w['tau_vs_early_exit']:.2f}x early-exit)" if "tau_vs_early_exit" in w else "")
              + f", learning overhead {w['learn_overhead']:.1%}"
              + (f", speed {w['speed_vs_autoregressive']:.2f}x autoregressive" if "speed_vs_autoregressive" in w else ""))
    print(f"results in {summary['out']}")
    if summary["greedy_mismatches"]:
        print(f"specmux eval stream: FAILED: greedy outputs differ from the baseline: {summary['greedy_mismatches'][:5]}",
              file=sys.stderr)
        return 1
    return 0
