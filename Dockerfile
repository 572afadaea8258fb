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
COPY requirements/runtime.txt requirements/runtime-nodeps.txt requirements/constraints.txt requirements/
RUN python -m pip install --no-cache-dir -r requirements/runtime.txt -c requirements/constraints.txt \
    && python -m pip install --no-cache-dir --no-deps -r requirements/runtime-nodeps.txt -c requirements/constraints.txt \
    && python -c "import torch, diffusers, transformers, runpod; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Attention kernels (README "Attention kernels"): the FA3 and FA2 builds matching this image's torch/CUDA are
# downloaded now (kernels.install_kernel, the one variant for this torch/CUDA/platform) and copied to
# $ATTENTION_KERNELS_DIR/<kernel>/build/<variant>/ with a manifest.json; at run time the worker imports them
# from there with kernels.get_local_kernel and never downloads (HF_HUB_OFFLINE=1 above). A kernel with no build
# for this torch is reported here and skipped: the worker then uses PyTorch SDPA. FA3 is ~1.7 GB, FA2 ~450 MB:
# --build-arg ATTENTION_KERNELS= leaves them out; ATTENTION_KERNEL_REVISIONS="--revision fa3=<commit> ..." pins.
# Only the files this step needs are copied first, so the layer survives changes to the rest of the worker.
ARG ATTENTION_KERNELS=fa3,fa2
ARG ATTENTION_KERNEL_REVISIONS=
ENV ATTENTION_KERNELS_DIR=/opt/worker/cache/kernels
COPY worker/__init__.py worker/
COPY worker/attention/__init__.py worker/attention/specs.py worker/attention/bake.py worker/attention/
# $ATTENTION_KERNEL_REVISIONS is split into arguments on purpose.
# hadolint ignore=SC2086
RUN if [ -n "$ATTENTION_KERNELS" ]; then \
        HF_HUB_OFFLINE=0 KERNELS_CACHE=/tmp/kernels-download python -m worker.attention.bake \
            "$ATTENTION_KERNELS_DIR" --only "$ATTENTION_KERNELS" $ATTENTION_KERNEL_REVISIONS \
        && rm -rf /tmp/kernels-download; \
    fi

COPY worker/ worker/
COPY handler.py test_input.json ./

# Architecture configs + tokenizers (no weights) that single-file SD1.5 / SDXL checkpoints and Flux's split files
# (UNETLoader, DualCLIPLoader: FLUX.1-schnell's configs serve dev files too) need, and optional
# model files: --build-arg MODELS="checkpoints/x.safetensors=hf://owner/repo/x.safetensors ..." bakes them
# (leave it empty for network-volume setups). A gated repo's token comes from a BuildKit secret
# (docker build --secret id=hf_token,src=token.txt), mounted only for this step: never in a layer.
ARG MODEL_CONFIGS=sd15,sdxl,flux-schnell
ARG MODELS=
RUN --mount=type=secret,id=hf_token \
    HF_HUB_OFFLINE=0 python -m worker.models.bake /opt/worker/models --configs "$MODEL_CONFIGS" \
        --models "$MODELS" --token-file /run/secrets/hf_token \
    && rm -rf /root/.cache/huggingface

# Write the built-in tiny checkpoint now so the image answers test_input.json with no writes at start-up.
RUN python -c "from pathlib import Path; from worker.models.tiny import ensure_tiny_checkpoint; \
ensure_tiny_checkpoint(Path('/opt/worker/cache/checkpoints'))"

# Model files: bake them under /opt/worker/models/<checkpoints|loras|vae|...>/ in a derived image, or
# attach a network volume: /runpod-volume/models/<same folders> is searched automatically.
# Load-balancer endpoints start the same image with: python -u handler.py --serve (see docs/deployment.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 CMD ["python", "-m", "worker.healthcheck"]
CMD ["python", "-u", "handler.py"]
