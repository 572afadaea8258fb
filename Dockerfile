# syntax=docker/dockerfile:1.7
# RunPod serverless worker for ComfyUI API-format workflows, on an embedded ComfyUI (GPL-3.0, so is this
# project and the image: whoever distributes the image must offer its source, see README, "License").
# Base: a RunPod-cached PyTorch image (pulls in seconds on RunPod); its torch 2.11 / CUDA 13.0 build and the
# matching torchvision/torchaudio are used as they are: the lock lists none of them and is installed with
# --no-deps, so pip never replaces them.
FROM runpod/pytorch:2.11.0-cuda13.0-cudnn9-devel

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    WORKER_CACHE_DIR=/opt/worker/cache \
    COMFYUI_DIR=/opt/ComfyUI

WORKDIR /opt/worker

# Python dependencies first: this layer is reused until the lock changes. requirements/lock.txt is compiled
# from pyproject.toml (`make lock`) and complete, so --no-deps resolves nothing.
COPY requirements/lock.txt requirements/
RUN python -m pip install --no-cache-dir --no-deps -r requirements/lock.txt \
    && python -c "import torch, torchvision, transformers, runpod, av; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ComfyUI at the pinned commit (requirements/comfyui.env: the one pin, also read by the Makefile and by the
# worker, which reports it). Only that commit is fetched; the build fails if HEAD is anything else. The
# commit is kept in .worker-commit and .git is dropped.
COPY requirements/comfyui.env requirements/
RUN . requirements/comfyui.env \
    && git init --quiet "$COMFYUI_DIR" \
    && git -C "$COMFYUI_DIR" fetch --quiet --depth 1 "$COMFYUI_REPO" "$COMFYUI_COMMIT" \
    && git -C "$COMFYUI_DIR" checkout --quiet FETCH_HEAD \
    && got="$(git -C "$COMFYUI_DIR" rev-parse HEAD)" \
    && if [ "$got" != "$COMFYUI_COMMIT" ]; then echo "ComfyUI at $got, pinned $COMFYUI_COMMIT" >&2; exit 1; fi \
    && echo "$COMFYUI_COMMIT" > "$COMFYUI_DIR/.worker-commit" \
    && rm -rf "$COMFYUI_DIR/.git" \
    && echo "ComfyUI $COMFYUI_VERSION ($COMFYUI_COMMIT) in $COMFYUI_DIR"

# Attention kernels (docs/performance.md): the FA3 and FA2 builds matching this image's torch/CUDA are
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

# Optional model files baked into /opt/worker/models/<checkpoints|loras|vae|...>/:
# --build-arg MODELS="checkpoints/x.safetensors=hf://owner/repo/x.safetensors ..." (leave it empty for
# network-volume setups). A gated repo's token comes from a BuildKit secret
# (docker build --secret id=hf_token,src=token.txt), mounted only for this step: never in a layer. The step
# needs only worker/bake_models.py and worker/names.py (huggingface_hub and the standard library), so the
# baked files survive changes to the rest of the worker.
ARG MODELS=
COPY worker/bake_models.py worker/names.py worker/
RUN --mount=type=secret,id=hf_token \
    if [ -n "$MODELS" ]; then \
        HF_HUB_OFFLINE=0 python -m worker.bake_models /opt/worker/models --models "$MODELS" \
            --token-file /run/secrets/hf_token \
        && rm -rf /root/.cache/huggingface; \
    fi

COPY worker/ worker/
COPY handler.py test_input.json LICENSE ./

# Write the built-in tiny checkpoint now ($WORKER_CACHE_DIR/models/checkpoints/) so the image answers
# test_input.json with no writes at start-up, and the index of which of ComfyUI's comfy_extras modules holds
# which node type ($WORKER_CACHE_DIR/comfyui/): with it a worker imports only the modules its jobs use
# (NODE_IMPORTS=lazy) from its very first start. The same boot writes transformers' import table there
# (worker/embed/transformers_imports.py), so no start reads transformers' model sources.
RUN python -m worker.embed.tiny && python -m worker.embed.node_index

# Model files: bake them as above (or under /opt/worker/models/ in a derived image), or attach a network
# volume: /runpod-volume/models/<same folders> is searched automatically.
# Load-balancer endpoints start the same image with: python -u handler.py --serve (see docs/deployment.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 CMD ["python", "-m", "worker.healthcheck"]
CMD ["python", "-u", "handler.py"]
