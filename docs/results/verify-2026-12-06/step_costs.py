# run from the repository root: python docs/results/verify-2026-12-06/step_costs.py mtbench
# merged_tree on 3 items x 64 tokens x 2 rounds: plain decoding, three fixed depth-2 trees and tree="auto",
# per-step medians of draft / forward / verify ms, node counts and tokens/s (where auto loses on MT-Bench)
import sys, torch, statistics
sys.path.insert(0, "benchmarks"); sys.path.insert(1, ".")
from bench_drafting import chat_ids
from prompts import PROMPTS
from compose import Composer, default_drafters
from eval.datasets import load_benchmark, sample_items
torch.set_num_threads(2)
c = Composer("smollm2-135m-instruct", drafters=default_drafters("smollm2-135m-instruct"), threads=2)
bench = sys.argv[1]
kw = dict(strategy="merged_tree")
ids = [chat_ids(c, it.turns[0]) for it in sample_items(load_benchmark(bench), 3, seed=0)]
c.generate(ids[0], max_new_tokens=16, strategy="autoregressive")
trees = {"ar": None, "d2k1b2": dict(depth=2, top_k=1, budget=2), "d2k3b9": dict(depth=2, top_k=3, budget=9), "d2k4b10": dict(depth=2, top_k=4, budget=10), "auto": "auto"}
acc = {k: [] for k in trees}
for rnd in range(2):
    for x in ids:
        for name, tree in trees.items():
            if tree is None:
                r = c.generate(x, max_new_tokens=64, strategy="autoregressive")
            else:
                r = c.generate(x, max_new_tokens=64, tree=tree, **kw)
            acc[name].append(r)
for name, rs in acc.items():
    steps = [s for r in rs for s in r.stats.steps]
    tot = sum(r.stats.total_time for r in rs); toks = sum(len(r.token_ids) for r in rs)
    med = lambda f: statistics.median(f(s) for s in steps) * 1e3
    print(f"{name:8s} tok/s {toks/tot:6.1f} steps {len(steps):4d} tau {toks/len(steps) if steps else 0:.2f} nodes {statistics.mean(s.tree_size for s in steps):5.1f} "
          f"draft {med(lambda s: s.t_draft):5.1f} fwd {med(lambda s: s.t_forward):5.1f} verify {med(lambda s: s.t_verify):4.1f} "
          f"step-sum {1e3*sum(s.t_draft+s.t_forward+s.t_verify for s in steps)/len(steps):5.1f} wall/step {1e3*tot/len(steps):5.1f}")
