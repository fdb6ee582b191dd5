#!/usr/bin/env bash
# The GPU suite on a lent machine (see benchmarks/gpu_suite.py), after
# `bash .gpu-wheels/install.sh`: gpu_suite.json, gpu_suite.md and every run's logs under $OUT.
set -euo pipefail
OUT=${OUT:-gpu-suite-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" || true
python3 benchmarks/gpu_suite.py --out "$OUT/suite" "$@" 2>&1 | tee "$OUT/suite.log"
# what comes back must stay small: keep the logs and metrics, drop weights, images, checkpoints
find "$OUT/suite/work" \( -name checkpoints -o -name images -o -name models \) -type d \
    -prune -exec rm -rf {} + 2>/dev/null || true
find "$OUT/suite/work" \( -name '*.safetensors' -o -name '*.bin' -o -name rows.jsonl \) \
    -delete 2>/dev/null || true
