#!/bin/bash
# vLLM CPU build against specmux on the same prompts, the three shipped drafters (issue 20)
cd /work/main
T=/root/.cache/specmux/models/smollm2-135m-instruct
export VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1
for d in none math chat mixed; do
  echo "== vllm $d $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  if [ $d = none ]; then a=""; else a=/tmp/served/$d; fi
  /tmp/vllm-venv/bin/python benchmarks/serve_vllm_cpu.py $T $a --method eagle3 --prompts 6 > /tmp/vllm-runs/$d.log 2>&1
  grep '^RESULT' /tmp/vllm-runs/$d.log | cut -c1-400 || tail -20 /tmp/vllm-runs/$d.log
done
echo "== specmux $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
P=drafters/pretrained/smollm2-135m-instruct
.venv/bin/python benchmarks/chain_acceptance.py 6 math=eagle:$P/math chat=eagle:$P/chat mixed=eagle:$P/mixed > /tmp/vllm-runs/specmux.log 2>&1
grep '^SPECMUX' /tmp/vllm-runs/specmux.log | cut -c1-100; tail -c 400 /tmp/vllm-runs/specmux.log
echo "== done $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
