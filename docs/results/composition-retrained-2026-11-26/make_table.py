"""Compact composition table (tau / speed-up per benchmark) from the three eval runs (A, B, C)."""
import json, sys
from pathlib import Path
here = Path(__file__).parent
runs = {"A": "math+chat", "B": "mixed", "C": "math+chat, merge equal"}
rows = {}
for run in runs:
    s = json.load(open(f"{here}/{run}/summary.json"))
    for r in s["rows"]:
        name = r["strategy"]
        if name == "autoregressive" and run != "A":
            continue
        if run == "C":
            name = "merged_tree (equal)"
        elif name == "merged_tree":
            name = "merged_tree (sum)"
        rows.setdefault((r["temperature"], name), {})[r["benchmark"]] = (r["tau"], r["speedup"])
benches = ["gsm8k", "mtbench", "humaneval", "math", "all"]
order = ["autoregressive", "single:math", "single:chat", "single:mixed", "averaged", "confidence", "entropy", "online", "domain",
         "merged_tree (sum)", "merged_tree (equal)"]
for T in (0.0, 1.0):
    print(f"\n**T = {T:g}** — τ / speed-up over autoregressive (same run)\n")
    print("| strategy | " + " | ".join(benches) + " |")
    print("|---|" + "---|" * len(benches))
    for name in order:
        cells = rows.get((T, name), {})
        if not cells:
            continue
        print(f"| {name} | " + " | ".join(f"{cells[b][0]:.2f} / {cells[b][1]:.2f}x" if b in cells else "–" for b in benches) + " |")
