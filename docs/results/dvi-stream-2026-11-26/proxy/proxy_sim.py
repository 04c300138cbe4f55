"""Usage: proxy_sim.py DATA K VARIANT_JSON. Fast proxy of online learning: teacher-forced features, tree acceptance ~ target token within the drafter's top-k per level."""
import sys, time, json, math, torch
import torch.nn.functional as F
from drafters.assets import load_target
from drafters.online import LearnConfig, OnlineLearner, Example
torch.set_num_threads(1)
path, K = sys.argv[1], int(sys.argv[2])
variant = json.loads(sys.argv[3])  # {"adapter": "lora_head"|"lens"|"none", "rank":16, "lr":..., "schedule":..., ...}
D, TOPK = variant.get("depth", 3), variant.get("topk", 3)
model, _ = load_target("smollm2-135m-instruct")
data = torch.load(path)
norm, W = model.model.norm, model.lm_head.weight
d, V = W.shape[1], W.shape[0]
g = torch.Generator().manual_seed(0)
kind = variant.get("adapter", "lora_head"); r = variant.get("rank", 16); scale = variant.get("alpha", 32) / r
params = []
if kind == "lora_head":
    A = torch.nn.Parameter(torch.randn(r, d, generator=g) / math.sqrt(d)); B = torch.nn.Parameter(torch.zeros(V, r)); params = [A, B]
    def feats(h):
        with torch.no_grad():
            hn = norm(h); return {"hn": hn, "base": hn @ W.T}
    def logits(f): return f["base"] + (f["hn"] @ A.T) @ B.T * scale
elif kind == "lens":
    M = torch.nn.Parameter(torch.zeros(d, d)); b = torch.nn.Parameter(torch.zeros(d)); params = [M, b]
    def feats(h): return {"h": h}
    def logits(f): return norm(f["h"] + f["h"] @ M.T + b) @ W.T
elif kind == "both":
    A = torch.nn.Parameter(torch.randn(r, d, generator=g) / math.sqrt(d)); B = torch.nn.Parameter(torch.zeros(V, r))
    M = torch.nn.Parameter(torch.zeros(d, d)); b = torch.nn.Parameter(torch.zeros(d)); params = [A, B, M, b]
    def feats(h): return {"h": h}
    def logits(f):
        hn = norm(f["h"] + f["h"] @ M.T + b); return hn @ W.T + (hn @ A.T) @ B.T * scale
else:
    def feats(h):
        with torch.no_grad(): return {"base": norm(h) @ W.T}
    def logits(f): return f["base"]
lc = LearnConfig(**variant.get("learning", {}))
learner = OnlineLearner(params, logits, lc) if params else None
taus = []; t0 = time.time(); learn_t = 0.0
for rec in data:
    h = rec["h"][K].float(); tl = rec["logits"].float(); T = h.shape[0]
    targets = rec["ids"][rec["start"] + 1:]
    t = 0; steps = emitted = 0
    while t < T:
        rows = list(range(t, min(t + D, T)))
        f = feats(h[rows])
        with torch.no_grad():
            q = logits(f)
        top = q.topk(TOPK, dim=-1).indices
        a = 0
        while a < len(rows) and bool((top[a] == targets[t + a]).any()):
            a += 1
        steps += 1; emitted += a + 1
        if learner is not None:
            t1 = time.perf_counter()
            ex = []
            for j in range(min(a + 1, len(rows))):
                ch, rw = top[j], (top[j] == targets[t + j]).float()
                if variant.get("bonus") and not bool(rw.any()):
                    ch, rw = torch.cat([ch, targets[t + j:t + j + 1]]), torch.cat([rw, torch.ones(1)])
                ex.append(Example({k: v[j] for k, v in f.items()}, tl[t + j], ch, rw))
            learner.observed(ex)
            learn_t += time.perf_counter() - t1
        t += a + 1
    taus.append(emitted / steps)
n = len(taus); q4 = n // 4
print(json.dumps({"variant": variant, "K": K, "tau_first": sum(taus[:q4]) / q4, "tau_last": sum(taus[-q4:]) / q4,
                  "tau_all": sum(taus) / n, "learn_s": round(learn_t, 1), "wall": round(time.time() - t0, 1),
                  "curve": [round(sum(taus[i:i+8]) / len(taus[i:i+8]), 3) for i in range(0, n, 8)]}), flush=True)
