#!/usr/bin/env bash
# Issue 15's GPU acceptance in one go, on a machine with a CUDA GPU: the GPU tests (captured jobs equal
# eager within tolerance; a LoRA never replays the unpatched graph), attention kernels per backend, then
# step time on a random-weight SDXL checkpoint (worker/embed/bench_models.py, written once under WORK_DIR)
# at 1024x1024, 30 steps euler: stock ComfyUI vs the worker eager / CUDA graph / CUDA graph + attention
# kernels, next to the GPU kernel time. Every table also lands in OUT_DIR.
#
#     bench/gpu_acceptance.sh [OUT_DIR] [WORK_DIR]   # defaults bench/out, .cache/bench/gpu_step; PYTHON=...
#
# Not here yet: cold start to first image with the page cache dropped for the SDXL checkpoint
# (bench/cold_start.py measures the tiny built-in checkpoint only, page cache warm).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out}
work=${2:-.cache/bench/gpu_step}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$py" -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 | tee "$out/gpu_tests.txt"
"$py" bench/attention.py 2>&1 | tee "$out/attention.txt"
"$py" bench/gpu_step.py --work-dir "$work" 2>&1 | tee "$out/gpu_step.txt"
