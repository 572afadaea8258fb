"""CUDA-graph capture on a real GPU: replayed UNet output matches eager (fp16 tolerance), graphs are reused,
and a whole job with capture gives the eager image within rounding. Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import decode_result_image, txt2img
from worker.sampling.capture import UNetRunner

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_runtime(base_env: dict[str, str]):
    from worker.config import Settings
    from worker.runtime import boot

    return boot(Settings.from_env({**base_env, "WORKER_DEVICE": "cuda", "DENOISER_CAPTURE": "cuda_graph"}))


def test_replay_matches_eager(cuda_runtime) -> None:
    unet = cuda_runtime.models.checkpoint("tiny-sd").model.unet
    runner = UNetRunner(unet, "cuda_graph")
    g = torch.Generator(device="cuda").manual_seed(0)
    sample = torch.randn(2, 4, 32, 32, device="cuda", dtype=torch.float16, generator=g)
    context = torch.randn(2, 77, 32, device="cuda", dtype=torch.float16, generator=g)
    with torch.inference_mode():
        for t in (900.0, 500.0, 10.0):
            timestep = torch.full((2,), t, device="cuda")
            eager = unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
            torch.testing.assert_close(runner(sample, timestep, context), eager, atol=1e-2, rtol=1e-2)
    assert len(runner.replays) == 1 and not runner.failed


def test_job_with_capture_matches_eager(cuda_runtime) -> None:
    from worker.jobs import run_job

    model = cuda_runtime.models.checkpoint("tiny-sd").model
    captured = run_job(cuda_runtime, {"id": "g", "input": {"workflow": txt2img(width=256, height=256, seed=2)}})
    graphs = len(model.runner.replays)
    model.runner = UNetRunner(model.unet, "off")
    eager = run_job(cuda_runtime, {"id": "g", "input": {"workflow": txt2img(width=256, height=256, seed=2)}})
    a, b = (np.asarray(decode_result_image(r["images"][0])).astype(int) for r in (captured, eager))
    assert graphs >= 1
    assert np.abs(a - b).max() <= 2
