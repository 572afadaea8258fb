# syntax=docker/dockerfile:1.7
# RunPod serverless worker for ComfyUI API-format workflows.
# Base: a RunPod-cached PyTorch image (pulls in seconds on RunPod); its torch 2.11 / CUDA 13.0 build is
# used as is: requirements/runtime.txt does not list torch, so pip never replaces it.
FROM runpod/pytorch:2.11.0-cuda13.0-cudnn9-devel

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    WORKER_CACHE_DIR=/opt/worker/cache

WORKDIR /opt/worker

# Dependencies first: this layer is reused until a requirements file changes.
COPY requirements/runtime.txt requirements/constraints.txt requirements/
RUN python -m pip install -r requirements/runtime.txt -c requirements/constraints.txt \
    && python -c "import torch, diffusers, transformers, runpod; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

COPY worker/ worker/
COPY handler.py test_input.json ./

# Write the built-in tiny checkpoint now so the image answers test_input.json with no writes at start-up.
RUN python -c "from pathlib import Path; from worker.models.tiny import ensure_tiny_checkpoint; \
ensure_tiny_checkpoint(Path('/opt/worker/cache/checkpoints'))"

# Model files: bake them under /opt/worker/models/<checkpoints|loras|vae|...>/ in a derived image, or
# attach a network volume: /runpod-volume/models/<same folders> is searched automatically.
CMD ["python", "-u", "handler.py"]
