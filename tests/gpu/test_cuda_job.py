"""The same whole job on a CUDA device (fp16 weights resident on the GPU). Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import decode_result_image, txt2img

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_runtime(base_env: dict[str, str]):
    from worker.config import Settings
    from worker.runtime import boot

    return boot(Settings.from_env({**base_env, "WORKER_DEVICE": "cuda"}))


def test_models_are_resident_on_the_gpu_in_fp16(cuda_runtime) -> None:
    checkpoint = cuda_runtime.models.checkpoint("tiny-sd")
    unet_param = next(checkpoint.model.unet.parameters())
    assert unet_param.device.type == "cuda"
    assert unet_param.dtype == torch.float16


def test_job_on_gpu_is_deterministic_and_sized(cuda_runtime) -> None:
    from worker.jobs import run_job

    first = run_job(cuda_runtime, {"id": "g1", "input": {"workflow": txt2img(width=128, height=96, seed=3)}})
    again = run_job(cuda_runtime, {"id": "g2", "input": {"workflow": txt2img(width=128, height=96, seed=3)}})
    assert decode_result_image(first["images"][0]).size == (128, 96)
    assert first["images"][0]["data"] == again["images"][0]["data"]
