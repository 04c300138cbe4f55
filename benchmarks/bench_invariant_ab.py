"""A/B of the bf16 invariant attention against an earlier version of runtime/invariant.py (read
from git), in one process, interleaved: the default target's forward of 1/16/33/64 rows after a
random context, one thread, median ms.

    python benchmarks/bench_invariant_ab.py --base 37f9ef6   # the torch formulation before the compiled kernel
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_base(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:runtime/invariant.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "invariant_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("runtime.invariant_base", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["runtime.invariant_base"] = module  # its relative imports resolve inside runtime/
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git revision of the attention to compare with")
    p.add_argument("--contexts", default="300,700")
    p.add_argument("--reps", type=int, default=9)
    args = p.parse_args()
    torch.set_num_threads(1)
    import runtime.decoder as decoder_module
    import runtime.invariant as current
    from compose import Composer
    from trees import attention_mask

    base = load_base(args.base)

    def base_attention(q, keys, values, mask, scale):  # the current call; versions up to 37f9ef6 took key blocks
        if not hasattr(base, "key_blocks"):
            return base.invariant_attention(q, keys, values, mask, scale)
        return base.invariant_attention(q, keys, values, mask, base.key_blocks(torch.arange(keys.shape[2])), scale)

    dec = Composer("smollm2-135m-instruct", dtype="bfloat16", threads=1).target.decoder
    g = torch.Generator().manual_seed(0)
    times: dict = {}
    with torch.inference_mode():
        for ctx in map(int, args.contexts.split(",")):
            cache = dec.new_cache(ctx + 128)
            dec.forward(torch.randint(0, 40000, (ctx,), generator=g), torch.arange(ctx), cache, None)
            for n in (1, 16, 33, 64):
                ids, pos = torch.randint(0, 40000, (n,), generator=g), torch.arange(ctx, ctx + n)
                mask = None if n == 1 else attention_mask(torch.ones(n, n, dtype=torch.bool).tril(), ctx, torch.bfloat16)
                for rep in range(args.reps):
                    for name, attention in (("base", base_attention), ("current", current.invariant_attention)):
                        decoder_module.invariant_attention = attention
                        t = time.perf_counter()
                        dec.forward(ids, pos, cache, mask)
                        if rep >= 2:
                            times.setdefault((ctx, n, name), []).append(time.perf_counter() - t)
                        cache.crop(ctx)
    decoder_module.invariant_attention = current.invariant_attention
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"| context | rows | {args.base} (ms) | current (ms) | current / base |\n|---:|---:|---:|---:|---:|")
    for (ctx, n, name), _ in sorted(times.items()):
        if name != "base":
            continue
        a, b = (sorted(times[(ctx, n, k)])[len(times[(ctx, n, k)]) // 2] * 1000 for k in ("base", "current"))
        print(f"| {ctx} | {n} | {a:.1f} | {b:.1f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
