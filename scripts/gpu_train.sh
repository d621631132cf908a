#!/usr/bin/env bash
# The final training stage on a lent GPU (device tool, kind nvidia-h200), in at most 9 minutes.
#
#   here, once:  .venv/bin/python scripts/gpu_prepare.py     # .gpu/: datapack + wheels (git-ignored)
#   there:       device run, carry [".gpu"], timeout_s 600,
#                command: bash scripts/gpu_train.sh
#   here, check: bash scripts/gpu_train.sh --dry-run DATAPACK.npz   # the same path, tiny, on the CPU
#
# Writes $OUT/model.safetensors (fp16), $OUT/summary.json and $OUT/train.log. Then, here:
#   footprints validate --data configs/dataset.yaml --out /tmp/val-gpu --model <files_at>/model.safetensors
# and compare its macro object F1 with the shipped model's before committing anything.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"

if [[ "${1:-}" == "--dry-run" ]]; then
    PY=${PY:-.venv/bin/python}
    exec "$PY" scripts/gpu_train.py --dry-run --data "$2" --out "$OUT" --work "$OUT/work" \
        --minutes 5 --batch-size 2 --crop 64 --workers 1
fi

# The machine's python3 holds torch; the wheels add what pipeline.training.train imports besides.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/wheels/*.whl
export PYTHONPATH="/tmp/site:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
( while sleep 5; do
      nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits >>"$OUT/gpu_busy.csv"
  done ) &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT
set -o pipefail
timeout 530 python3 scripts/gpu_train.py --out "$OUT" 2>&1 | tee "$OUT/train.log"
