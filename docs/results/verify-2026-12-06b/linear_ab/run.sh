#!/bin/sh
# A/B of the AMX linear's prefetch in one process, interleaved (30 layers of SmolLM2-135M's linear
# shapes, random bf16 weights, one thread): mode 0 = the first pass prefetches whole 4 KB chunks
# (before), -1 = each pass prefetches its own half of the next chunk (now in runtime/linear_kernel.c),
# 1024 = before plus 1 KB of the next block prefetched to L2 per chunk of the second pass.
set -e
cd "$(dirname "$0")"
gcc -O3 -march=native -fno-fast-math -fopenmp -o /tmp/linear_ab linear_kernel_modes.c main.c
for m in 32 17 64; do OMP_NUM_THREADS=1 /tmp/linear_ab $m 40; done
