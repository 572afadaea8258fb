"""Start-up warm-up: one small generation per resident checkpoint, so the first real job does not pay for
first-call costs (allocator growth, kernel selection, lazy initialisation in the libraries)."""

from __future__ import annotations

import logging
import time

import torch

from worker.engine import ExecutionContext, build_plan, execute, registry
from worker.runtime import Runtime

log = logging.getLogger(__name__)
WARMUP_SIDE = 256
WARMUP_STEPS = 2


def warmup_workflow(checkpoint: str) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "warm-up", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": WARMUP_SIDE, "height": WARMUP_SIDE, "batch_size": 1},
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
    for name in runtime.models.resident():
        try:
            plan = build_plan(warmup_workflow(name), registry(), runtime.models.list, {
                "max_side": WARMUP_SIDE, "max_batch": 1, "max_steps": WARMUP_STEPS,
            })
            ctx = ExecutionContext(
                job_id="warm-up", models=runtime.models, device=runtime.device, input_images={}, workflow={}
            )
            with runtime.job_lock, torch.inference_mode():
                execute(plan, ctx)
        except Exception:
            log.exception("warm-up of %s failed; continuing without it", name)
    runtime.boot_seconds["warmup"] = time.perf_counter() - started
    log.info("warm-up done in %.2fs", runtime.boot_seconds["warmup"])
