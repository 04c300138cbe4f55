# run from the repository root: PYTHONPATH=. .venv/bin/python docs/results/amx-2026-12-05c/prof_tree.py [rows] [threads]
# where a bf16 forward of `rows` rows after a 300-token context goes (torch.profiler; ctypes calls
# to the attention kernel show as the time between ops, so it is timed apart)
import sys, time, os, statistics, torch
from compose import Composer
from trees import attention_mask
import runtime.invariant as inv
rows = int(sys.argv[1]) if len(sys.argv) > 1 else 32
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
dec = Composer("smollm2-135m-instruct", drafters={}, dtype="bfloat16", threads=None).target.decoder
g = torch.Generator().manual_seed(0)
ctx = 300
attn_time = []
orig = inv.invariant_attention
def timed(*a):
    t = time.perf_counter(); y = orig(*a); attn_time.append(time.perf_counter() - t); return y
import runtime.decoder as d
with torch.inference_mode():
    cache = dec.new_cache(ctx + 128)
    dec.forward(torch.randint(0, 40000, (ctx,), generator=g), torch.arange(ctx), cache, None)
    for n in (1, rows):
        ids, pos = torch.randint(0, 40000, (n,), generator=g), torch.arange(ctx, ctx + n)
        mask = None if n == 1 else attention_mask(torch.ones(n, n, dtype=torch.bool).tril(), ctx, torch.bfloat16)
        ts = []
        for rep in range(12):
            t = time.perf_counter(); dec.forward(ids, pos, cache, mask); ts.append(time.perf_counter() - t); cache.crop(ctx)
        d.invariant_attention = timed; attn_time.clear()
        dec.forward(ids, pos, cache, mask); cache.crop(ctx)
        d.invariant_attention = orig
        print(f"rows {n}: forward {statistics.median(ts)*1e3:.1f} ms, attention {sum(attn_time)*1e3:.1f} ms ({len(attn_time)} calls), load {os.getloadavg()[0]:.2f}")
if os.environ.get("PROFILE"):
    from torch.profiler import profile, ProfilerActivity
    with torch.inference_mode():
        ids, pos = torch.randint(0, 40000, (rows,), generator=g), torch.arange(ctx, ctx + rows)
        mask = attention_mask(torch.ones(rows, rows, dtype=torch.bool).tril(), ctx, torch.bfloat16)
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(5):
                dec.forward(ids, pos, cache, mask); cache.crop(ctx)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
