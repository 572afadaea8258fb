"""Sigma schedules checked against diffusers' schedulers (an independent, maintained implementation)
where both define the same thing, and against ComfyUI's rules where only ComfyUI does."""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from worker.sampling.schedule import SCHEDULERS, DiscreteSchedule, sigmas_for

SD = DiscreteSchedule.from_betas()  # SD1.x/SDXL: scaled_linear 0.00085..0.012, 1000 steps


def diffusers_sigmas(steps: int, **options) -> torch.Tensor:
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **options)
    scheduler.set_timesteps(steps)
    return scheduler.sigmas


def test_training_sigma_range_of_sd() -> None:
    assert SD.sigma_max == pytest.approx(14.6146, abs=1e-4)
    assert SD.sigma_min == pytest.approx(0.029167, abs=1e-5)


@pytest.mark.parametrize("steps", [4, 10, 30])
def test_karras_matches_diffusers(steps: int) -> None:
    torch.testing.assert_close(sigmas_for(SD, "karras", steps), diffusers_sigmas(steps, use_karras_sigmas=True))


@pytest.mark.parametrize("steps", [4, 10, 30])
def test_exponential_matches_diffusers(steps: int) -> None:
    expected = diffusers_sigmas(steps, use_exponential_sigmas=True)
    torch.testing.assert_close(sigmas_for(SD, "exponential", steps), expected)


@pytest.mark.parametrize("steps", [4, 10, 112])
def test_normal_matches_diffusers_linspace_on_whole_timesteps(steps: int) -> None:
    # When 999/(steps-1) is whole, every timestep is an integer and log vs linear interpolation agree.
    expected = diffusers_sigmas(steps, timestep_spacing="linspace")
    torch.testing.assert_close(sigmas_for(SD, "normal", steps), expected)


def test_normal_interpolates_in_log_space_between_timesteps() -> None:
    # 20 steps: timesteps 999, 946.42.. are fractional; ComfyUI interpolates log-sigma linearly.
    sigmas = sigmas_for(SD, "normal", 20)
    t = torch.tensor(999 - 999 / 19)
    low, high = int(t.floor()), int(t.ceil())
    w = float(t - low)
    expected = torch.exp((1 - w) * SD.log_sigmas[low] + w * SD.log_sigmas[high])
    assert float(sigmas[1]) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_is_decreasing_and_ends_at_zero(name: str) -> None:
    sigmas = sigmas_for(SD, name, 10)  # 10 divides 1000: ddim_uniform gives exactly 10 steps too
    assert len(sigmas) == 11
    assert float(sigmas[-1]) == 0.0
    assert torch.all(sigmas[:-1] > sigmas[1:])
    assert float(sigmas[0]) <= SD.sigma_max + 1e-4


def test_simple_takes_evenly_strided_training_sigmas() -> None:
    sigmas = sigmas_for(SD, "simple", 4)
    expected = [SD.sigmas[-1], SD.sigmas[-251], SD.sigmas[-501], SD.sigmas[-751], 0.0]
    torch.testing.assert_close(sigmas, torch.tensor([float(x) for x in expected]))


def test_partial_denoise_keeps_the_tail_of_a_longer_schedule() -> None:
    # ComfyUI: denoise 0.5 with 10 steps schedules 20 and keeps the last 11 sigmas.
    torch.testing.assert_close(sigmas_for(SD, "karras", 10, denoise=0.5), sigmas_for(SD, "karras", 20)[-11:])
    assert len(sigmas_for(SD, "normal", 10, denoise=0.0)) == 0


def test_v_prediction_and_unknown_schedule() -> None:
    assert DiscreteSchedule.from_betas(prediction="v_prediction").prediction == "v_prediction"
    with pytest.raises(ValueError, match="beta_schedule"):
        DiscreteSchedule.from_betas(beta_schedule="cosine")


def test_timestep_is_the_nearest_training_step() -> None:
    assert SD.timestep(SD.sigma_max) == 999.0
    assert SD.timestep(SD.sigma_min) == 0.0
    assert SD.timestep(float(SD.sigmas[500]) * 1.0001) == 500.0
