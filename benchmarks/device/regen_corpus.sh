#!/bin/bash
# The second of two device calls (docs/results/corpus-2026-12-04/README.md "How"): join the target, check it, regenerate the corpus with the suite, pack it into $OUT.
set -u
K=/tmp/kit
test -f $K/c1/c00 || { echo "NO_CHUNK1: fresh machine"; exit 9; }
mkdir -p /tmp/target && cat $K/c1/c00 .gpu/c2/c01 > /tmp/target/model.gguf
[ "$(sha256sum /tmp/target/model.gguf | cut -d' ' -f1)" = "$(cat .gpu/c2/sha256)" ] || { echo BAD_SHA; exit 8; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 7
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
nvidia-smi --query-gpu=name,memory.used --format=csv
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"
python3 benchmarks/device/check_target.py check $K/work /tmp/target || exit 6
T0=$(date +%s)
timeout ${REGEN_S:-420} python3 -m drafters.training.suite --config drafters/pretrained/smollm2-135m-instruct/suite.json \
  --stages regenerate --set work_dir=$K/work --set target_path=/tmp/target --set gguf_file=model.gguf --device cuda 2>&1 | grep -v "it/s]$" | tail -40
echo "suite rc=${PIPESTATUS[0]} after $(( $(date +%s) - T0 )) s"
cd $K/work && ls -R corpus | head -5; du -sh corpus written 2>/dev/null
tar -cf - corpus written written.json data_report.json suite.log 2>/dev/null | xz -T0 -6 > /tmp/corpus.tar.xz
ls -la /tmp/corpus.tar.xz; split -b 15M -d /tmp/corpus.tar.xz $OUT/corpus.tar.xz.
ls -la $OUT
