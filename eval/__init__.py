"""Benchmark runner: which composition serves my domains best on my target?

`specmux eval` (or `python -m eval`) runs the autoregressive baseline and every strategy
interleaved item by item over MT-Bench, GSM8K, HumanEval and a held-out math set, and writes
results.jsonl (one record per item and strategy, resumable), summary.json, report.md and plots.
From Python: `run_eval(EvalConfig(...))`."""
from .config import EvalConfig, default_drafters
from .datasets import BENCHMARKS, HELDOUT_MATH_SEED, TRAINING_MATH_SEEDS, BenchmarkItem, MissingBenchmarkPackage, load_benchmark


def run_eval(config: EvalConfig, **kwargs):
    from .runner import run_eval as _run_eval

    return _run_eval(config, **kwargs)


__all__ = ["EvalConfig", "run_eval", "default_drafters", "BENCHMARKS", "BenchmarkItem", "load_benchmark",
           "MissingBenchmarkPackage", "HELDOUT_MATH_SEED", "TRAINING_MATH_SEEDS"]
