import time, os, torch
torch.set_num_threads(2)
from transformers import AutoModelForCausalLM
from runtime import weight_formats as wf
m = AutoModelForCausalLM.from_pretrained(os.path.expanduser("~/.cache/specmux/models/smollm2-135m-instruct"), dtype=torch.float32)
ws = [p.detach() for n, p in m.named_parameters() if p.dim() == 2]
print(len(ws), "weights", sum(w.numel() for w in ws)/1e6, "M values")
def run(fn):
    t = time.perf_counter(); out = []
    for w in ws:
        r = None
        if w.shape[1] % 32 == 0:
            for bits in (4, 8):
                r = fn(w[:4], bits) is not None and fn(w, bits)
                if r: break
        out.append(r or None)
    return time.perf_counter() - t, out
for rnd in range(2):
    tc, oc = run(wf._grid); tr, orf = run(wf._grid_reference)
    print(f"compiled {tc:.3f} s  reference {tr:.3f} s  load {os.getloadavg()[0]:.2f}")
from collections import Counter
print(Counter(o.format if o else None for o in oc))
import sys; sys.path.insert(0, "tests")
from test_weight_formats import _same_grid
print("all equal:", all(_same_grid(a or None, b or None) for a, b in zip(oc, orf)))
t=time.perf_counter(); encs=[wf.encode(w) for w in ws]; print(f"encode() all: {time.perf_counter()-t:.3f} s", Counter(e.format for e in encs))
