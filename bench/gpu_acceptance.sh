#!/usr/bin/env bash
# Issue 8's acceptance run on a GPU, in one go: the GPU tests, then SDXL-size random-weight numbers at
# 1024x1024 (step time eager vs CUDA graph vs the kernels' own GPU time, the step-time plot, the end-to-end
# stage split, cold start to first image with the page cache dropped). Every table also lands in OUT_DIR.
#
#     bench/gpu_acceptance.sh [OUT_DIR]        # default bench/out; PYTHON=... to pick the interpreter
#     COMPILE=1 bench/gpu_acceptance.sh        # also time torch.compile (minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$py" -m pytest -q -m gpu tests/gpu 2>&1 | tee "$out/gpu_tests.txt"
"$py" bench/denoiser_step.py --model sdxl --plot "$out/sdxl_step.png" ${COMPILE:+--compile} \
    2>&1 | tee "$out/denoiser_step.txt"
"$py" bench/e2e.py --model sdxl --steps 30 --branches 2 --repeat 5 2>&1 | tee "$out/e2e.txt"
"$py" bench/cold_start.py --model sdxl --steps 30 2>&1 | tee "$out/cold_start.txt"
