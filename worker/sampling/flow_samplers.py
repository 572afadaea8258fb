"""ComfyUI's samplers for flow-matching (CONST) models such as Flux, where its k-diffusion functions switch to
rectified-flow versions: x_sigma = (1 - sigma) * x0 + sigma * noise, so noise added during sampling must
also rescale the signal, and half log-SNR is lambda = log((1 - sigma) / sigma).

The ancestral ones (euler_ancestral, dpm_2_ancestral, dpmpp_2s_ancestral) step down to
sigma_down = sigma_next^2 / sigma (eta = 1), then rescale by alpha_next / alpha_down and add fresh noise of
the size that brings the marginal back to sigma_next; lcm re-noises its estimate by the flow mix; the SDE ones
are samplers.py's, run with flow=True. Same sampler interface and noise sources as samplers.py.
"""

from __future__ import annotations

import torch

from worker.sampling.noise import StepNoise
from worker.sampling.samplers import (
    Denoiser,
    Sampler,
    StepCallback,
    _brownian_sampler,
    _dpmpp_2m_sde,
    _dpmpp_3m_sde,
    _dpmpp_sde,
    _f32,
    _log_midpoint,
    _steps,
)

ETA = 1.0  # ComfyUI's default for every ancestral and SDE sampler


def _down_step(sigma: float, sigma_next: float) -> tuple[float, float, float]:
    """(sigma_down, alpha_next / alpha_down, renoise): the deterministic target, the signal's rescale and the
    noise to add so that x ends at sigma_next."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * ETA)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = max(sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2, 0.0) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise


def euler_ancestral_rf(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback
) -> torch.Tensor:
    """ComfyUI's sample_euler_ancestral_RF, which its euler_ancestral runs for flow (CONST) models such as Flux:
    an Euler step down to sigma_down, then the signal rescaled to the next sigma's and fresh noise added."""
    steps = _steps(sigmas)
    noise = StepNoise(x, seed)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            sigma_down, rescale, renoise = _down_step(sigma, sigma_next)
            ratio = sigma_down / sigma
            x = ratio * x + (1 - ratio) * denoised
            x = rescale * x + noise(sigma, sigma_next) * renoise
        on_step(i + 1, steps)
    return x


def dpm_2_ancestral_rf(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback
) -> torch.Tensor:
    """DPM-Solver-2 (a midpoint call in log sigma) down to sigma_down, then rescaled and re-noised."""
    steps = _steps(sigmas)
    noise = StepNoise(x, seed)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        sigma_down, rescale, renoise = _down_step(sigma, sigma_next)
        d = (x - denoised) / sigma
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = _log_midpoint(sigma, sigma_down)
            x_2 = x + d * (sigma_mid - sigma)
            d_2 = (x_2 - model(x_2, sigma_mid)) / sigma_mid
            x = x + d_2 * (sigma_down - sigma)
            x = rescale * x + noise(sigma, sigma_next) * renoise
        on_step(i + 1, steps)
    return x


def _flow_lambda(sigma: float) -> torch.Tensor:
    return ((1 - _f32(sigma)) / _f32(sigma)).log()


def dpmpp_2s_ancestral_rf(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback
) -> torch.Tensor:
    """DPM-Solver++(2S) in the flow form: a model call at the lambda midpoint between sigma and sigma_down
    (0.9999 from sigma 1, where lambda is infinite), interpolations toward the estimates, then rescaled and
    re-noised."""
    steps = _steps(sigmas)
    noise = StepNoise(x, seed)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        sigma_down, rescale, renoise = _down_step(sigma, sigma_next)
        if sigma_next == 0:
            x = x + (x - denoised) / sigma * (sigma_down - sigma)
        else:
            if sigma == 1.0:
                sigma_mid = 0.9999
            else:
                lambda_i, lambda_down = _flow_lambda(sigma), _flow_lambda(sigma_down)
                sigma_mid = float(1 / ((lambda_i + 0.5 * (lambda_down - lambda_i)).exp() + 1))
            ratio = sigma_mid / sigma
            denoised_2 = model(ratio * x + (1 - ratio) * denoised, sigma_mid)
            ratio = sigma_down / sigma
            x = ratio * x + (1 - ratio) * denoised_2
            x = rescale * x + noise(sigma, sigma_next) * renoise
        on_step(i + 1, steps)
    return x


def lcm_rf(model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback) -> torch.Tensor:
    """Latent consistency for a flow model: jump to the estimate, then mix in noise to the next sigma."""
    steps = _steps(sigmas)
    noise = StepNoise(x, seed)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x = model(x, sigma)
        if sigma_next > 0:
            x = sigma_next * noise(sigma, sigma_next) + (1 - sigma_next) * x
        on_step(i + 1, steps)
    return x


# Where ComfyUI runs another formula for flow models; every other sampler is the same for both kinds.
FLOW_SAMPLERS: dict[str, Sampler] = {
    "euler_ancestral": euler_ancestral_rf,
    "dpm_2_ancestral": dpm_2_ancestral_rf,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral_rf,
    "dpmpp_sde": _brownian_sampler(_dpmpp_sde, on_cpu=True, flow=True),
    "dpmpp_sde_gpu": _brownian_sampler(_dpmpp_sde, on_cpu=False, flow=True),
    "dpmpp_2m_sde": _brownian_sampler(_dpmpp_2m_sde, on_cpu=True, flow=True),
    "dpmpp_2m_sde_gpu": _brownian_sampler(_dpmpp_2m_sde, on_cpu=False, flow=True),
    "dpmpp_3m_sde": _brownian_sampler(_dpmpp_3m_sde, on_cpu=True, flow=True),
    "dpmpp_3m_sde_gpu": _brownian_sampler(_dpmpp_3m_sde, on_cpu=False, flow=True),
    "lcm": lcm_rf,
}
