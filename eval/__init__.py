"""Benchmark runner: which composition serves my domains best on my target?

`specmux eval` (or `python -m eval`) runs the autoregressive baseline and every strategy
interleaved item by item over MT-Bench, GSM8K, HumanEval and a held-out math set, and writes
results.jsonl (one record per item and strategy, resumable), summary.json, report.md and plots.
From Python: `run_eval(EvalConfig(...))`."""
from runtime.lazy import lazy_exports

# public name -> its module, imported on first use (PEP 562): the `specmux` command lives in
# eval.commands, and `specmux --help` should not wait for torch
_LAZY = {
    "EvalConfig": ".config", "default_drafters": ".config", "BENCHMARKS": ".datasets", "HELDOUT_MATH_SEED": ".datasets",
    "TRAINING_MATH_SEEDS": ".datasets", "BenchmarkItem": ".datasets", "MissingBenchmarkPackage": ".datasets",
    "load_benchmark": ".datasets",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


def run_eval(config, **kwargs):
    from .runner import run_eval as _run_eval

    return _run_eval(config, **kwargs)


__all__ = ["EvalConfig", "run_eval", "default_drafters", "BENCHMARKS", "BenchmarkItem", "load_benchmark",
           "MissingBenchmarkPackage", "HELDOUT_MATH_SEED", "TRAINING_MATH_SEEDS"]
