"""k-diffusion style samplers over a denoiser `model(x, sigma) -> denoised x0`.

Written by hand: the update rules are a few lines each, and the maintained package that holds them
(k-diffusion) pulls in training dependencies a worker image should not carry. Semantics follow
ComfyUI's copies (s_churn = 0, eta = 1, s_noise = 1; ancestral noise from a generator seeded with the
job's seed). The loop keeps sigmas as Python floats: no host-device sync per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
StepCallback = Callable[[int, int], None]


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part down to sigma_down and fresh noise of size sigma_up."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def noise_generator(x: torch.Tensor, seed: int) -> Callable[[], torch.Tensor]:
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    return lambda: torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)


def euler(model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback) -> torch.Tensor:
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        d = (x - denoised) / sigma
        x = x + d * (sigma_next - sigma)
        on_step(i + 1, steps)
    return x


def euler_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: list[float], seed: int, on_step: StepCallback
) -> torch.Tensor:
    steps = len(sigmas) - 1
    noise = noise_generator(x, seed)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
        d = (x - denoised) / sigma
        x = x + d * (sigma_down - sigma)
        if sigma_next > 0:
            x = x + noise() * sigma_up
        on_step(i + 1, steps)
    return x


Sampler = Callable[[Denoiser, torch.Tensor, list[float], int, StepCallback], torch.Tensor]
SAMPLERS: dict[str, Sampler] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
}
