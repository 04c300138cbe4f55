#!/usr/bin/env bash
# the composition table's three runs (same commands as composition-2026-12-05d), from the repository root;
# the output folder is this one unless given (composition-2026-12-05f runs it into its own)
set -euo pipefail
P=drafters/pretrained/smollm2-135m-instruct
O=${1:-docs/results/composition-2026-12-05e}
C="--limit 4 --max-new-tokens 64 --temperatures 0,1"
uptime
.venv/bin/specmux eval --drafter math=eagle:$P/math --drafter chat=eagle:$P/chat --domain-router $P/domain_router.safetensors \
  --strategies autoregressive,single:math,single:chat,averaged,confidence,entropy,merged_tree,online,domain $C --out $O/A
uptime
.venv/bin/specmux eval --drafter mixed=eagle:$P/mixed --strategies autoregressive,single:mixed $C --out $O/B
uptime
.venv/bin/specmux eval --drafter math=eagle:$P/math --drafter chat=eagle:$P/chat \
  --strategies autoregressive,merged_tree --merge-budget equal $C --out $O/C
uptime
