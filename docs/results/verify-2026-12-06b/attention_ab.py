# run from the repository root: python docs/results/verify-2026-12-06b/attention_ab.py OLD.so (an earlier build of runtime/attention_kernel.c, from $SPECMUX_HOME/kernels)
"""A/B of two builds of the compiled attention (ctypes, same inputs, interleaved): a 32-node tree's
rows after 300 cached keys, SmolLM2-135M's heads (9 / 3 kv, dim 64), 30 calls = a forward's layers."""
import ctypes, sys, time, statistics, torch
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/benchmarks")
from runtime import native
from bench_verify import random_tree
from trees import ancestor_matrix, attention_mask
new = native.attention_kernel()
old = ctypes.CDLL(sys.argv[1]); old.invariant_attention.argtypes = new.invariant_attention.argtypes; old.invariant_attention.restype = ctypes.c_int
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
ctx, heads, kv, hd = 300, 9, 3, 64
res = {}
for n in (1, 16, 32):
    parents, depths = random_tree(n, g)
    mask = attention_mask(ancestor_matrix(parents, depths), ctx, torch.bfloat16).contiguous() if n > 1 else None
    s = ctx + n
    q = torch.randn(n, heads, hd).to(torch.bfloat16); k = torch.randn(kv, s, hd).to(torch.bfloat16); v = torch.randn(kv, s, hd).to(torch.bfloat16)
    outs = {}
    for name, lib in (("old", old), ("new", new)):
        out = torch.empty(n, heads, hd, dtype=torch.bfloat16)
        args = (q.data_ptr(), q.stride(1), q.stride(0), k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1),
                None if mask is None else mask.data_ptr(), 0 if mask is None else mask.stride(0), out.data_ptr(),
                heads, kv, n, s, hd, ctypes.c_float(hd ** -0.5), 1, None)
        outs[name] = (lib, args, out)
    times = {"old": [], "new": []}
    for rep in range(40):
        for name, (lib, args, out) in outs.items():
            t = time.perf_counter()
            for _ in range(30):
                assert lib.invariant_attention(*args) == 0
            if rep >= 3: times[name].append((time.perf_counter() - t) * 1e3)
    same = torch.equal(outs["old"][2], outs["new"][2])
    print(f"rows {n:2d}: old best {min(times['old']):.2f} median {statistics.median(times['old']):.2f} ms | new best {min(times['new']):.2f} median {statistics.median(times['new']):.2f} ms | outputs bit-identical: {same}")
