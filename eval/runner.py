"""The benchmark runner: baseline and strategies interleaved item by item, resumable.

For every (temperature, seed, benchmark item) unit, the autoregressive baseline and every
strategy run back to back, in an order rotated from one unit to the next, so machine drift
(other processes, thermal state) hits them all alike. Records are appended to results.jsonl
as they finish; summary.json, report.md and the plots are rebuilt from all stored records."""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from compose import Composer

from .config import EvalConfig, default_drafters
from .datasets import BENCHMARKS, BenchmarkItem, load_benchmark, sample_items
from .metrics import greedy_mismatches
from .oracle import oracle_for
from .plan import StrategyRun, resolve_strategies, run_conversation
from .plots import write_plots
from runtime.atomic import write_text

from .records import BASELINE, RecordKey, ResultStore, RunRecord, write_json
from .report import build_summary, console_table, markdown_report

log = logging.getLogger(__name__)

CONFIG_FILE, RESULTS_FILE, SUMMARY_FILE, REPORT_FILE = "config.json", "results.jsonl", "summary.json", "report.md"
CALIBRATION_FILE = "calibration.json"  # the run's calibrated-signal fits (ship beside the drafters to reuse)


@dataclass
class EvalOutcome:
    out_dir: Path
    summary: dict
    generated: int  # records produced by this process (the rest were resumed)

    @property
    def failures(self) -> list[dict]:
        return self.summary["failures"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def default_out_dir() -> Path:
    return Path("runs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_or_write_config(out_dir: Path, config: EvalConfig) -> None:
    """A resumed folder must hold results of the same result-affecting settings."""
    path = out_dir / CONFIG_FILE
    if path.exists():
        stored = EvalConfig.model_validate_json(path.read_text(encoding="utf-8"))
        mine, theirs = config.result_settings(), stored.result_settings()
        if mine != theirs:
            diff = {k: {"stored": theirs[k], "now": mine[k]} for k in mine if mine[k] != theirs.get(k)}
            raise ValueError(f"{out_dir} holds results made with other settings {diff}; resume with the same "
                             "settings or choose another --out")
        # benchmarks, strategies, temperatures, seeds and limits may grow: keep the union on record
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, config.model_dump(mode="json"))


def _warn_if_busy(threads: int, echo: Callable[[str], None]) -> None:
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > cores and threads > 1:
        echo(f"note: this machine is busy (load {load:.1f} on {cores} cores): {threads} torch threads per process "
             "contend with the other work and can run many times slower; --threads 1 avoids that. Speed-ups stay "
             "comparable (the baseline is interleaved) but wall times will be long.")


def _units(config: EvalConfig, items: dict[str, list[BenchmarkItem]]):
    """(temperature, seed, item) in run order; greedy runs use only the first seed (repeats would
    generate the same tokens)."""
    for temperature in config.temperatures:
        for seed in config.seeds[:1] if temperature == 0 else config.seeds:
            for bench in config.benchmarks:
                for item in items[bench]:
                    yield temperature, seed, item


def _key(item: BenchmarkItem, label: str, temperature: float, seed: int) -> RecordKey:
    return RecordKey(item.benchmark, item.id, label, temperature, seed)


def _run_units(composer: Composer, config: EvalConfig, all_runs: list[StrategyRun], units: list, store: ResultStore,
               chat: bool, todo: int, progress: bool) -> int:
    """Every (unit, run) not in the store, the runs of a unit back to back in an order rotated per
    unit; returns how many records were generated."""
    generated = 0
    bar = tqdm(total=todo, unit="run", desc="eval", disable=not progress or todo == 0, file=sys.stderr, dynamic_ncols=True)
    for index, (temperature, seed, item) in enumerate(units):
        shift = index % len(all_runs)
        for position, run in enumerate(all_runs[shift:] + all_runs[:shift]):
            key = _key(item, run.label, temperature, seed)
            if key in store:
                continue
            bar.set_postfix_str(f"{item.benchmark}/{item.id} T={temperature:g} {run.label}", refresh=False)
            t0 = time.perf_counter()
            turns = run_conversation(composer, item, run, config, temperature, seed, chat,
                                     oracle=oracle_for(composer, run, config, temperature))
            store.append(RunRecord(
                benchmark=item.benchmark, prompt_id=item.id, strategy=run.label, temperature=temperature, seed=seed,
                turns=turns, wall_seconds=time.perf_counter() - t0, order=position,
                finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            ))
            generated += 1
            bar.update(1)
        if temperature == 0:
            unit = [store.get(_key(item, r.label, temperature, seed)) for r in all_runs]
            for failure in greedy_mismatches([r for r in unit if r is not None])[1]:
                tqdm.write(f"GREEDY MISMATCH {failure['benchmark']}/{failure['prompt_id']} {failure['strategy']}: "
                           f"{failure['problem']}", file=sys.stderr)
    bar.close()
    return generated


def _print(text: str) -> None:
    print(text, flush=True)


def run_eval(config: EvalConfig, progress: bool = True, echo: Callable[[str], None] = _print) -> EvalOutcome:
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run_eval(config, progress, echo)
    finally:
        torch.set_num_threads(threads)


def _run_eval(config: EvalConfig, progress: bool, echo: Callable[[str], None]) -> EvalOutcome:
    started, started_cpu = time.perf_counter(), time.process_time()
    _warn_if_busy(config.threads or 1, echo)
    out_dir = Path(config.out) if config.out is not None else default_out_dir()

    # datasets first: a missing package fails before minutes of model loading
    full = {b: load_benchmark(b) for b in config.benchmarks}
    items = {b: sample_items(full[b], config.limit, config.sample_seed) for b in config.benchmarks}
    source = "as configured" if config.drafters is not None else "the default set for this target"
    drafters = config.drafters if config.drafters is not None else default_drafters(config.target)
    config = config.model_copy(update={"drafters": drafters, "out": out_dir})
    _check_or_write_config(out_dir, config)

    echo(f"specmux eval -> {out_dir}")
    echo(f"target {config.target}; drafters {drafters} ({source})")
    composer = Composer(config.target, drafters=drafters, domain_router=config.domain_router,
                        calibration=config.calibration, threads=config.thread_setting(), dtype=config.dtype)
    echo(f"target dtype {str(composer.target.dtype).removeprefix('torch.')} (asked: {config.dtype})")
    chat = config.chat if config.chat is not None else bool(getattr(composer.tokenizer, "chat_template", None))
    runs, skipped = resolve_strategies(composer, config, chat)
    echo("strategies: " + ", ".join([BASELINE] + [r.label for r in runs])
         + "".join(f"\n  skipped {name}: {why}" for name, why in skipped.items()))

    store = ResultStore(out_dir / RESULTS_FILE)
    all_runs = [StrategyRun(BASELINE, BASELINE), *runs]
    units = list(_units(config, items))
    todo = sum(_key(item, r.label, t, s) not in store for t, s, item in units for r in all_runs)
    if todo < len(units) * len(all_runs):
        echo(f"resuming: {len(units) * len(all_runs) - todo} of {len(units) * len(all_runs)} runs already in {RESULTS_FILE}")

    generated = _run_units(composer, config, all_runs, units, store, chat, todo, progress)
    if any(composer.calibration.observations(s) for s in ("confidence", "entropy")):
        composer.save_calibration(out_dir / CALIBRATION_FILE)  # what the calibrated signals learnt this run

    # the summary covers exactly this config's selection (a resumed folder may hold more)
    wanted = {_key(item, r.label, t, s) for t, s, item in units for r in all_runs}
    records = [r for r in store.all() if r.key in wanted]
    benchmarks = {b: {"selected": len(items[b]), "total": len(full[b]), "ids": [it.id for it in items[b]],
                      "description": BENCHMARKS[b].description} for b in config.benchmarks}
    summary = build_summary(config, records, [r.label for r in runs], skipped, benchmarks, time.perf_counter() - started,
                            time.process_time() - started_cpu, target_dtype=str(composer.target.dtype).removeprefix("torch."))
    write_json(out_dir / SUMMARY_FILE, summary)
    write_plots(summary, out_dir)
    write_text(out_dir / REPORT_FILE, markdown_report(summary))
    echo("")
    echo(console_table(summary))
    echo(f"\n{len(records)} records ({generated} new) in {out_dir}: {RESULTS_FILE}, {SUMMARY_FILE}, {REPORT_FILE}, "
         f"plots; wall {summary['wall_seconds']:.0f} s, CPU {summary['cpu_seconds']:.0f} s")
    return EvalOutcome(out_dir, summary, generated)
