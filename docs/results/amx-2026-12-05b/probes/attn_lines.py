# run from the repository root: PYTHONPATH=. .venv/bin/python docs/results/amx-2026-12-05b/probes/attn_lines.py [args]
import time, torch, statistics
from runtime.invariant import key_blocks, _block_sum, MIN_ROWS
torch.set_num_threads(1)
bf = torch.bfloat16
S, n = 300, 1
q = torch.randn(1, 9, n, 64).to(bf)
cache_k = torch.randn(1, 3, 1024, 64).to(bf); cache_v = torch.randn(1, 3, 1024, 64).to(bf)
keys, values = cache_k[:, :, :S], cache_v[:, :, :S]
blocks = key_blocks(torch.arange(S))
T = {}
def tick(name, t0):
    T.setdefault(name, []).append(time.perf_counter() - t0); return time.perf_counter()
for it in range(300):
    t = time.perf_counter()
    _, heads, n, hd = q.shape; kv, s = keys.shape[1], keys.shape[2]; group = heads // kv; rows = group * n
    qf = torch.zeros(kv, max(rows, MIN_ROWS), hd, dtype=torch.float32)
    qf[:, :rows].view(kv, group, n, hd).copy_(q[0].unflatten(0, (kv, group)))
    t = tick("qf", t)
    kf = keys[0].float()
    t = tick("keys.float", t)
    scores = torch.matmul(qf, kf.transpose(1, 2))[:, :rows] * 0.125
    t = tick("scores", t)
    scores = scores.view(kv, group, n, s)
    weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True)).view(kv, rows, s)
    t = tick("exp", t)
    total = None
    for cols in blocks:
        part = _block_sum(weights, values[0], cols)
        total = part if total is None else total + part
    t = tick("blocks", t)
    out = total[..., :hd] / total[..., hd:]
    out.view(1, heads, n, hd).to(q.dtype)
    t = tick("out", t)
for k, v in T.items(): print(f"{k:12s} {statistics.median(v[50:])*1e6:7.1f} us")
from runtime.invariant import KEY_SPACING, KEY_QUANTUM, _width
T.clear()
for it in range(300):
    for cols in blocks:
        t = time.perf_counter()
        kvh, rows_, hd_ = weights.shape[0], weights.shape[1], values.shape[3]
        count = _width(cols, weights.shape[2]); used = KEY_SPACING * count; width = used + -used % KEY_QUANTUM
        w = torch.zeros(kvh, rows_, width, dtype=torch.bfloat16)
        t = tick(f"zeros w {count}", t)
        w[..., :used:KEY_SPACING] = weights[..., cols]
        t = tick(f"assign w {count}", t)
        x = torch.zeros(kvh, width, hd_ + 1, dtype=torch.bfloat16)
        t = tick(f"zeros x {count}", t)
        x[:, :used:KEY_SPACING, :hd_] = values[0][:, cols]
        x[:, :used:KEY_SPACING, hd_] = 1
        t = tick(f"fill x {count}", t)
        r = torch.matmul(w, x)
        t = tick(f"bmm {count}", t)
        r.float()
        t = tick(f"float {count}", t)
print()
for k, v in T.items(): print(f"{k:16s} {statistics.median(v[50:])*1e6:7.1f} us")
