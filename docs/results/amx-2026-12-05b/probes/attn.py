# run from the repository root: PYTHONPATH=. .venv/bin/python docs/results/amx-2026-12-05b/probes/attn.py [args]
import time, torch, statistics
import torch.nn.functional as F
from runtime.invariant import invariant_attention, key_blocks
torch.set_num_threads(1)
bf = torch.bfloat16
for S in (300, 600):
    for n in (1, 32):
        q = torch.randn(1, 9, n, 64).to(bf); k = torch.randn(1, 3, S, 64).to(bf); v = torch.randn(1, 3, S, 64).to(bf)
        blocks = key_blocks(torch.arange(S))
        mask = torch.zeros(n, S, dtype=bf)
        def inv(): invariant_attention(q, k, v, mask if n > 1 else None, blocks, 0.125)
        def sdpa(): F.scaled_dot_product_attention(q, k, v, attn_mask=mask if n > 1 else None, enable_gqa=True, scale=0.125)
        res = {}
        for name, f in (("inv", inv), ("sdpa", sdpa)):
            for _ in range(20): f()
            ts = []
            for _ in range(200):
                t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
            res[name] = statistics.median(ts) * 1e6
        print(f"S {S} n {n}: invariant {res['inv']:.0f} us, sdpa {res['sdpa']:.0f} us  (x30 layers: {res['inv']*30/1e3:.1f} ms vs {res['sdpa']*30/1e3:.1f} ms)")
