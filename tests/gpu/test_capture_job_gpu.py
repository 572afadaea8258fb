"""DENOISER_CAPTURE=cuda_graph on a real GPU, whole jobs through run_job (tests/gpu/cuda_process.py boots the
worker on cuda in its own process): a captured job's image equals stock ComfyUI's eager one within
TOLERANCE, and a LoRA on the same resident model gets its own graph: the unpatched graph is never replayed
on the patched weights (its pixels would be the plain image's). Skipped without a GPU.

ATTENTION_BACKEND=sdpa keeps ComfyUI's own attention in the jobs, so the eager reference (ComfyUI's node
classes called directly, worker/embed/reference.py, no wrapper on that model) runs the same kernels and any
difference is the graph's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gpu.cuda_process import run_on_cuda

pytestmark = pytest.mark.gpu
# Largest per-channel difference (of 255) between a replayed and an eager image, and the mean: the replay
# runs the same kernels on the same inputs (fp16), so it is normally exact.
TOLERANCE_MAX, TOLERANCE_MEAN = 2, 0.05
LORA = "capture-gpu-lora.safetensors"

JOBS = """
import base64, io
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tests.helpers import TINY, job, txt2img
from worker.embed import reference
from worker.jobs import run_job

LORA = "capture-gpu-lora.safetensors"
g = torch.Generator().manual_seed(3)
save_file({"diffusion_model.out.2.diff": torch.randn(4, 320, 3, 3, generator=g) * 0.05},
          str(Path(MODELS) / "loras" / LORA))

def pixels(result):
    assert "error" not in result, result
    data = base64.b64decode(result["images"][0]["data"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).tolist()

def lora_graph(seed):
    graph = txt2img(width=512, height=512, steps=8, seed=seed)
    graph["10"] = {"class_type": "LoraLoaderModelOnly",
                   "inputs": {"model": ["4", 0], "lora_name": LORA, "strength_model": 1.0}}
    graph["3"]["inputs"]["model"] = ["10", 0]
    return graph

def stock(seed, lora=False):
    prepare = (lambda m: reference.with_lora(m, LORA, 1.0)) if lora else None
    with runtime.job_lock:
        return reference.txt2img(TINY, seed, 8, 7.0, 512, 512, "a red cube", "blurry",
                                 prepare_model=prepare).tolist()

def snapshot():
    return [m for m in runtime.capture.health()["models"] if m["graphs"]]

report["plain"] = pixels(run_job(runtime, job(txt2img(width=512, height=512, steps=8, seed=11), job_id="c1")))
report["after_plain"] = snapshot()
report["lora"] = pixels(run_job(runtime, job(lora_graph(11), job_id="c2")))
report["after_lora"] = snapshot()
report["plain_again"] = pixels(run_job(runtime, job(txt2img(width=512, height=512, steps=8, seed=12), job_id="c3")))
report["after_again"] = snapshot()
report["stock_plain"] = stock(11)
report["stock_lora"] = stock(11, lora=True)
report["stock_again"] = stock(12)
report["health"] = runtime.capture.health()
"""


@pytest.fixture(scope="module")
def report(base_env: dict[str, str], models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    code = f"MODELS = {str(models_dir)!r}\n" + JOBS
    return run_on_cuda(code, base_env, tmp_path_factory.mktemp("capture-job"), ATTENTION_BACKEND="sdpa",
                       DENOISER_CAPTURE="cuda_graph")


def close(a: Any, b: Any) -> tuple[int, float]:
    diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
    return int(diff.max()), float(diff.mean())


def ours(label: str) -> bool:
    """A graph of the jobs' call (the warm-up's 2-step one has another key: its schedule's length)."""
    return "x=[2, 4, 64, 64]" in label and " steps=8 " in label


def the_model(snapshot: list[dict[str, Any]]) -> dict[str, Any]:
    [model] = [m for m in snapshot if any(ours(g["inputs"]) for g in m["graphs"])]
    return model


def test_captured_jobs_equal_stock_comfyui_eager(report: dict[str, Any]) -> None:
    for ours, stock in (("plain", "stock_plain"), ("lora", "stock_lora"), ("plain_again", "stock_again")):
        worst, mean = close(report[ours], report[stock])
        assert worst <= TOLERANCE_MAX and mean <= TOLERANCE_MEAN, (ours, worst, mean)
    assert close(report["plain"], report["lora"])[1] > 1  # the LoRA changes the image
    health = report["health"]
    assert health["mode"] == "cuda_graph"
    assert not any(m["eager_after_failure"] for m in health["models"]), health


def test_a_lora_never_replays_the_unpatched_graph(report: dict[str, Any]) -> None:
    plain = the_model(report["after_plain"])
    [unpatched] = [g for g in plain["graphs"] if ours(g["inputs"])]
    assert unpatched["replays"] >= 6  # steps 2..8 of the first job came from the graph
    lora = the_model(report["after_lora"])
    replays = {g["inputs"]: g["replays"] for g in lora["graphs"]}
    assert replays[unpatched["inputs"]] == unpatched["replays"]  # untouched during the LoRA job
    [patched] = [label for label in replays if ours(label) and label != unpatched["inputs"]]
    assert replays[patched] >= 6 and lora["captures"] == plain["captures"] + 1
    again = the_model(report["after_again"])
    assert {g["inputs"]: g["replays"] for g in again["graphs"]}[unpatched["inputs"]] >= unpatched["replays"] + 7
