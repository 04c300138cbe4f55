#!/usr/bin/env bash
# issue 21's measures after the linear prefetch and the attention gather changes, one after another,
# alone on the CPU; from the repository root: docs/results/verify-2026-12-06b/run.sh
set -euo pipefail
O=docs/results/verify-2026-12-06b
py=.venv/bin/python
run() { local name=$1; shift; echo "== $name $(date +%H:%M) load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  "$py" "$@" 2>&1 | grep -v -E "Loading weights|it/s\]$" > "$O/$name.txt"; echo "   done $(date +%H:%M) load $(cut -d' ' -f1-3 /proc/loadavg)" >&2; }
run auto-quiet-2threads benchmarks/bench_drafting.py --sections auto --items 3 --new-tokens 64 --auto-benchmarks gsm8k mtbench \
    --auto-strategies single merged_tree --rounds 2 --diagnose --threads 2
run auto-busy-1thread benchmarks/bench_drafting.py --sections auto --items 3 --new-tokens 64 --auto-benchmarks gsm8k mtbench \
    --auto-strategies single merged_tree --rounds 2 --diagnose --threads 1 --busy
run qwen-quiet-1thread benchmarks/bench_drafting.py --sections qwen --prompts 2 --new-tokens 64 --diagnose
run bench_precision benchmarks/bench_precision.py --items 3 --benchmarks gsm8k,mtbench,humaneval,math --threads 1,2
run bench_verify-3 benchmarks/bench_verify.py --reps 31
