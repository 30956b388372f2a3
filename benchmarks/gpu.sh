#!/usr/bin/env bash
# GPU checks in one command, on a machine with CUDA (run from anywhere):
#   KIT_PYTHON=python3 benchmarks/gpu.sh [--steps 30]
# 1. the GPU's name, memory and compute capability; 2. the precision tests, which on a real GPU also check
# the dtype chosen for this device and an AMP training step; 3. benchmarks/gpu.py (img/s fp32 vs AMP +
# channels_last, data-wait share, peak memory). Fold-parallel on 2 GPUs vs 1 is printed as not measured
# when one GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${KIT_PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader
"$PY" -m pytest tests/test_precision.py -q -p no:cacheprovider
"$PY" benchmarks/gpu.py "$@"
