"""summary.json, report.md and the console table, all built from the stored records."""
from __future__ import annotations

import math
import platform
from typing import Any

from .metrics import ALL_BENCHMARKS, greedy_mismatches, summary_rows
from .records import BASELINE, RunRecord

SUMMARY_SCHEMA = "specmux-eval-summary/1"
PLOTS = {"tau": "tau.png", "acceptance": "acceptance.png", "routing": "routing.png"}


def environment() -> dict[str, Any]:
    import os

    import torch
    import transformers

    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}


def _clean(value):
    """NaN -> None, so summary.json is strict JSON."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def build_summary(config, records: list[RunRecord], strategies: list[str], skipped: dict[str, str],
                  benchmarks: dict[str, dict], wall_seconds: float, cpu_seconds: float,
                  target_dtype: str | None = None) -> dict:
    checked, failures = greedy_mismatches(records)
    return _clean({
        "schema": SUMMARY_SCHEMA,
        "config": config.model_dump(mode="json"),
        "target": config.target,
        "target_dtype": target_dtype,  # what ran (config.dtype is what was asked: "auto" resolves per machine)
        "drafters": config.drafters,
        "strategies": [BASELINE, *strategies],
        "skipped_strategies": skipped,
        "benchmarks": benchmarks,
        "records": len(records),
        "rows": summary_rows(records, config.tree.depth),
        "greedy_check": {"records_checked": checked, "mismatches": len(failures)},
        "failures": failures,
        "environment": environment(),
        "wall_seconds": wall_seconds,
        "cpu_seconds": cpu_seconds,  # this process, all threads: with --threads 1, the compute a quiet core needs
        "plots": PLOTS,
    })


# --------------------------------------------------------------------------- formatting helpers
def _num(value, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{k} {_pct(v)}" for k, v in shares.items()) or "–"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _temperature_label(t: float) -> str:
    return "T = 0 (greedy)" if t == 0 else f"T = {t:g}"


# --------------------------------------------------------------------------- Markdown report
def markdown_report(summary: dict) -> str:
    cfg = summary["config"]
    tree = cfg["tree"]
    out = [
        "# specmux eval",
        "",
        f"Target `{summary['target']}` ({summary.get('target_dtype') or 'dtype not recorded'}); drafters " + ", ".join(f"`{k}` = `{v}`" for k, v in summary["drafters"].items()) + ".",
        f"Tree: depth {tree['depth']}, top-k {tree['top_k']}, budget {tree['budget']}"
        f"{', sampled' if tree['sampled'] else ''}, merge budget `{tree['merge_budget']}`. "
        f"Max new tokens {cfg['max_new_tokens']} per turn; seeds {cfg['seeds']}; "
        f"torch threads: {summary['environment']['torch_threads']}.",
        "Benchmarks: " + "; ".join(f"{k} {v['selected']}/{v['total']} items" for k, v in summary["benchmarks"].items()) + ".",
        f"Wall time {summary['wall_seconds']:.0f} s (CPU {summary['cpu_seconds']:.0f} s). The baseline (`{BASELINE}`) ran in the same process, "
        "interleaved with the strategies item by item; speed-up = tokens/s over the baseline's on the same items.",
        "",
    ]
    if summary["skipped_strategies"]:
        out += ["Skipped strategies: " + "; ".join(f"`{k}` ({v})" for k, v in summary["skipped_strategies"].items()), ""]
    g = summary["greedy_check"]
    out += [f"**Greedy check: {g['mismatches']} mismatch(es) in {g['records_checked']} greedy records.**", ""]
    if summary["failures"]:
        out += ["## Failures", "", _table(["benchmark", "item", "strategy", "problem"],
                [[f["benchmark"], f["prompt_id"], f["strategy"], f["problem"]] for f in summary["failures"]]), ""]

    depth = tree["depth"]
    rows = summary["rows"]
    for t in sorted({r["temperature"] for r in rows}):
        at_t = [r for r in rows if r["temperature"] == t]
        out += [f"## {_temperature_label(t)}", "", "### τ and speed", "",
                _table(["benchmark", "strategy", "items", "τ", "tokens/s", "speed-up", "mean tree", "accepted-token shares", "routing"],
                       [[r["benchmark"], r["strategy"], str(r["prompts"]), _num(r["tau"]), _num(r["tokens_per_s"], 1),
                         _num(r["speedup"], 2, "×"), _num(r["mean_tree_size"], 1), _shares(r["drafter_shares"]),
                         _shares(r["routing_shares"])] for r in at_t]), ""]
        drafting = [r for r in at_t if r["strategy"] != BASELINE]
        for kind in ("unconditional", "conditional"):
            out += [f"### Acceptance per depth ({kind})", "",
                    _table(["benchmark", "strategy", *[f"d{d}" for d in range(1, depth + 1)]],
                           [[r["benchmark"], r["strategy"], *[_pct(v) for v in r["acceptance"][kind]]] for r in drafting]), ""]
        pooled_name = ALL_BENCHMARKS if any(r["benchmark"] == ALL_BENCHMARKS for r in at_t) else at_t[0]["benchmark"]
        pooled = [r for r in at_t if r["benchmark"] == pooled_name]
        out += ["### Time per phase (ms per generated token)", "",
                _table(["benchmark", "strategy", "prefill", "draft", "verify", "forward", "other", "total",
                        "draft ms / forward"],
                       [[r["benchmark"], r["strategy"], *[_num(r["ms_per_token"].get(p), 1) for p in
                                                         ("prefill", "draft", "verify", "forward", "other", "total")],
                         _num(r.get("draft_ms_per_forward"), 1)]
                        for r in pooled]), ""]
        analysed = [r for r in at_t if r["routing_accuracy"]]
        if analysed:
            out += ["### Routing against the oracle (analysis mode)", "",
                    _table(["benchmark", "strategy", "forwards", "accuracy per step", "turns", "accuracy per turn",
                            "routed τ", "oracle τ"],
                           [[r["benchmark"], r["strategy"], str(a["steps"]), _pct(a["accuracy"]), str(a.get("turns", "")),
                             _pct(a.get("turn_accuracy")), _num(a["routed_tau"]), _num(a["oracle_tau"])]
                            for r in analysed for a in [r["routing_accuracy"]]]), ""]
    out += ["## Plots", "", *[f"![{name}]({path})" for name, path in summary["plots"].items()], ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- console
def console_table(summary: dict) -> str:
    """τ and speed-up per strategy (rows) and benchmark (columns), one block per temperature."""
    rows = summary["rows"]
    lines = []
    for t in sorted({r["temperature"] for r in rows}):
        at_t = [r for r in rows if r["temperature"] == t]
        benches = list(dict.fromkeys(r["benchmark"] for r in at_t))
        strategies = list(dict.fromkeys(r["strategy"] for r in at_t))
        cell = {(r["strategy"], r["benchmark"]): r for r in at_t}
        width = max(len(s) for s in strategies + ["strategy"])
        col = 15
        lines.append(f"{_temperature_label(t)}: τ / speed-up over {BASELINE}")
        lines.append(f"{'strategy':<{width}}  " + "".join(f"{b:>{col}}" for b in benches))
        for s in strategies:
            cells = []
            for b in benches:
                r = cell.get((s, b))
                cells.append(f"{_num(r['tau'])} / {_num(r['speedup'], 2, 'x')}" if r else "–")
            lines.append(f"{s:<{width}}  " + "".join(f"{c:>{col}}" for c in cells))
        analysed = [r for r in at_t if r.get("routing_accuracy")]
        if analysed:
            lines.append("routing accuracy against the oracle (per step / per turn):")
            lines += [f"  {r['strategy']:<{width}} {r['benchmark']:<10} {_pct(r['routing_accuracy']['accuracy']):>5} / "
                      f"{_pct(r['routing_accuracy'].get('turn_accuracy')):>5}" for r in analysed]
        lines.append("")
    g = summary["greedy_check"]
    verdict = "OK" if not g["mismatches"] else "FAILED"
    lines.append(f"greedy token equality with the baseline: {verdict} "
                 f"({g['mismatches']} mismatch(es) in {g['records_checked']} greedy records)")
    for f in summary["failures"]:
        lines.append(f"  FAIL {f['benchmark']}/{f['prompt_id']} {f['strategy']}: {f['problem']}")
    return "\n".join(lines)
