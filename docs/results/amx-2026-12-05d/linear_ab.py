# run from the repository root: PYTHONPATH=. .venv/bin/python docs/results/amx-2026-12-05d/linear_ab.py [threads]
# One bf16 linear, weights streamed from memory (many distinct copies), the AMX kernel
# (runtime/native_linear.py) against oneDNN's packed linear as runtime/prepacked.py ran it before (layout
# hint 8, at least 4 rows): best of 5 passes, ms per call and the weight bytes read per second.
import sys, time, torch
from runtime import native_linear as amx
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
assert amx.amx_ready(), "no AMX kernel here"
for n, k, count in ((1536, 576, 60), (576, 1536, 60), (49152, 576, 2)):
    ws = [(torch.randn(n, k) / k ** 0.5).bfloat16() for _ in range(count)]
    packed = [amx.AmxWeight(w) for w in ws]
    dnn = [torch.ops.mkldnn._reorder_linear_weight(w, 8) for w in ws]
    for rows in (1, 4, 16, 32, 64):
        x = torch.randn(rows, k).bfloat16()
        xd = x if rows >= 4 else torch.cat([x, x.new_zeros(4 - rows, k)])
        best = {}
        for name, fn in (("onednn", lambda i: torch.ops.mkldnn._linear_pointwise(xd, dnn[i], None, "none", [], "")),
                         ("amx", lambda i: amx.linear(x, packed[i], None))):
            t = 1e9
            for _ in range(5):
                t0 = time.perf_counter()
                for i in range(count):
                    fn(i)
                t = min(t, (time.perf_counter() - t0) / count)
            best[name] = t
        print(f"{n}x{k} rows {rows:3d}: oneDNN {best['onednn']*1e3:.3f} ms ({n*k*2/best['onednn']/1e9:.1f} GB/s)"
              f"  AMX {best['amx']*1e3:.3f} ms ({n*k*2/best['amx']/1e9:.1f} GB/s)  ratio {best['onednn']/best['amx']:.2f}")
