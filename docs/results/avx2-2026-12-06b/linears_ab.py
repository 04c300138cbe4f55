"""Interleaved A/B of two builds of runtime/linear_kernel.c in one process (docs/results/avx2-2026-12-06b):

    F="-O3 -march=native -fno-fast-math -fopenmp -fPIC -shared"
    gcc $F -I runtime OLD.c -o /tmp/w/lk_old.so; gcc $F -I runtime NEW.c -o /tmp/w/lk_new.so
    python linears_ab.py 1,2,4,8,16 9    # rows, rounds

SmolLM2-135M's 121 linears (random weights of its shapes) on two threads, best / median ms."""
import sys, time, os, statistics, ctypes
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
import torch
torch.set_num_threads(2)
from runtime import native_linear as nl
libs = {}
for name in ("old", "new"):
    lib = ctypes.CDLL(f"/tmp/w/lk_{name}.so")
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.f32_linear.argtypes = [ptr, i64, i64, i64, ptr, i64, ptr, ptr, i32]
    libs[name] = lib
g = torch.Generator().manual_seed(0)
shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]
ws = [nl.pack(torch.randn(n, k, generator=g) * 0.02) for n, k in shapes]
rows = [int(r) for r in (sys.argv[1] if len(sys.argv) > 1 else "1,2,4,8,16").split(",")]
xs = {r: [torch.randn(r, k, generator=g) for n, k in shapes] for r in rows}
outs = {r: [torch.empty(r, n) for n, k in shapes] for r in rows}
res = {}
for rep in range(int(sys.argv[2]) if len(sys.argv) > 2 else 9):
    for name, lib in libs.items():
        for r in rows:
            t = time.perf_counter()
            for w, x, o, (n, k) in zip(ws, xs[r], outs[r], shapes):
                lib.f32_linear(x.data_ptr(), r, k, k, w.data.data_ptr(), n, None, o.data_ptr(), 2)
            res.setdefault((name, r), []).append((time.perf_counter() - t) * 1e3)
for r in rows:
    a, b = res[("old", r)], res[("new", r)]
    print(r, f"old {min(a):.1f}/{statistics.median(a):.1f}  new {min(b):.1f}/{statistics.median(b):.1f}  ratio(median) {statistics.median(b)/statistics.median(a):.3f}")
print("load", os.getloadavg())
