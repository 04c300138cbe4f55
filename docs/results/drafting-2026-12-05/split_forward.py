# run from the repository root: PYTHONPATH=. .venv/bin/python docs/results/drafting-2026-12-05/split_forward.py [threads] [dtype]
# Where a target forward's time goes (1 and 16 rows after a 300-token context): packed linears,
# attention, everything else (norms, rotation, activation, Python), by timing each call.
import sys, time, os, torch
from compose import Composer
from runtime import prepacked, native
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
dt = sys.argv[2] if len(sys.argv) > 2 else "bfloat16"
torch.set_num_threads(threads)
c = Composer("smollm2-135m-instruct", drafters={}, dtype=dt, threads=threads)
dec = c.target.decoder if hasattr(c.target, "decoder") else c.target._decoder
acc = {"linear": 0.0, "attention": 0.0}
def timed(fn, key):
    def w(*a, **k):
        t = time.perf_counter(); r = fn(*a, **k); acc[key] += time.perf_counter() - t; return r
    return w
from runtime import kv as kvmod
from runtime.kv import KVCache
prepacked.apply = timed(prepacked.apply, "linear")
import runtime.plan as plan_mod
plan_mod.prepacked = prepacked
dec.attend = timed(dec.attend, "attention")
cfg = dec
ids = torch.randint(0, 49152, (300,))
torch.set_grad_enabled(False)
for rows in (1, 16, 32):
    best = None
    for rep in range(7):
        cache = KVCache(dec.num_layers, dec.n_kv, dec.head_dim, dec.dtype, torch.device("cpu"), capacity=400)
        dec.forward(ids, torch.arange(300), cache, None)
        acc["linear"] = acc["attention"] = 0.0
        t = time.perf_counter()
        dec.forward(torch.randint(0, 49152, (rows,)), torch.arange(300, 300 + rows), cache, None)
        total = time.perf_counter() - t
        if best is None or total < best[0]:
            best = (total, acc["linear"], acc["attention"])
    total, lin, att = best
    print(f"{dt} threads {threads} rows {rows:2d}: total {total*1e3:6.2f} ms  linears {lin*1e3:6.2f}  attention {att*1e3:5.2f}  rest {(total-lin-att)*1e3:5.2f}  load {os.getloadavg()[0]:.2f}")
