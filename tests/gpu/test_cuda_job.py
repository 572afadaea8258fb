"""Whole jobs through worker.jobs.run_job on the embedded ComfyUI on a CUDA device, the built-in tiny
checkpoint resident on the GPU in half precision. The runtime boots in its own process (tests/gpu/
cuda_process.py); this module boots it once. Skipped without a GPU."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.gpu.cuda_process import run_on_cuda
from tests.helpers import TINY

pytestmark = pytest.mark.gpu

JOBS = """
import torch
from tests.helpers import job, txt2img
from worker.jobs import run_job

def custom_sampling(seed):
    graph = txt2img(width=128, height=96, seed=seed)
    del graph["3"]
    graph.update({
        "20": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "21": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "22": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "normal", "steps": 3,
                                                          "denoise": 1.0}},
        "23": {"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["6", 0],
                                                     "negative": ["7", 0], "cfg": 7.0}},
        "24": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["20", 0], "guider": ["23", 0], "sampler": ["21", 0], "sigmas": ["22", 0],
            "latent_image": ["5", 0]}},
    })
    graph["8"]["inputs"]["samples"] = ["24", 0]
    return graph

report["first"] = run_job(runtime, job(txt2img(width=128, height=96, seed=3), job_id="g1"))
report["again"] = run_job(runtime, job(txt2img(width=128, height=96, seed=3), job_id="g2"))
# The same sampling through other nodes: computed afresh on the GPU, not served from ComfyUI's cache.
report["custom"] = run_job(runtime, job(custom_sampling(3), job_id="g3"))
report["other_seed"] = run_job(runtime, job(txt2img(width=128, height=96, seed=4), job_id="g4"))
report["big"] = run_job(runtime, job(txt2img(width=512, height=512, seed=5, batch_size=2), job_id="g5"))
report["resident"] = runtime.engine.resident()
report["health"] = runtime.health()
report["cuda_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
"""


@pytest.fixture(scope="module")
def cuda_report(base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_on_cuda(JOBS, base_env, tmp_path_factory.mktemp("cuda-job"))


def image(result: dict[str, Any], index: int = 0) -> Image.Image:
    item = result["images"][index]
    assert item["type"] == "base64"
    return Image.open(io.BytesIO(base64.b64decode(item["data"])))


def test_the_job_runs_on_the_gpu_and_is_sized(cuda_report: dict[str, Any]) -> None:
    first = cuda_report["first"]
    assert "error" not in first, first
    assert first["metadata"]["device"] == "cuda" and first["metadata"]["comfyui"] == "0.8.0"
    picture = image(first)
    assert picture.format == "PNG" and picture.size == (128, 96)
    assert np.asarray(picture.convert("RGB")).std() > 1  # an image, not a constant
    big = cuda_report["big"]
    assert [image(big, i).size for i in range(2)] == [(512, 512), (512, 512)]


def test_models_are_resident_on_the_gpu_in_half_precision(cuda_report: dict[str, Any]) -> None:
    health = cuda_report["health"]
    assert health["device"] == "cuda" and health["gpu"] == cuda_report["cuda_name"]
    assert health["preloaded_checkpoints"] == [TINY]
    assert [w["error"] for w in health["warmup"].values()] and not any(w["error"] for w in health["warmup"].values())
    [unet] = [m for m in cuda_report["resident"] if m["model"] == "BaseModel"]
    assert unet["device"].startswith("cuda") and unet["param_devices"] == [unet["device"]]
    assert unet["dtype"] in ("float16", "bfloat16")  # as ComfyUI picks it for this GPU


def test_repeated_job_comes_from_the_cache_and_a_recomputed_one_matches(cuda_report: dict[str, Any]) -> None:
    first, again, custom = cuda_report["first"], cuda_report["again"], cuda_report["custom"]
    assert again["images"][0]["data"] == first["images"][0]["data"]
    assert "3" in again["metadata"]["cached_nodes"] and "3 KSampler" not in again["metadata"]["nodes_ms"]
    assert "24 SamplerCustomAdvanced" in custom["metadata"]["nodes_ms"]
    a, b = (np.asarray(image(r).convert("RGB")).astype(int) for r in (first, custom))
    assert np.abs(a - b).max() <= 2  # the same sampling on the same GPU: equal up to rounding
    other = np.asarray(image(cuda_report["other_seed"]).convert("RGB")).astype(int)
    assert np.abs(a - other).mean() > 5  # another seed is another image


def test_job_timings_are_reported(cuda_report: dict[str, Any]) -> None:
    metadata = cuda_report["first"]["metadata"]
    assert metadata["stages_ms"]["sampling"] > 0 and metadata["nodes_ms"]["3 KSampler"] > 0
    assert metadata["attention"]["backend"] == cuda_report["health"]["attention"]["backend"]
