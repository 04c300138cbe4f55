# run from the repository root: PYTHONPATH=. .venv/bin/python docs/results/amx-2026-12-05b/probes/hint.py [args]
"""Does the packed layout's batch hint change the small-row bf16 kernel's speed, and do rows stay
bit-identical across 1..32 rows on each hint? Streams a model's worth of distinct weights (so the
weights come from memory, as in decoding)."""
import os, sys, time, statistics
import torch
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
torch.manual_seed(0)
bf = torch.bfloat16
shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]
weights = [(torch.randn(o, i) * 0.05).to(bf) for o, i in shapes]
gbytes = sum(w.numel() * 2 for w in weights) / 1e9
def kernel(x, p): return torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
res = {}
for hint in (1, 4, 8, 16, 32):
    with torch.inference_mode():
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, hint) for w in weights]
        xs = {i: torch.randn(32, i).to(bf) for i in (576, 1536)}
        # invariance: row r of an m-row call == row r computed in a 4-row call (its padded form)
        bad = 0
        for w, p in zip(weights[:4] + weights[-1:], packed[:4] + packed[-1:]):
            x = xs[w.shape[1]]
            ref = torch.cat([kernel(torch.cat([x[r:r+1], x.new_zeros(3, x.shape[1])]), p)[:1] for r in range(32)])
            for m in range(4, 33):
                bad += int(not torch.equal(kernel(x[:m], p), ref[:m]))
        times = {}
        for rows in (4, 32):
            ts = []
            for rep in range(5):
                t = time.perf_counter()
                for w, p in zip(weights, packed):
                    kernel(xs[w.shape[1]][:rows], p)
                ts.append(time.perf_counter() - t)
            times[rows] = statistics.median(ts[1:]) * 1e3
    print(f"hint {hint:2d}: rows 4 {times[4]:6.1f} ms ({gbytes / times[4] * 1e3:4.1f} GB/s)  rows 32 {times[32]:6.1f} ms  "
          f"non-invariant row counts {bad} of {5 * 29}  load {os.getloadavg()[0]:.2f}", flush=True)
    del packed
