"""Workflow and image builders shared by the tests."""

from __future__ import annotations

import base64
import copy
import io
from typing import Any

from PIL import Image


def txt2img(
    *,
    seed: int = 1,
    steps: int = 4,
    cfg: float = 7.0,
    width: int = 64,
    height: int = 64,
    batch_size: int = 1,
    sampler: str = "euler",
    scheduler: str = "normal",
    ckpt: str = "tiny-sd",
    positive: str = "a red cube",
    negative: str = "blurry",
    prefix: str = "ComfyUI",
) -> dict[str, Any]:
    """The default ComfyUI text-to-image graph in API format, at test size."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler,
                "scheduler": scheduler,
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch_size}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


def img2img(image_name: str = "input.png", denoise: float = 0.6, **kwargs: Any) -> dict[str, Any]:
    """txt2img with the empty latent replaced by LoadImage -> VAEEncode."""
    graph = copy.deepcopy(txt2img(**kwargs))
    del graph["5"]
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"]["latent_image"] = ["11", 0]
    graph["3"]["inputs"]["denoise"] = denoise
    return graph


def png_bytes(width: int = 64, height: int = 64, color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_result_image(item: dict[str, str]) -> Image.Image:
    assert item["type"] == "base64"
    return Image.open(io.BytesIO(base64.b64decode(item["data"])))


def cpu_runtime(models_root: Any, cache_dir: Any) -> Any:
    """A worker on the CPU over the test's own model folder, nothing preloaded, up to 4 checkpoints resident."""
    from worker.config import Settings
    from worker.runtime import boot

    return boot(Settings.from_env({"MODELS_DIRS": str(models_root), "WORKER_CACHE_DIR": str(cache_dir),
                                   "PRELOAD_CHECKPOINTS": "none", "WORKER_DEVICE": "cpu",
                                   "MAX_RESIDENT_CHECKPOINTS": "4"}))
