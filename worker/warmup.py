"""Start-up warm-up: a two-step generation per resident checkpoint and size (its native size unless
WARMUP_SIZES lists others), so the first real job does not pay for first-call costs: allocator growth,
kernel selection, lazy initialisation in the libraries, and the CUDA-graph capture of the denoiser for
that size (a graph is per input shape, so warming up at the size jobs use is what makes it count)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from worker.engine import ExecutionContext, build_plan, execute, registry
from worker.runtime import Runtime

log = logging.getLogger(__name__)
WARMUP_STEPS = 2


def native_size(model: Any, max_side: int) -> tuple[int, int]:
    """The size a checkpoint was trained at (UNet sample size x VAE factor: 512 for SD1.5, 1024 for SDXL)."""
    side = int(model.unet.config.sample_size) * int(model.vae_factor)
    side = max(64, min(side, max_side)) // 8 * 8
    return side, side


def warmup_workflow(checkpoint: str, width: int, height: int) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "warm-up", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": 1},
        },
        "sample": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
                "seed": 0, "steps": WARMUP_STEPS, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            },
        },
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0]}},
    }


def warm_up(runtime: Runtime) -> None:
    """Run the warm-up graph on every resident checkpoint. Results are discarded (nothing is delivered,
    uploaded or written). A failure is logged, not fatal: the worker can still serve jobs."""
    started = time.perf_counter()
    # On a CPU there is no graph to capture and a native-size SDXL step takes seconds: warm up small.
    max_side = runtime.settings.max_side if runtime.device.type == "cuda" else min(runtime.settings.max_side, 256)
    for name in runtime.models.resident():
        model = runtime.models.checkpoint(name).model
        for width, height in runtime.settings.warmup_sizes or (native_size(model, max_side),):
            size_started = time.perf_counter()
            try:
                plan = build_plan(warmup_workflow(name, width, height), registry(), runtime.models.list, {
                    "max_side": max_side, "max_batch": 1, "max_steps": WARMUP_STEPS,
                })
                ctx = ExecutionContext(
                    job_id="warm-up", models=runtime.models, device=runtime.device, input_images={}, workflow={}
                )
                with runtime.job_lock, torch.inference_mode():
                    execute(plan, ctx)
            except Exception:
                log.exception("warm-up of %s at %dx%d failed; continuing without it", name, width, height)
            log.info("warm-up of %s at %dx%d: %.2fs", name, width, height, time.perf_counter() - size_started)
    runtime.boot_seconds["warmup"] = time.perf_counter() - started
    log.info("warm-up done in %.2fs", runtime.boot_seconds["warmup"])
