"""PNG plots from summary rows (matplotlib, Agg backend; each file written atomically)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from runtime.atomic import written  # noqa: E402

from .metrics import ALL_BENCHMARKS  # noqa: E402
from .records import BASELINE  # noqa: E402
from .report import PLOTS, _temperature_label  # noqa: E402


def _save(fig, path: Path) -> None:
    with written(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _pooled(rows: list[dict], temperature: float) -> list[dict]:
    at_t = [r for r in rows if r["temperature"] == temperature]
    name = ALL_BENCHMARKS if any(r["benchmark"] == ALL_BENCHMARKS for r in at_t) else at_t[0]["benchmark"]
    return [r for r in at_t if r["benchmark"] == name]


def plot_tau(rows: list[dict], path: Path) -> None:
    temps = sorted({r["temperature"] for r in rows})
    fig, axes = plt.subplots(1, len(temps), figsize=(6.5 * len(temps), 4.2), squeeze=False, layout="constrained")
    for ax, t in zip(axes[0], temps):
        at_t = [r for r in rows if r["temperature"] == t and r["strategy"] != BASELINE]
        benches = list(dict.fromkeys(r["benchmark"] for r in at_t))
        strategies = list(dict.fromkeys(r["strategy"] for r in at_t))
        width = 0.8 / max(1, len(strategies))
        cell = {(r["strategy"], r["benchmark"]): r["tau"] for r in at_t}
        for i, s in enumerate(strategies):
            xs = [b + (i - (len(strategies) - 1) / 2) * width for b in range(len(benches))]
            ax.bar(xs, [cell.get((s, b)) or 0 for b in benches], width, label=s)
        ax.axhline(1.0, color="black", lw=0.8, ls="--", label=f"{BASELINE} (τ = 1)")
        ax.set_xticks(range(len(benches)), benches)
        ax.set_ylabel("τ (tokens per verifier forward)")
        ax.set_title(_temperature_label(t))
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle("τ per strategy and benchmark")
    _save(fig, path)


def plot_acceptance(rows: list[dict], path: Path) -> None:
    temps = sorted({r["temperature"] for r in rows})
    fig, axes = plt.subplots(2, len(temps), figsize=(6 * len(temps), 7), squeeze=False, layout="constrained")
    for col, t in enumerate(temps):
        for row, kind in enumerate(("unconditional", "conditional")):
            ax = axes[row][col]
            for r in _pooled(rows, t):
                if r["strategy"] == BASELINE:
                    continue
                values = [v if v is not None else float("nan") for v in r["acceptance"][kind]]
                ax.plot(range(1, len(values) + 1), values, marker="o", label=r["strategy"])
            ax.set_ylim(0, 1.05)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_xlabel("draft depth")
            ax.set_ylabel(f"acceptance ({kind})")
            ax.set_title(f"{_temperature_label(t)}, {kind}")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle("Acceptance per depth (all benchmarks pooled)")
    _save(fig, path)


def plot_routing(rows: list[dict], path: Path) -> None:
    """Routing choices and accepted-token shares per strategy; with analysis-mode data, a third
    row of routing accuracy against the oracle, per step and per turn."""
    temps = sorted({r["temperature"] for r in rows})
    analysed = any(r.get("routing_accuracy") for r in rows)
    n_rows = 3 if analysed else 2
    fig, axes = plt.subplots(n_rows, len(temps), figsize=(6.5 * len(temps), 3.5 * n_rows), squeeze=False,
                             layout="constrained")
    for col, t in enumerate(temps):
        pooled = [r for r in _pooled(rows, t) if r["strategy"] != BASELINE]
        for row, (field, title) in enumerate((("routing_shares", "routing choices (share of forwards)"),
                                              ("drafter_shares", "share of accepted draft tokens proposed by"))):
            ax = axes[row][col]
            shown = [r for r in pooled if r[field]]
            names = sorted({n for r in shown for n in r[field]})
            height = 0.8 / max(1, len(names))
            for i, name in enumerate(names):
                values = [r[field].get(name, 0) for r in shown]
                if field == "routing_shares":  # choices partition the forwards: stack them
                    left = [sum(r[field].get(n, 0) for n in names[:i]) for r in shown]
                    ax.barh(range(len(shown)), values, left=left, label=name)
                else:  # a token proposed by several drafters counts for each: side by side
                    ax.barh([y + (i - (len(names) - 1) / 2) * height for y in range(len(shown))], values, height,
                            label=name)
            ax.set_yticks(range(len(shown)), [r["strategy"] for r in shown])
            ax.set_title(f"{_temperature_label(t)}: {title}")
            if not shown:
                ax.text(0.5, 0.5, "none recorded", ha="center", va="center", transform=ax.transAxes)
            elif names:
                ax.legend(fontsize=8, loc="lower right")
        if analysed:
            plot_accuracy(axes[2][col], [r for r in pooled if r.get("routing_accuracy")], t)
    fig.suptitle("Routing and drafter shares (all benchmarks pooled)")
    _save(fig, path)


def plot_accuracy(ax, shown: list[dict], temperature: float) -> None:
    """Routing accuracy against the oracle per strategy: per step and per turn, side by side."""
    for i, (key, label) in enumerate((("accuracy", "per step"), ("turn_accuracy", "per turn"))):
        values = [r["routing_accuracy"].get(key) or 0.0 for r in shown]
        ax.barh([y + (i - 0.5) * 0.4 for y in range(len(shown))], values, 0.4, label=label)
    ax.set_yticks(range(len(shown)), [r["strategy"] for r in shown])
    ax.set_xlim(0, 1)
    ax.set_title(f"{_temperature_label(temperature)}: routing accuracy against the oracle")
    if shown:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no analysed routing (greedy runs only)", ha="center", va="center", transform=ax.transAxes)


def write_plots(summary: dict, out_dir: Path) -> list[Path]:
    rows = summary["rows"]
    if not rows:
        return []
    paths = {name: Path(out_dir) / file for name, file in PLOTS.items()}
    plot_tau(rows, paths["tau"])
    plot_acceptance(rows, paths["acceptance"])
    plot_routing(rows, paths["routing"])
    return list(paths.values())
