"""Compact composition table (tau / speed-up per benchmark) from the three eval runs:
A (math + chat), B (mixed), C (math + chat, merge equal). `python make_table.py [FOLDER]`
(default: this folder); docs/results/composition-retrained-2026-11-26 reuses it."""
import json
import sys
from pathlib import Path

RUNS = ("A", "B", "C")
BENCHES = ["gsm8k", "mtbench", "humaneval", "math", "all"]
ORDER = ["autoregressive", "single:math", "single:chat", "single:mixed", "averaged", "confidence", "entropy",
         "online", "domain", "merged_tree (sum)", "merged_tree (equal)"]


def rows_of(folder: Path) -> dict:
    rows = {}
    for run in RUNS:
        for r in json.load(open(folder / run / "summary.json"))["rows"]:
            name = r["strategy"]
            if name == "autoregressive" and run != "A":
                continue
            if run == "C":
                name = "merged_tree (equal)"
            elif name == "merged_tree":
                name = "merged_tree (sum)"
            rows.setdefault((r["temperature"], name), {})[r["benchmark"]] = (r["tau"], r["speedup"])
    return rows


def print_tables(folder: Path) -> None:
    rows = rows_of(folder)
    for T in (0.0, 1.0):
        print(f"\n**T = {T:g}** — τ / speed-up over autoregressive (same run)\n")
        print("| strategy | " + " | ".join(BENCHES) + " |")
        print("|---|" + "---|" * len(BENCHES))
        for name in ORDER:
            cells = rows.get((T, name), {})
            if cells:
                print(f"| {name} | " + " | ".join(f"{cells[b][0]:.2f} / {cells[b][1]:.2f}x" if b in cells else "–"
                                                 for b in BENCHES) + " |")


if __name__ == "__main__":
    print_tables(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
