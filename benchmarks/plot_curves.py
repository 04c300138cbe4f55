"""Plot the suite's learning curves: held-out chain τ and first-step agreement against training
tokens seen, one line per held-out set (drafters/training/suite_training.py LearningCurve).

    python benchmarks/plot_curves.py RUN_DIR_OR_CURVE_JSONL [...] --out curve.png [--start MANIFEST]

`--start` adds the point at 0 tokens from a checkpoint's manifest (its held-out metrics), for a
run that continues that checkpoint (`final_init_from`). Prints the points as a markdown table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_curve(path: Path) -> list[dict]:
    path = path / "curve.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_point(manifest: Path) -> dict:
    m = json.loads(manifest.read_text())["metrics"]
    point = {"step": 0, "tokens_seen": 0}
    for d in ("math", "chat"):
        point[f"{d}_chain_tau"] = m[f"heldout_{d}"]["chain_tau"]
        point[f"{d}_acc_0"] = m[f"heldout_{d}"]["acc_0"]
    return point


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--start", type=Path, default=None, help="manifest.json of the checkpoint the run continued")
    p.add_argument("--title", default="held-out learning curve")
    args = p.parse_args()
    fig, (ax_tau, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for run in args.runs:
        points = ([start_point(args.start)] if args.start else []) + read_curve(run)
        tokens = [pt["tokens_seen"] / 1e6 for pt in points]
        for d in ("math", "chat"):
            ax_tau.plot(tokens, [pt[f"{d}_chain_tau"] for pt in points], marker="o", label=f"{run.name}: {d}")
            ax_acc.plot(tokens, [pt[f"{d}_acc_0"] for pt in points], marker="o", label=f"{run.name}: {d}")
        print(f"\n{run}\n\n| step | tokens seen | math chain τ | chat chain τ | math acc_0 | chat acc_0 |")
        print("|---:|---:|---:|---:|---:|---:|")
        for pt in points:
            print(f"| {pt['step']} | {pt['tokens_seen']:,} | {pt['math_chain_tau']:.3f} | {pt['chat_chain_tau']:.3f} "
                  f"| {pt['math_acc_0']:.3f} | {pt['chat_acc_0']:.3f} |")
    ax_tau.set(xlabel="training tokens seen (M)", ylabel="held-out chain τ (depth 5)", title=args.title)
    ax_acc.set(xlabel="training tokens seen (M)", ylabel="held-out first-step agreement")
    for ax in (ax_tau, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
