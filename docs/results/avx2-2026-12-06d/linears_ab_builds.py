"""A/B two builds of linear_kernel.c over SmolLM2's 210 layer linears: python ab.py old.c new.c"""
import ctypes, os, subprocess, sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
import torch
from safetensors.torch import load_file
from runtime import native_linear
from runtime.native import FLAGS
from runtime.assets import specmux_home

def build(src):
    out = f"/tmp/{os.path.basename(src)}.{os.getpid()}.so"
    subprocess.run(["gcc", *FLAGS, "-o", out, src, "-lm"], check=True)
    lib = ctypes.CDLL(out)
    lib.f32_linear.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    return lib

libs = [build(s) for s in sys.argv[1:3]]
rows_list = [int(r) for r in (sys.argv[3] if len(sys.argv) > 3 else "1,2,3,4,5,6,8,12,16").split(",")]
torch.set_num_threads(2)
state = load_file(str(specmux_home() / "models" / "smollm2-135m-instruct" / "model.safetensors"))
SEL = os.environ.get("SEL", "layers.")
packs = [native_linear.pack(w) for n, w in state.items() if w.dim() == 2 and SEL in n]
print([p.format for p in packs][:3], len(packs))

def run(lib, xs, outs):
    t = time.perf_counter()
    for x, p, o in zip(xs, packs, outs):
        lib.f32_linear(x.data_ptr(), x.shape[0], x.shape[1], x.shape[1], p.pointer, p.shape[0], None, o.data_ptr(), 2)
    return time.perf_counter() - t

print(f"load average {os.getloadavg()[0]:.2f}")
print("| rows | A ms | B ms | B/A | same bits |\n|---:|---:|---:|---:|---|")
for rows in rows_list:
    xs = [torch.randn(rows, p.shape[1]) for p in packs]
    oa = [torch.empty(rows, p.shape[0]) for p in packs]
    ob = [torch.empty(rows, p.shape[0]) for p in packs]
    best = [1e9, 1e9]
    for _ in range(9):
        for j, (lib, o) in enumerate(zip(libs, (oa, ob))):
            best[j] = min(best[j], run(lib, xs, o))
    same = all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(oa, ob))
    print(f"| {rows} | {1e3*best[0]:.2f} | {1e3*best[1]:.2f} | {best[1]/best[0]:.2f} | {same} |")
print(f"load average {os.getloadavg()[0]:.2f}")
