"""Flux's rectified-flow sampling against ComfyUI's definitions (comfy/model_sampling.py ModelSamplingFlux,
ModelSamplingDiscreteFlow, CONST; comfy/latent_formats.py Flux), with a stand-in transformer."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from worker.models.flux import FlowSchedule, FluxDenoiser
from worker.models.sd import Cond
from worker.sampling.ksampler import initial_noise, ksample
from worker.sampling.schedule import sigmas_for


def flux_shift(t: float, mu: float = 1.15) -> float:
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def test_flux_dev_table_is_comfyuis_model_sampling_flux() -> None:
    s = FlowSchedule.flux()
    assert len(s.sigmas) == 10000 and s.sigmas.dtype == torch.float32
    assert s.sigma_max == 1.0
    assert s.sigma_min == pytest.approx(flux_shift(1 / 10000), rel=1e-5)
    assert float(s.sigmas[4999]) == pytest.approx(flux_shift(0.5), rel=1e-6)
    assert s.timestep(0.25) == 0.25  # ModelSamplingFlux.timestep(sigma) is sigma


def test_flux_simple_and_normal_schedules_follow_comfyui() -> None:
    s = FlowSchedule.flux()
    simple = sigmas_for(s, "simple", 4)
    expected = [flux_shift((10000 - i * 2500) / 10000) for i in range(4)] + [0.0]
    assert simple.tolist() == pytest.approx(expected, rel=1e-6)
    # normal: timesteps (= sigmas for Flux) spaced linearly from sigma_max to sigma_min, then sigma(t) again.
    normal = sigmas_for(s, "normal", 3)
    ts = torch.linspace(s.sigma_max, s.sigma_min, 3).tolist()
    assert normal.tolist() == pytest.approx([flux_shift(t) for t in ts] + [0.0], rel=1e-5)


def test_schnell_table_is_discrete_flow_with_shift_1() -> None:
    s = FlowSchedule.discrete_flow(shift=1.0, multiplier=1.0)
    assert len(s.sigmas) == 1000 and s.sigma_max == 1.0 and s.sigma_min == pytest.approx(0.001)
    assert sigmas_for(s, "simple", 4).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


class Recorder(torch.nn.Module):
    """A stand-in FluxTransformer2DModel: predicts v = x / sigma (so denoised = 0) and records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(pooled_projection_dim=4, joint_attention_dim=8)
        self.calls: list[dict] = []

    def forward(self, hidden_states, timestep, guidance, img_ids, txt_ids, **kwargs):
        self.calls.append({"x": hidden_states.clone(), "t": timestep.clone(), "guidance": guidance,
                           "img_ids": img_ids, "txt_ids": txt_ids})
        return (hidden_states / timestep[:, None, None],)


@pytest.mark.parametrize("size", [(6, 4), (5, 3)])
def test_ksample_on_flux_uses_const_noise_scaling_patches_and_the_latent_format(size: tuple[int, int]) -> None:
    recorder = Recorder()
    model = FluxDenoiser(transformer=recorder, schedule=FlowSchedule.flux(), device=torch.device("cpu"),
                         dtype=torch.float32, name="stub")
    cond = Cond(embeds=torch.zeros(1, 7, 8), pooled=torch.zeros(1, 4), guidance=2.5)
    latent = torch.zeros(1, 16, *size)
    out = ksample(model, latent, seed=9, steps=3, cfg=1.0, sampler_name="euler", scheduler="simple",
                  positive=[cond], negative=[cond])
    # Every prediction is 0 in the model's space, so the result is 0 taken out of the latent format: the shift.
    assert out.shape == latent.shape and torch.allclose(out, torch.full_like(out, 0.1159))
    first = recorder.calls[0]
    # sigma_max = 1: x = 1 * noise + 0 * latent, packed into 2x2 patches (circularly padded when odd).
    noise = initial_noise(latent.shape, 9)
    rows, cols = (size[0] + 1) // 2, (size[1] + 1) // 2
    padded = torch.nn.functional.pad(noise, (0, cols * 2 - size[1], 0, rows * 2 - size[0]), mode="circular")
    packed = padded.reshape(1, 16, rows, 2, cols, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, rows * cols, 64)
    assert torch.equal(first["x"], packed)
    assert first["t"].tolist() == [1.0] and first["guidance"].tolist() == [2.5]
    assert first["img_ids"].shape == (rows * cols, 3) and first["img_ids"][-1].tolist() == [0, rows - 1, cols - 1]
    assert first["txt_ids"].shape == (7, 3) and not first["txt_ids"].any()
    assert [c["t"].item() for c in recorder.calls] == pytest.approx(sigmas_for(model.schedule, "simple", 3)[:-1])


def test_flux_default_guidance_and_schnell_without_guidance() -> None:
    recorder = Recorder()
    cond = Cond(embeds=torch.zeros(1, 7, 8), pooled=torch.zeros(1, 4))
    for guidance, expected in [(3.5, [3.5]), (None, None)]:
        model = FluxDenoiser(transformer=recorder, schedule=FlowSchedule.flux(), device=torch.device("cpu"),
                             dtype=torch.float32, name="stub", default_guidance=guidance)
        ksample(model, torch.zeros(1, 16, 4, 4), seed=1, steps=1, cfg=1.0, sampler_name="euler",
                scheduler="simple", positive=[cond], negative=[cond])
        got = recorder.calls[-1]["guidance"]
        assert (got.tolist() if got is not None else None) == expected


def test_euler_ancestral_on_flux_is_comfyuis_rf_variant() -> None:
    """ComfyUI's sample_euler_ancestral_RF (eta 1), written out for two steps of a model predicting 0."""
    from worker.sampling.ksampler import FLOW_SAMPLERS
    from worker.sampling.noise import StepNoise

    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    sigmas = [1.0, 0.6, 0.0]
    out = FLOW_SAMPLERS["euler_ancestral"](lambda x, sigma: torch.zeros_like(x), x, sigmas, 5, lambda i, n: None)
    noise = StepNoise(x, 5)
    sigma_down = 0.6 * (1 + (0.6 / 1.0 - 1))
    renoise = (0.6**2 - sigma_down**2 * 0.4**2 / (1 - sigma_down) ** 2) ** 0.5
    expected = (0.4 / (1 - sigma_down)) * (sigma_down * x) + noise() * renoise
    assert torch.allclose(out, torch.zeros_like(x))  # the last step jumps to the (zero) prediction
    one = FLOW_SAMPLERS["euler_ancestral"](lambda x, sigma: torch.zeros_like(x), x, [1.0, 0.6], 5, lambda i, n: None)
    assert torch.allclose(one, expected)
