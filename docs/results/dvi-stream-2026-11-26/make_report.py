"""Rebuild this folder's table and the math plot (both learning variants) from the three runs:
`python make_report.py` (from this folder, with specmux importable)."""
import json
from pathlib import Path

from eval.stream import StreamConfig, plot_tau_over_time

HERE = Path(__file__).parent
RUNS = {"math": ["math", "math_kl"], "chat": ["chat"]}  # folders of one domain: the first has the frozen runs
RUNS = {d: [f for f in folders if (HERE / f / "summary.json").exists()] for d, folders in RUNS.items()}
RUNS = {d: folders for d, folders in RUNS.items() if folders}


def table() -> None:
    print("| domain | run | τ first 50 | τ last 50 | x early-exit | τ on the frozen 25 | x early-exit (paired) | learning overhead | speed vs autoregressive |")
    print("|---|---|---|---|---|---|---|---|---|")
    for domain, folders in RUNS.items():
        for folder in folders:
            s = json.loads((HERE / folder / "summary.json").read_text())
            for run, f in s["runs"].items():
                w = f["window"]
                fr = f["frozen"] if f.get("frozen", {}).get("prompts") else w
                first = f"{f['first']['tau']:.3f}" if "first" in f else "–"
                ratio = f"{w['tau_vs_early_exit']:.2f}" if "tau_vs_early_exit" in w else "–"
                paired = f"{fr['tau_vs_early_exit_paired']:.2f}" if "tau_vs_early_exit_paired" in fr else "–"
                speed = f"{w['speed_vs_autoregressive']:.2f}x" if "speed_vs_autoregressive" in w else "–"
                frozen_tau = f"{fr['tau']:.3f}" if "tau_vs_early_exit_paired" in fr else "–"
                print(f"| {domain} | {run} | {first} | {w['tau']:.3f} | {ratio} | {frozen_tau} | {paired} | "
                      f"{w['learn_overhead']:.1%} | {speed} |")
    for domain, folders in RUNS.items():
        for folder in folders:
            s = json.loads((HERE / folder / "summary.json").read_text())
            loads = ", ".join(f"{p['from']}–{p['to']}: {p['load_average_start'][0]:.2f}→{p['load_average_end'][0]:.2f}"
                              for p in s["pieces"])
            checked = s["runs"].get("autoregressive", {}).get("window", {}).get("prompts", 0)
            check = (f"greedy mismatches against autoregressive on {checked} prompts: {len(s['greedy_mismatches'])}"
                     if checked else "no autoregressive run (see the cross-run check below)")
            print(f"- {folder}: {check}; load average (1 min) per piece: {loads}")


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


def greedy_check() -> None:
    """Greedy decoding is lossless only if every run's output equals plain decoding's: within a
    domain, all runs must give the same tokens for a prompt (autoregressive ran on the last 25)."""
    for domain, folders in RUNS.items():
        outputs: dict[int, set] = {}
        for folder in folders:
            for line in (HERE / folder / "stream.jsonl").read_text().splitlines():
                r = json.loads(line)
                outputs.setdefault(r["index"], set()).add(r["tokens_sha1"])
        differing = sorted(i for i, hashes in outputs.items() if len(hashes) > 1)
        print(f"- {domain}: {len(outputs)} prompts, outputs differing between runs: {differing or 'none'}")


def plot() -> None:
    for domain, folders in RUNS.items():
        records = [json.loads(line) for folder in folders for line in (HERE / folder / "stream.jsonl").read_text().splitlines()]
        config = StreamConfig.model_validate(json.loads((HERE / folders[0] / "config.json").read_text()))
        plot_tau_over_time(records, config, HERE / f"tau_over_time_{domain}.png")


if __name__ == "__main__":
    table()
    step_cost()
    greedy_check()
    plot()
