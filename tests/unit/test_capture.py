"""The denoiser runner: eager by default, CUDA-graph replay when asked, clean fallback to eager."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from tests.helpers import txt2img
from worker.jobs import run_job
from worker.sampling.capture import UNetRunner


@pytest.fixture(scope="module")
def unet(runtime):
    return runtime.models.checkpoint("tiny-sd").model.unet


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 32, generator=g)


def eager(unet, sample, timestep, context) -> torch.Tensor:
    return unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]


def test_off_is_the_plain_unet_call(unet) -> None:
    with torch.inference_mode():
        assert torch.equal(UNetRunner(unet)(*inputs()), eager(unet, *inputs()))


def test_cuda_graph_mode_on_cpu_never_tries_to_capture(unet) -> None:
    attempts: list[int] = []
    runner = UNetRunner(unet, "cuda_graph", capture=lambda fn, args: attempts.append(1) or fn)
    with torch.inference_mode():
        assert torch.equal(runner(*inputs()), eager(unet, *inputs()))
    assert attempts == []


def test_failed_capture_falls_back_to_eager_once_logged(unet, caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    def broken(fn, args):
        attempts.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    runner = UNetRunner(unet, "cuda_graph", capture=broken, eligible=lambda sample: True)
    with torch.inference_mode(), caplog.at_level(logging.WARNING, logger="worker.sampling.capture"):
        first, second = runner(*inputs()), runner(*inputs())
    expected = eager(unet, *inputs())
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert attempts == [1]  # not retried for the same input signature
    assert sum("capture failed" in r.message for r in caplog.records) == 1


def test_replay_is_used_per_signature(unet) -> None:
    captured: list[tuple[int, ...]] = []

    def fake_capture(fn, args):
        captured.append(tuple(args[0].shape))
        return lambda *new: fn(*new) * 0 + 7  # stands in for a graph replay

    runner = UNetRunner(unet, "cuda_graph", capture=fake_capture, eligible=lambda sample: True)
    sample, timestep, context = inputs()
    with torch.inference_mode():
        assert torch.equal(runner(sample, timestep, context), torch.full_like(sample, 7))
        runner(sample + 1, timestep, context)  # same shapes: replayed, not captured again
        runner(torch.randn(2, 4, 16, 8), timestep, context)  # new shape: a second capture
    assert captured == [(2, 4, 8, 8), (2, 4, 16, 8)]


def test_unknown_mode_is_refused(unet) -> None:
    with pytest.raises(ValueError, match="capture mode"):
        UNetRunner(unet, "tensorrt")


def test_whole_job_unchanged_on_cpu_with_capture_on(runtime) -> None:
    settings = dataclasses.replace(runtime.settings, denoiser_capture="cuda_graph")
    checkpoint = runtime.models.checkpoint("tiny-sd")
    previous = checkpoint.model.runner
    try:
        checkpoint.model.runner = UNetRunner(checkpoint.model.unet, settings.denoiser_capture)
        on = run_job(runtime, {"id": "c", "input": {"workflow": txt2img(seed=4)}})
    finally:
        checkpoint.model.runner = previous
    off = run_job(runtime, {"id": "c", "input": {"workflow": txt2img(seed=4)}})
    assert on["images"][0]["data"] == off["images"][0]["data"]
