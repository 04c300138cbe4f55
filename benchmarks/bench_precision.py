"""Side by side, one run, same prompts: our decoding of the default target in float32 and in the
exact bf16 mode (docs/design.md "Exact bf16"), autoregressive and the default strategy (tree
"auto", the shipped drafters), against transformers' generate in both dtypes and, when
llama-cpp-python is installed (`pip install llama-cpp-python`), llama.cpp at Q8_0 and Q4_K_M.

    python benchmarks/bench_precision.py [--items 3] [--new-tokens 64] [--threads 1,2]

llama-cpp-python builds llama.cpp for the CPU it is built on; on a VM where that build dies with
"Illegal instruction" (seen 2026-12-05 on a Xeon VM with AMX), build with explicit flags:
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
-DGGML_AMX_BF16=OFF" pip install --no-cache-dir --force-reinstall llama-cpp-python==0.3.36

Word problems (GSM8K) and chat turns (MT-Bench first turns), greedy. Speed is tokens/s over all
prompts, as a ratio to our float32 autoregressive in the same run (methods interleaved prompt by
prompt); every one of our greedy outputs is checked against our plain decoding in its dtype.
The load average is printed with the table: on a busy machine read the ratios, not the rates.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent))  # measure this checkout, not the installed copy
from prompts import load_average  # noqa: E402

from compose import Composer, default_drafters  # noqa: E402
from eval.datasets import load_benchmark, sample_items  # noqa: E402

TARGET = "smollm2-135m-instruct"


def prompts(items: int, benchmarks: list[str]) -> list[tuple[str, str]]:
    out = []
    for bench in benchmarks:
        for item in sample_items(load_benchmark(bench), items, seed=1):
            out.append((bench, item.turns[0]))
    return out


def llama_cpp_models(threads: int) -> dict[str, object]:
    """llama.cpp models at Q8_0 and Q4_K_M made from the built-in GGUF (dequantised to F32 once),
    or {} with a note when llama-cpp-python is not installed."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama.cpp: llama-cpp-python is not installed (pip install llama-cpp-python): rows skipped")
        return {}
    from gguf_quantize import quantized_gguf

    from llama_cpp import Llama

    return {f"llama.cpp {q}": Llama(str(quantized_gguf(TARGET, q)), n_threads=threads, n_ctx=1024, verbose=False)
            for q in ("Q8_0", "Q4_K_M")}


def run(args) -> None:
    items = prompts(args.items, args.benchmarks)
    composers = {dt: Composer(TARGET, drafters=default_drafters(TARGET), dtype=dt, threads=None)
                 for dt in ("float32", "bfloat16")}
    for threads in args.threads:
        torch.set_num_threads(threads)
        llama = llama_cpp_models(threads)
        mismatches: dict[str, int] = {}
        measured: dict[tuple[str, str], list[float]] = {}  # (benchmark, method) -> [tokens, seconds]

        def add(bench: str, name: str, n: int, seconds: float) -> None:
            row = measured.setdefault((bench, name), [0, 0.0])
            row[0] += n
            row[1] += seconds

        for bench, text in items:
            messages = [{"role": "user", "content": text}]
            for dt, composer in composers.items():
                ids = composer.encode(messages)
                plain = composer.generate(ids, strategy="autoregressive", max_new_tokens=args.new_tokens)
                add(bench, f"ours {dt} autoregressive", len(plain.token_ids), plain.stats.total_time)
                spec = composer.generate(ids, max_new_tokens=args.new_tokens)  # default strategy, tree="auto"
                add(bench, f"ours {dt} {spec.stats.strategy} (auto)", len(spec.token_ids), spec.stats.total_time)
                bad = spec.token_ids != plain.token_ids
                mismatches[dt] = mismatches.get(dt, 0) + bad
                t = time.perf_counter()
                out = composer.target.model.generate(ids[None], max_new_tokens=args.new_tokens, do_sample=False)
                add(bench, f"transformers generate {dt}", out.shape[1] - ids.numel(), time.perf_counter() - t)
            for name, model in llama.items():
                prompt = composers["float32"].encode(messages).tolist()
                t = time.perf_counter()
                n = 0
                for _ in model.generate(prompt, temp=0.0, top_k=1, reset=True):
                    n += 1
                    if n >= args.new_tokens:
                        break
                add(bench, name, n, time.perf_counter() - t)
        benches = list(dict.fromkeys(b for b, _ in items))
        names = list(dict.fromkeys(name for _, name in measured))

        def rate(name: str, over: list[str]) -> float:  # tokens/s of `name` over the benchmarks `over`
            return sum(measured[(b, name)][0] for b in over) / sum(measured[(b, name)][1] for b in over)

        base = "ours float32 autoregressive"
        print(f"\n### {threads} thread(s), {len(items)} prompts x {args.new_tokens} tokens (load average {load_average()})\n")
        print("| method | tokens/s | vs ours float32 autoregressive |\n|---|---:|---:|")
        for name in names:
            print(f"| {name} | {rate(name, benches):.1f} | {rate(name, benches) / rate(base, benches):.2f}x |")
        if len(benches) > 1:
            print(f"\nper benchmark, tokens/s as a ratio to ours float32 autoregressive ({args.items} prompts each)\n")
            print("| method | " + " | ".join(benches) + " |\n|---|" + "---:|" * len(benches))
            for name in names:
                print(f"| {name} | " + " | ".join(f"{rate(name, [b]) / rate(base, [b]):.2f}x" for b in benches) + " |")
        print("\ngreedy mismatches against plain decoding: "
              + ", ".join(f"{dt} {m} of {len(items)}" for dt, m in mismatches.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=3, help="prompts per benchmark")
    p.add_argument("--benchmarks", type=lambda s: s.split(","), default=["gsm8k", "mtbench"],
                   help="comma-separated: gsm8k, mtbench, humaneval, math (the composition benchmarks)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    run(p.parse_args())


if __name__ == "__main__":
    main()
