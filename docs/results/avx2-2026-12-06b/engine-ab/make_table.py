import json, collections, sys
def load(path):
    rows = [json.loads(l) for l in open(path + "/results.jsonl")]
    agg = collections.defaultdict(lambda: [0, 0.0, 0, 0])
    for r in rows:
        k = (r["strategy"], r["benchmark"])
        agg[k][0] += sum(t["new_tokens"] for t in r["turns"]); agg[k][1] += r["wall_seconds"]
        agg[k][2] += sum(len(t["tree_sizes"]) for t in r["turns"])
    return agg
runs = {n: load(f"" + str(__import__("pathlib").Path(__file__).parent / n) + "") for n in ("new1", "base1", "new2", "base2")}
strats = ["autoregressive", "single:math", "single:chat", "confidence", "merged_tree"]
print("| strategy | benchmark | " + " | ".join(f"{n} tok/s (x AR) τ" for n in runs) + " |")
print("|---|---|" + "---:|" * len(runs))
for b in ("gsm8k", "mtbench"):
    for s in strats:
        cells = []
        for n, a in runs.items():
            tok, sec, steps, _ = a[(s, b)]; ar = a[("autoregressive", b)]
            cells.append(f"{tok/sec:.1f} ({(tok/sec)/(ar[0]/ar[1]):.2f}x) {tok/steps:.2f}")
        print(f"| {s} | {b} | " + " | ".join(cells) + " |")
