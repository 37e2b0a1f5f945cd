#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (no network there: MovieLens must already
# be in benchmarks/.cache/ml-100k, carried along). Writes logs under ${OUT:-/tmp/gpu_check}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT/gpu.txt"
echo "== GPU tests =="
python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gpu_tests.txt"
echo "== training throughput (CPU baseline in the same run) =="
python3 -m benchmarks.train_speed --users 20000 --items 5000 --per-user 30 --epochs 3 --cpu-epochs 1 \
    --batch-size 4096 --json "$OUT/train_speed.json" 2>&1 | tee "$OUT/train_speed.txt"
echo "== MovieLens-100K quality, protocol A, default hyperparameters, on the GPU =="
python3 -m benchmarks.quality --protocol a 2>&1 | tee "$OUT/quality_gpu.txt"
