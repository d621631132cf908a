#!/usr/bin/env bash
# footprints bench on a lent GPU (device tool, kind nvidia-h200), in under 9 minutes: the demo scene
# mirrored to 8192², CUDA workers at batch 8, 16 and 32 (fp16 autocast, channels-last, pinned host
# memory), MP/s of model-only, end-to-end and pipeline-only, their ratio and the GPU busy %.
#
#   here, once:  .venv/bin/python scripts/gpu_prepare.py --bench   # .gpu/bench/: demo scene + packages
#   there:       device run, carry [".gpu/bench"], timeout_s 600,
#                command: bash scripts/gpu_bench.sh
#   here, check: bash scripts/gpu_bench.sh --dry-run [--work DIR]  # the same path on the CPU, small
#
# Writes $OUT/gpu_bench.json, $OUT/bench.log, $OUT/gpu.txt and $OUT/gpu_busy.csv (nvidia-smi, 1 s).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu-bench}
mkdir -p "$OUT"

if [[ "${1:-}" == "--dry-run" ]]; then
    shift
    PY=${PY:-.venv/bin/python}
    exec "$PY" scripts/gpu_bench.py --dry-run --out "$OUT" "$@"
fi

# The machine's python3 holds torch, but not GDAL, Dask or the geometry stack: unpack what
# gpu_prepare.py --bench packed (one xz tarball of installed packages; at 68.5 MB it is still over
# the 64 MiB a call carries: see DESIGN.md, "Performance").
python3 -c "import tarfile; tarfile.open('.gpu/bench/site.tar.xz').extractall('/tmp/site', filter='tar')"
export PYTHONPATH="/tmp/site:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
( while sleep 1; do
      nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits >>"$OUT/gpu_busy.csv"
  done ) &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT
timeout 540 python3 scripts/gpu_bench.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
