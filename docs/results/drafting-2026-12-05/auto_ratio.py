"""tree="auto" over the best of the fixed trees, per benchmark and strategy, from bench_drafting.py's auto section output."""
import re
import sys

for path in sys.argv[1:]:
    section, rows = None, {}
    for line in open(path):
        m = re.match(r"### tree=\"auto\" vs fixed trees on (\w+)", line)
        if m:
            section = m.group(1)
        m = re.match(r"\| (single \w+|merged_tree) \| (.+?) \| ([\d.]+)x \| ([\d.]+) \|", line)
        if m and section:
            rows.setdefault((section, m.group(1)), []).append((m.group(2).strip(), float(m.group(3))))
    print(path)
    for (section, strategy), cells in rows.items():
        auto = dict(cells).get("auto")
        tree, best = max(((t, r) for t, r in cells if t != "auto"), key=lambda c: c[1])
        print(f"  {section} {strategy}: auto {auto:.2f}x, best fixed {best:.2f}x ({tree}), auto/best {auto / best:.2f}")
