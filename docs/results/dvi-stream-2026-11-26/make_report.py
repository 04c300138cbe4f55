"""Rebuild this folder's table and the math plot (both learning variants) from the three runs:
`python make_report.py` (from this folder, with specmux importable)."""
import json
from pathlib import Path

from eval.stream import StreamConfig, plot_tau_over_time

HERE = Path(__file__).parent
RUNS = {"math": ["math", "math_kl"], "chat": ["chat"]}


def table() -> None:
    print("| domain | run | τ first 50 | τ last 50 | x early-exit | τ on the frozen 25 | x early-exit (paired) | learning overhead | speed vs autoregressive |")
    print("|---|---|---|---|---|---|---|---|---|")
    for domain, folders in RUNS.items():
        for folder in folders:
            s = json.loads((HERE / folder / "summary.json").read_text())
            for run, f in s["runs"].items():
                w, fr = f["window"], f.get("frozen", f["window"])
                first = f"{f['first']['tau']:.3f}" if "first" in f else "–"
                ratio = f"{w['tau_vs_early_exit']:.2f}" if "tau_vs_early_exit" in w else "–"
                paired = f"{fr['tau_vs_early_exit_paired']:.2f}" if "tau_vs_early_exit_paired" in fr else "–"
                speed = f"{w['speed_vs_autoregressive']:.2f}x" if "speed_vs_autoregressive" in w else "–"
                print(f"| {domain} | {run} | {first} | {w['tau']:.3f} | {ratio} | {fr['tau']:.3f} | {paired} | "
                      f"{w['learn_overhead']:.1%} | {speed} |")
    for domain, folders in RUNS.items():
        for folder in folders:
            s = json.loads((HERE / folder / "summary.json").read_text())
            loads = ", ".join(f"{p['from']}–{p['to']}: {p['load_average_start'][0]:.2f}→{p['load_average_end'][0]:.2f}"
                              for p in s["pieces"])
            print(f"- {folder}: greedy mismatches {len(s['greedy_mismatches'])}; load average (1 min) per piece: {loads}")


def step_cost() -> None:
    """A wider view of the learning overhead: the learner's time per verification step against the
    early-exit drafter's on the same (frozen) prompts: tapping while drafting, example building
    and the optimizer steps all land in it (the trees differ a little: their sizes follow τ)."""
    for domain, folders in RUNS.items():
        records = [json.loads(line) for line in (HERE / folders[0] / "stream.jsonl").read_text().splitlines()]
        frozen = {r["index"] for r in records if r["run"] == "early-exit"}
        per_step = {}
        for run in dict.fromkeys(r["run"] for r in records if r["run"] != "autoregressive"):
            recs = [r for r in records if r["run"] == run and r["index"] in frozen]
            per_step[run] = sum(r["draft"] + r["forward"] + r["verify"] for r in recs) / sum(r["steps"] for r in recs)
        ee = per_step.pop("early-exit")
        for run, t in per_step.items():
            print(f"- {domain} {run}: {1000 * t:.0f} ms per step vs early-exit {1000 * ee:.0f} ms ({t / ee - 1:+.1%})")


def plot() -> None:
    for domain, folders in RUNS.items():
        records = [json.loads(line) for folder in folders for line in (HERE / folder / "stream.jsonl").read_text().splitlines()]
        config = StreamConfig.model_validate(json.loads((HERE / folders[0] / "config.json").read_text()))
        plot_tau_over_time(records, config, HERE / f"tau_over_time_{domain}.png")


if __name__ == "__main__":
    table()
    step_cost()
    plot()
