import ctypes, time, torch, sys
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
lib = ctypes.CDLL("/tmp/amx/linear_kernel.so")
print("perm", lib.amx_request())
P = ctypes.c_void_p; I = ctypes.c_int64
lib.amx_linear.argtypes = [P, I, I, P, I, I, P, P, ctypes.c_int]

def pack(w):
    n, k = w.shape
    np_, kp = -(-n // 64) * 64, -(-k // 32) * 32
    wp = torch.zeros(np_, kp, dtype=torch.bfloat16); wp[:n, :k] = w
    # [nb][kc][t][r][j][2]: W[nb*64+t*16+j, kc*32+2r+e]
    p = wp.view(np_ // 64, 4, 16, kp // 32, 16, 2).permute(0, 3, 1, 4, 2, 5).contiguous()
    return p, n, np_, k, kp

def amx(x, packed):
    p, n, np_, k, kp = packed
    m = x.shape[0]; mp = -(-m // 32) * 32 if m > 16 else 16
    xp = torch.zeros(mp, kp, dtype=torch.bfloat16); xp[:m, :k] = x
    out = torch.empty(m, n, dtype=torch.bfloat16)
    lib.amx_linear(xp.data_ptr(), m, kp, p.data_ptr(), n, np_, None, out.data_ptr(), torch.get_num_threads())
    return out

g = torch.Generator().manual_seed(0)
for n, k in ((1536, 576), (576, 1536), (192, 576), (100, 70)):
    w = (torch.randn(n, k, generator=g) / k**0.5).bfloat16()
    x = torch.randn(40, k, generator=g).bfloat16()
    pk = pack(w)
    full = amx(x, pk)
    ref = (x.double() @ w.double().T)
    err = (full.double() - ref).abs().max().item()
    alone = torch.cat([amx(x[i:i+1], pk) for i in range(40)])
    print(n, k, "maxerr", err, "bf16 ulp-ish", ref.abs().max().item() / 128, "invariant", torch.equal(alone, full),
          "eq torch-bf16-round", (full == ref.float().bfloat16()).float().mean().item())

def bench(n, k, count):
    ws = [(torch.randn(n, k) / k**0.5).bfloat16() for _ in range(count)]
    pks = [pack(w) for w in ws]
    dnn = [torch.ops.mkldnn._reorder_linear_weight(w, 8) for w in ws]
    for rows in (1, 4, 16, 32, 64):
        x = torch.randn(rows, k).bfloat16()
        xd = x if rows >= 4 else torch.cat([x, x.new_zeros(4 - rows, k)])
        res = {}
        for name, fn in (("onednn", lambda i: torch.ops.mkldnn._linear_pointwise(xd, dnn[i], None, "none", [], "")),
                         ("amx", lambda i: amx(x, pks[i]))):
            best = 1e9
            for _ in range(5):
                t0 = time.perf_counter()
                for i in range(count): fn(i)
                best = min(best, (time.perf_counter() - t0) / count)
            res[name] = best
        print(f"{n}x{k} rows {rows:3d}: onednn {res['onednn']*1e3:.3f} ms ({n*k*2/res['onednn']/1e9:.1f} GB/s)  amx {res['amx']*1e3:.3f} ms ({n*k*2/res['amx']/1e9:.1f} GB/s)")
bench(1536, 576, 60)
bench(576, 1536, 60)
bench(49152, 576, 2)
