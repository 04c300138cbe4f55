# run from the repository root: PYTHONPATH=. .venv/bin/python docs/results/amx-2026-12-05b/probes/prof_decode.py [args]
import sys, time, os, torch
from compose import Composer
torch.set_num_threads(1)
dt = sys.argv[1] if len(sys.argv) > 1 else "bfloat16"
c = Composer("smollm2-135m-instruct", drafters={}, dtype=dt, threads=None)
prompt = "Write a long story about a dragon who learns to bake bread in a small village."
c.generate(prompt, strategy="autoregressive", max_new_tokens=16)
t = time.perf_counter(); r = c.generate(prompt, strategy="autoregressive", max_new_tokens=64); dt_s = time.perf_counter() - t
n = len(r.token_ids) if hasattr(r, "token_ids") else len(r.tokens); print(dt, n, "tokens", "ms/token", dt_s / n * 1e3, "load", os.getloadavg()[0])
import os as _o
if _o.environ.get("NOPROF"): raise SystemExit
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    c.generate(prompt, strategy="autoregressive", max_new_tokens=32)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
