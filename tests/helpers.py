"""Workflow and image builders shared by the tests."""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
from typing import Any

from PIL import Image

TINY = "tiny-sd15.safetensors"


def txt2img(
    *,
    seed: int = 1,
    steps: int = 3,
    cfg: float = 7.0,
    width: int = 64,
    height: int = 64,
    batch_size: int = 1,
    sampler: str = "euler",
    scheduler: str = "normal",
    ckpt: str = TINY,
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


def custom_sampling(seed: int, steps: int = 4, width: int = 64, height: int = 64) -> dict[str, Any]:
    """txt2img through nodes the worker's former engine never had: RandomNoise, KSamplerSelect, BasicScheduler,
    CFGGuider, SamplerCustomAdvanced (euler, normal, cfg 7: the same image as txt2img's KSampler)."""
    graph = txt2img(width=width, height=height)
    del graph["3"]
    graph.update({
        "20": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "21": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "22": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "normal", "steps": steps,
                                                          "denoise": 1.0}},
        "23": {"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                     "cfg": 7.0}},
        "24": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["20", 0], "guider": ["23", 0],
                                                                 "sampler": ["21", 0], "sigmas": ["22", 0],
                                                                 "latent_image": ["5", 0]}},
    })
    graph["8"]["inputs"]["samples"] = ["24", 0]
    return graph


def img2img(image_name: str = "input.png", denoise: float = 0.6, **kwargs: Any) -> dict[str, Any]:
    """txt2img with the empty latent replaced by LoadImage -> VAEEncode."""
    graph = copy.deepcopy(txt2img(**kwargs))
    del graph["5"]
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"]["latent_image"] = ["11", 0]
    graph["3"]["inputs"]["denoise"] = denoise
    return graph


def job(workflow: dict[str, Any], images: list[dict[str, Any]] | None = None, job_id: str = "test",
        **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"workflow": workflow, **extra}
    if images is not None:
        body["images"] = images
    return {"id": job_id, "input": body}


def png_bytes(width: int = 64, height: int = 64, color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_result_image(item: dict[str, str]) -> Image.Image:
    assert item["type"] == "base64"
    return Image.open(io.BytesIO(base64.b64decode(item["data"])))


def with_settings(runtime: Any, **changes: Any) -> Any:
    """The shared runtime (same ComfyUI, models and job lock) under other Settings, e.g. limits or storage."""
    return dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, **changes))
