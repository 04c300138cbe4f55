# run from the repository root: PYTHONPATH=. .venv/bin/python docs/results/amx-2026-12-05c/omp_ab.py [rounds]
# A/B in one process, alternating order each round: the attention kernel's OpenMP threads for
# large calls (runtime.native.PARALLEL_WORK) against one thread always; bf16 default target,
# 2 torch threads, plain decoding and the default strategy over GSM8K and MT-Bench prompts.
import os, sys, time
import torch
sys.path.insert(0, "benchmarks")
import runtime.native as native
from compose import Composer, default_drafters
from bench_precision import prompts
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
torch.set_num_threads(2)
c = Composer("smollm2-135m-instruct", drafters=default_drafters("smollm2-135m-instruct"), dtype="bfloat16", threads=None)
items = prompts(2, ["gsm8k", "mtbench"])
setting = {"openmp": native.PARALLEL_WORK, "one thread": 10**15}
tot = {}
c.generate(c.encode([{"role": "user", "content": items[0][1]}]), max_new_tokens=16)
for r in range(rounds):
    order = list(setting) if r % 2 == 0 else list(setting)[::-1]
    for name in order:
        native.PARALLEL_WORK = setting[name]
        for _, text in items:
            ids = c.encode([{"role": "user", "content": text}])
            for strat in ("autoregressive", None):
                out = c.generate(ids, max_new_tokens=64, **({"strategy": strat} if strat else {}))
                k = (name, strat or "default")
                n, t = tot.get(k, (0, 0.0))
                tot[k] = (n + len(out.token_ids), t + out.stats.total_time)
print(f"load average {os.getloadavg()}")
for k, (n, t) in sorted(tot.items()):
    print(k, f"{n / t:.1f} tok/s")
