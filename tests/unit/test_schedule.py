"""Sigma schedules checked against diffusers' schedulers (an independent, maintained implementation)
where both define the same thing, and against ComfyUI's rules where only ComfyUI does."""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from worker.sampling.schedule import SCHEDULERS, DiscreteSchedule, sigmas_for, step_window

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


# Reference schedules for SD1.x/SDXL (scaled_linear betas 0.00085..0.012 over 1000 steps, so sigma_max =
# 14.6146 and sigma_min = 0.0292), written down to 4 decimals from ComfyUI's definitions, computed in float64
# with numpy directly from the betas (not with this module); compared within 1e-4 since the schedules are
# float32, as ComfyUI's are:
# - normal (comfy/samplers.py normal_scheduler): timesteps linspace(999, 0, steps), each sigma interpolated
#   linearly in log sigma between the two nearest training sigmas; sigma(0) = 0.0292 is not 0, so a 0 is
#   appended. What euler/normal, the default KSampler, samples with.
# - karras (k_diffusion get_sigmas_karras, rho 7): (max^(1/7) + i/(steps-1) * (min^(1/7) - max^(1/7)))^7,
#   then 0. What dpmpp_2m/karras samples with.
NORMAL_20 = [14.6146, 10.7468, 8.0815, 6.2049, 4.8557, 3.8654, 3.1238, 2.5572, 2.1157, 1.7648, 1.4806,
             1.2458, 1.0481, 0.8784, 0.7297, 0.5964, 0.4736, 0.3555, 0.2322, 0.0292, 0.0]
KARRAS_20 = [14.6146, 11.7254, 9.3402, 7.3836, 5.7894, 4.4998, 3.4647, 2.6408, 1.9909, 1.4832, 1.0908,
             0.7909, 0.5647, 0.3964, 0.2730, 0.1842, 0.1213, 0.0779, 0.0485, 0.0292, 0.0]
# karras with 21 sigmas before the 0: what dpm_2, dpm_2_ancestral, uni_pc and uni_pc_bh2 start from for 20
# steps (ComfyUI's KSampler schedules one more step for them and drops the second-to-last sigma).
KARRAS_21 = [14.6146, 11.8572, 9.5583, 7.6525, 6.0821, 4.7965, 3.7513, 2.9076, 2.2322, 1.6959, 1.2741, 0.9456,
             0.6926, 0.4999, 0.3552, 0.2479, 0.1698, 0.1137, 0.0744, 0.0473, 0.0292, 0.0]


def test_euler_normal_20_steps_matches_the_reference() -> None:
    sigmas = sigmas_for(SD, "normal", 20, sampler="euler")
    torch.testing.assert_close(sigmas, torch.tensor(NORMAL_20), atol=1e-4, rtol=0)  # 4 decimals; float32 as ComfyUI


def test_dpmpp_2m_karras_20_steps_matches_the_reference() -> None:
    sigmas = sigmas_for(SD, "karras", 20, sampler="dpmpp_2m")
    torch.testing.assert_close(sigmas, torch.tensor(KARRAS_20), atol=1e-4, rtol=0)  # 4 decimals; float32 as ComfyUI


@pytest.mark.parametrize("sampler", ["dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"])
def test_some_samplers_drop_the_penultimate_sigma_of_a_longer_schedule(sampler: str) -> None:
    sigmas = sigmas_for(SD, "karras", 20, sampler=sampler)
    expected = KARRAS_21[:-2] + KARRAS_21[-1:]  # 21 values: still 20 steps, the last from 0.0473 to 0
    torch.testing.assert_close(sigmas, torch.tensor(expected), atol=1e-4, rtol=0)  # 4 decimals; float32 as ComfyUI
    # With denoise the longer schedule is made first, then its tail kept, as in ComfyUI's set_steps.
    longer = sigmas_for(SD, "normal", 20, sampler=sampler)
    torch.testing.assert_close(sigmas_for(SD, "normal", 10, denoise=0.5, sampler=sampler), longer[-11:])


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "heun", "lms", "dpmpp_2m", "dpmpp_sde", "lcm", "ddim"])
def test_other_samplers_take_the_schedule_as_it_is(sampler: str) -> None:
    sigmas = sigmas_for(SD, "karras", 20, sampler=sampler)
    torch.testing.assert_close(sigmas, torch.tensor(KARRAS_20), atol=1e-4, rtol=0)  # 4 decimals; float32 as ComfyUI


# beta (comfy/samplers.py beta_scheduler, arXiv:2407.12173, alpha = beta = 0.6): timesteps
# rint(999 * BetaQuantile(1 - i/steps)), i < steps, then the training sigmas at those timesteps and 0. The
# timesteps below come from scipy.stats.beta.ppf, the function ComfyUI calls.
BETA_10_TIMESTEPS = [999, 959, 876, 765, 637, 500, 362, 234, 123, 40]
BETA_20_TIMESTEPS = [999, 986, 959, 922, 876, 823, 765, 703, 637, 569, 500, 430, 362, 296, 234, 176, 123, 77, 40, 13]
BETA_10 = [14.6146, 11.5428, 7.3718, 4.3728, 2.6152, 1.6183, 1.0273, 0.6549, 0.3955, 0.1991, 0.0]


@pytest.mark.parametrize(("steps", "timesteps"), [(10, BETA_10_TIMESTEPS), (20, BETA_20_TIMESTEPS)])
def test_beta_takes_training_sigmas_at_beta_quantiles(steps: int, timesteps: list[int]) -> None:
    sigmas = sigmas_for(SD, "beta", steps)
    expected = [*(float(SD.sigmas[t]) for t in timesteps), 0.0]
    torch.testing.assert_close(sigmas, torch.tensor(expected))


def test_beta_reference_values_and_symmetry() -> None:
    torch.testing.assert_close(sigmas_for(SD, "beta", 10), torch.tensor(BETA_10), atol=1e-4, rtol=0)
    # Beta(0.6, 0.6) is symmetric about 1/2: the timesteps mirror about 999/2 (499.5 rounds half to even: 500).
    for t, mirrored in zip(BETA_20_TIMESTEPS[1:], reversed(BETA_20_TIMESTEPS[1:]), strict=True):
        assert t + mirrored == 999 or {t, mirrored} == {500}


def test_beta_drops_repeated_timesteps() -> None:
    # 200 quantiles round to 199 distinct timesteps (two land on one near the ends): 199 steps, as in ComfyUI.
    sigmas = sigmas_for(SD, "beta", 200)
    assert len(sigmas) == 200
    assert torch.all(sigmas[:-1] > sigmas[1:])


def test_step_window_is_comfyuis_start_and_end_step() -> None:
    full = sigmas_for(SD, "karras", 10)
    assert torch.equal(step_window(full, 0, 10000, True), full)  # KSamplerAdvanced's defaults: everything
    assert torch.equal(step_window(full, None, None, False), full)  # KSampler
    leftover = step_window(full, 0, 4, False)  # return_with_leftover_noise: stop at sigma 4, keep its noise
    assert torch.equal(leftover, full[:5])
    finished = step_window(full, 0, 4, True)  # disabled: the last of those steps goes to 0 instead
    assert torch.equal(finished[:-1], full[:4]) and float(finished[-1]) == 0.0
    assert float(full[4]) != 0.0  # (the window did not change the schedule it came from)
    assert torch.equal(step_window(full, 4, 10000, True), full[4:])  # the second half starts where it stopped
    assert step_window(full, 10, 10000, True) is None  # nothing left to do: ComfyUI returns the latent
    assert step_window(full, 3, 2, True) is None
