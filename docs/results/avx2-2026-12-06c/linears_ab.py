"""SmolLM2-135M's 210 layer linears on two threads, in their stored forms (runtime/weight_formats.py:
4-bit grids) against float32 (SPECMUX_WEIGHT_FORMATS=0), both packed in one process, the best of 7
passes over all 210 per row count. Needs the cached default target ($SPECMUX_HOME/models).

    python docs/results/avx2-2026-12-06c/linears_ab.py
"""
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from runtime import native_linear, weight_formats  # noqa: E402
from runtime.assets import specmux_home  # noqa: E402


def best_ms(packs, rows: int, reps: int = 7) -> float:
    xs = [torch.randn(rows, p.shape[1]) for p in packs]
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for x, p in zip(xs, packs):
            native_linear.linear(x, p, None)
        best = min(best, time.perf_counter() - t)
    return 1e3 * best


def main() -> None:
    torch.set_num_threads(2)
    state = load_file(str(specmux_home() / "models" / "smollm2-135m-instruct" / "model.safetensors"))
    weights = [w for name, w in state.items() if w.dim() == 2 and "layers." in name]
    stored = [native_linear.pack(w) for w in weights]
    os.environ[weight_formats.SWITCH] = "0"
    plain = [native_linear.pack(w) for w in weights]
    del os.environ[weight_formats.SWITCH]
    print(f"load average {os.getloadavg()[0]:.2f}; {len(weights)} linears; forms {sorted({p.format for p in stored})}; "
          f"MiB read a pass: stored {sum(p.nbytes for p in stored) / 2**20:.1f}, float32 {sum(p.nbytes for p in plain) / 2**20:.1f}")
    print("| rows | stored ms | float32 ms | ratio |\n|---:|---:|---:|---:|")
    for rows in (1, 2, 3, 4, 5, 6, 8, 12, 16, 32):
        a, b = best_ms(stored, rows), best_ms(plain, rows)
        print(f"| {rows} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
