# run from the repository root: PYTHONPATH=. .venv/bin/python docs/results/amx-2026-12-05d/attention_ab.py
# the bf16 attention kernel before this session (/tmp/attention_kernel.orig.c: `git show 2433808:runtime/attention_kernel.c`)
# against the working tree, one thread, 9 heads / 3 kv heads / dim 64, 300 cached keys + the rows, microseconds a call
import ctypes, time, torch, sys, subprocess
import runtime.native as native
from trees import attention_mask
torch.set_num_threads(1)
libs = {}
for name, src in (("old", "/tmp/attention_kernel.orig.c"), ("new", "runtime/attention_kernel.c")):
    out = f"/tmp/attn_{name}.so"
    subprocess.run(["gcc", *native.FLAGS, "-o", out, src, "-lm"], check=True)
    lib = ctypes.CDLL(out); fn = lib.invariant_attention
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    fn.argtypes = [ptr, i64, i64, ptr, ptr, i64, i64, ptr, i64, ptr, i32, i32, i32, i32, i32, ctypes.c_float, i32, ptr]
    libs[name] = (lib, 4 if name == "old" else 8)
g = torch.Generator().manual_seed(0)
ctx = 300
for n in (1, 16, 32):
    s = ctx + n
    q = torch.randn(1, 9, n, 64, generator=g).bfloat16(); k = torch.randn(1, 3, s, 64, generator=g).bfloat16(); v = torch.randn(1, 3, s, 64, generator=g).bfloat16()
    mask = None if n == 1 else attention_mask(torch.ones(n, n, dtype=torch.bool).tril(), ctx, torch.bfloat16)
    res = {}
    for name, (lib, block) in libs.items():
        out = torch.empty(n, 9, 64, dtype=torch.bfloat16)
        work = torch.empty((2 * 3 * 64 + block) * (s + 16), dtype=torch.float32)
        args = (q.data_ptr(), q.stride(1), q.stride(2), k.data_ptr(), v.data_ptr(), k.stride(1), k.stride(2),
                None if mask is None else mask.data_ptr(), 0 if mask is None else mask.stride(0), out.data_ptr(), 9, 3, n, s, 64, 0.125, 1, work.data_ptr())
        best = 1e9
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(30): lib.invariant_attention(*args)
            best = min(best, (time.perf_counter() - t0) / 30)
        res[name] = best
    print(f"rows {n}: old {res['old']*1e6:.0f} us, new {res['new']*1e6:.0f} us")
