"""Samplers checked on a problem with a known answer: data drawn from N(0, s^2), whose ideal denoiser is
x * s^2 / (s^2 + sigma^2). The probability-flow ODE then has the closed form
x(sigma) = x_T * sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2)."""

from __future__ import annotations

import math

import pytest
import torch

from worker.sampling.samplers import SAMPLERS, ancestral_step, euler, euler_ancestral
from worker.sampling.schedule import DiscreteSchedule, sigmas_for

DATA_STD = 0.5


def ideal_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x * DATA_STD**2 / (DATA_STD**2 + sigma**2)


def no_callback(step: int, steps: int) -> None:
    pass


def test_euler_follows_the_exact_ode_solution() -> None:
    sigmas = [float(s) for s in sigmas_for(DiscreteSchedule.from_betas(), "karras", 200)]
    x_t = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * math.sqrt(DATA_STD**2 + sigmas[0] ** 2)
    out = euler(ideal_denoiser, x_t, sigmas, seed=0, on_step=no_callback)
    exact = x_t * DATA_STD / math.sqrt(DATA_STD**2 + sigmas[0] ** 2)
    torch.testing.assert_close(out, exact, atol=5e-3, rtol=1e-2)


def test_euler_ancestral_reaches_the_data_distribution() -> None:
    # A first-order SDE solver: its bias shrinks with the step count (60 steps: std 0.47), so use many.
    sigmas = [float(s) for s in sigmas_for(DiscreteSchedule.from_betas(), "karras", 1000)]
    x_t = torch.randn(20000, generator=torch.Generator().manual_seed(1)) * math.sqrt(DATA_STD**2 + sigmas[0] ** 2)
    out = euler_ancestral(ideal_denoiser, x_t, sigmas, seed=3, on_step=no_callback)
    assert float(out.std()) == pytest.approx(DATA_STD, rel=0.02)
    assert abs(float(out.mean())) < 0.02


def test_ancestral_noise_is_seeded() -> None:
    sigmas = [float(s) for s in sigmas_for(DiscreteSchedule.from_betas(), "normal", 8)]
    x_t = torch.randn(64, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    a = euler_ancestral(ideal_denoiser, x_t, sigmas, seed=7, on_step=no_callback)
    b = euler_ancestral(ideal_denoiser, x_t, sigmas, seed=7, on_step=no_callback)
    c = euler_ancestral(ideal_denoiser, x_t, sigmas, seed=8, on_step=no_callback)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ancestral_step_splits_variance() -> None:
    down, up = ancestral_step(2.0, 1.0)
    assert down**2 + up**2 == pytest.approx(1.0)
    assert 0 < down < 1.0
    assert ancestral_step(1.0, 0.0) == (0.0, 0.0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_report_every_step(name: str) -> None:
    seen: list[tuple[int, int]] = []
    sigmas = [float(s) for s in sigmas_for(DiscreteSchedule.from_betas(), "normal", 5)]
    SAMPLERS[name](ideal_denoiser, torch.zeros(3), sigmas, 0, lambda s, n: seen.append((s, n)))
    assert seen == [(i, 5) for i in range(1, 6)]
