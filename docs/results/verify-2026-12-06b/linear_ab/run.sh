#!/bin/sh
# A/B of the AMX linear's prefetch in one process, interleaved (30 layers of SmolLM2-135M's linear
# shapes, random bf16 weights, one thread); the modes: make_modes.py
set -e
cd "$(dirname "$0")"
python3 make_modes.py
gcc -O3 -march=native -fno-fast-math -fopenmp -I../../../../runtime -o /tmp/linear_ab /tmp/linear_kernel_modes.c main.c
for m in 32 17 64; do OMP_NUM_THREADS=1 /tmp/linear_ab $m 40; done
