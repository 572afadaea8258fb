"""Samplers checked on a problem with a known answer: data drawn from N(0, s^2), whose ideal denoiser is
x * s^2 / (s^2 + sigma^2). The probability-flow ODE then has the closed form
x(sigma) = x_T * sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2), and the reverse SDE ends at N(0, s^2)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from worker.sampling.samplers import SAMPLERS, ancestral_step, euler, euler_ancestral
from worker.sampling.schedule import DiscreteSchedule, sigmas_for

pytestmark = pytest.mark.filterwarnings("ignore:Should have t")  # torchsde clamping sigma_max to its rounding

DATA_STD = 0.5
SD = DiscreteSchedule.from_betas()
DETERMINISTIC = ["euler", "ddim", "heun", "dpm_2", "lms", "dpmpp_2m", "uni_pc", "uni_pc_bh2"]
STOCHASTIC = sorted(set(SAMPLERS) - set(DETERMINISTIC))


def ideal_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x * DATA_STD**2 / (DATA_STD**2 + sigma**2)


def no_callback(step: int, steps: int) -> None:
    pass


def schedule(name: str, scheduler: str, steps: int, *, to_zero: bool = True) -> list[float]:
    """ComfyUI's sigmas for `name`; to_zero=False stops at the last non-zero sigma (leftover noise)."""
    sigmas = [float(s) for s in sigmas_for(SD, scheduler, steps, sampler=name)]
    return sigmas if to_zero else sigmas[:-1]


def exact(x_t: torch.Tensor, sigma_t: float, sigma: float) -> torch.Tensor:
    return x_t * math.sqrt(DATA_STD**2 + sigma**2) / math.sqrt(DATA_STD**2 + sigma_t**2)


def ode_error(name: str, steps: int, *, to_zero: bool = False, scheduler: str = "karras") -> tuple[float, int]:
    """Largest error relative to the exact ODE solution at the schedule's end, and the model calls used.
    float64, so that rounding does not hide the discretisation error of the accurate samplers."""
    sigmas = schedule(name, scheduler, steps, to_zero=to_zero)
    x_t = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_t = x_t * math.sqrt(DATA_STD**2 + sigmas[0] ** 2)
    calls: list[float] = []

    def counted(x: torch.Tensor, sigma: float) -> torch.Tensor:
        calls.append(sigma)
        return ideal_denoiser(x, sigma)

    out = SAMPLERS[name](counted, x_t, sigmas, 0, no_callback)
    end = sigmas[-1] if sigmas[-1] > 0 or not name.startswith("uni_pc") else 0.001  # UniPC stops at 0.001
    target = exact(x_t, sigmas[0], end)
    return float((out - target).abs().max() / target.abs().max()), len(calls)


def test_euler_follows_the_exact_ode_solution() -> None:
    sigmas = [float(s) for s in sigmas_for(DiscreteSchedule.from_betas(), "karras", 200)]
    x_t = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * math.sqrt(DATA_STD**2 + sigmas[0] ** 2)
    out = euler(ideal_denoiser, x_t, sigmas, seed=0, on_step=no_callback)
    exact = x_t * DATA_STD / math.sqrt(DATA_STD**2 + sigmas[0] ** 2)
    torch.testing.assert_close(out, exact, atol=5e-3, rtol=1e-2)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_reach_the_exact_solution_at_sigma_zero(name: str) -> None:
    # 30 karras steps to 0. The last step from sigma_min (0.029) to 0 is a plain denoise for every one of them
    # (as in ComfyUI), which alone is 0.17% off here; euler adds its first-order error on top.
    error, _ = ode_error(name, 30, to_zero=True)
    assert error < (0.06 if name in ("euler", "ddim") else 0.01), error


# Orders of convergence measured between 80 and 160 steps, ending at sigma_min (no final denoise step, so
# each method's own order shows): euler is first order; heun, dpm_2, dpmpp_2m second; UniPC at least second
# (its last step is a first-order predictor); lms (4th-order Adams) well above second.
ORDERS = {"euler": (0.8, 1.3), "ddim": (0.8, 1.3), "heun": (1.8, 2.5), "dpm_2": (1.8, 2.5), "dpmpp_2m": (1.8, 2.5),
          "uni_pc": (1.8, 4.5), "uni_pc_bh2": (1.8, 4.5), "lms": (3.0, 5.0)}


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_converge_at_their_order(name: str) -> None:
    coarse, _ = ode_error(name, 80)
    fine, _ = ode_error(name, 160)
    order = math.log2(coarse / fine)
    low, high = ORDERS[name]
    assert low < order < high, (coarse, fine, order)


def test_higher_order_samplers_beat_euler_at_equal_cost() -> None:
    euler_20, euler_calls_20 = ode_error("euler", 20)
    euler_40, euler_calls_40 = ode_error("euler", 40)
    # Two model calls per step: compare with euler at twice the steps.
    for name in ("heun", "dpm_2"):
        error, calls = ode_error(name, 20)
        assert calls <= euler_calls_40 and error < euler_40 / 2, (name, error, euler_40)
    # One model call per step: compare at the same steps.
    errors = {}
    for name in ("lms", "dpmpp_2m", "uni_pc", "uni_pc_bh2"):
        errors[name], calls = ode_error(name, 20)
        assert calls <= euler_calls_20 and errors[name] < euler_20 / 4, (name, errors[name], euler_20)
    # UniPC's corrector buys an order of magnitude over DPM-Solver++(2M) here (the UniPC paper's claim).
    assert errors["uni_pc"] < errors["dpmpp_2m"] / 10


def test_ddim_is_comfyuis_euler() -> None:
    sigmas = schedule("ddim", "ddim_uniform", 10)
    x_t = torch.randn(64, generator=torch.Generator().manual_seed(2)) * sigmas[0]
    assert torch.equal(
        SAMPLERS["ddim"](ideal_denoiser, x_t, sigmas, 0, no_callback),
        SAMPLERS["euler"](ideal_denoiser, x_t, sigmas, 0, no_callback),
    )


def test_euler_ancestral_reaches_the_data_distribution() -> None:
    # A first-order SDE solver: its bias shrinks with the step count (60 steps: std 0.47), so use many.
    sigmas = [float(s) for s in sigmas_for(DiscreteSchedule.from_betas(), "karras", 1000)]
    x_t = torch.randn(20000, generator=torch.Generator().manual_seed(1)) * math.sqrt(DATA_STD**2 + sigmas[0] ** 2)
    out = euler_ancestral(ideal_denoiser, x_t, sigmas, seed=3, on_step=no_callback)
    assert float(out.std()) == pytest.approx(DATA_STD, rel=0.02)
    assert abs(float(out.mean())) < 0.02


# (sampler, steps, relative tolerance on the std): the ancestral samplers are biased at low step counts;
# the DPM-Solver++ SDE samplers are accurate within 1% from 100 steps on.
REACHES_DATA = [
    ("dpm_2_ancestral", 200, 0.02),
    ("dpmpp_2s_ancestral", 200, 0.02),
    ("dpmpp_sde", 100, 0.01),
    ("dpmpp_sde_gpu", 100, 0.01),
    ("dpmpp_2m_sde", 100, 0.01),
    ("dpmpp_2m_sde_gpu", 100, 0.01),
    ("dpmpp_3m_sde", 100, 0.01),
    ("dpmpp_3m_sde_gpu", 100, 0.01),
]


@pytest.mark.parametrize(("name", "steps", "rel"), REACHES_DATA)
def test_stochastic_samplers_reach_the_data_distribution(name: str, steps: int, rel: float) -> None:
    sigmas = schedule(name, "karras", steps)
    x_t = torch.randn(20000, generator=torch.Generator().manual_seed(1)) * math.sqrt(DATA_STD**2 + sigmas[0] ** 2)
    out = SAMPLERS[name](ideal_denoiser, x_t, sigmas, 3, no_callback)
    assert float(out.std()) == pytest.approx(DATA_STD, rel=rel)
    assert abs(float(out.mean())) < 0.02
    # Sampling, not following the ODE: the result is nearly independent of the starting point.
    assert abs(float(torch.corrcoef(torch.stack([out, x_t]))[0, 1])) < 0.2


def test_lcm_denoises_then_renoises_with_fresh_noise() -> None:
    # With a mean-predicting denoiser (not a consistency model) LCM does not reach the data distribution; its
    # variance follows v' = v * (s^2 / (s^2 + sigma^2))^2 + sigma_next^2 exactly when the noise is fresh.
    sigmas = schedule("lcm", "karras", 8)
    x_t = torch.randn(50000, generator=torch.Generator().manual_seed(1)) * math.sqrt(DATA_STD**2 + sigmas[0] ** 2)
    out = SAMPLERS["lcm"](ideal_denoiser, x_t, sigmas, 3, no_callback)
    variance = DATA_STD**2 + sigmas[0] ** 2
    for sigma, sigma_next in itertools.pairwise(sigmas):
        variance = variance * (DATA_STD**2 / (DATA_STD**2 + sigma**2)) ** 2 + sigma_next**2
    assert float(out.std()) == pytest.approx(math.sqrt(variance), rel=0.01)


def test_ancestral_noise_is_seeded() -> None:
    sigmas = [float(s) for s in sigmas_for(DiscreteSchedule.from_betas(), "normal", 8)]
    x_t = torch.randn(64, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    a = euler_ancestral(ideal_denoiser, x_t, sigmas, seed=7, on_step=no_callback)
    b = euler_ancestral(ideal_denoiser, x_t, sigmas, seed=7, on_step=no_callback)
    c = euler_ancestral(ideal_denoiser, x_t, sigmas, seed=8, on_step=no_callback)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_same_seed_same_result_other_seed_other_result(name: str) -> None:
    sigmas = schedule(name, "karras", 6)
    x_t = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    a = SAMPLERS[name](ideal_denoiser, x_t, sigmas, 7, no_callback)
    b = SAMPLERS[name](ideal_denoiser, x_t, sigmas, 7, no_callback)
    c = SAMPLERS[name](ideal_denoiser, x_t, sigmas, 8, no_callback)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_ignore_the_seed(name: str) -> None:
    sigmas = schedule(name, "karras", 6)
    x_t = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    assert torch.equal(
        SAMPLERS[name](ideal_denoiser, x_t, sigmas, 7, no_callback),
        SAMPLERS[name](ideal_denoiser, x_t, sigmas, 8, no_callback),
    )


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


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_report_every_step_of_a_window_without_zero(name: str) -> None:
    # KSamplerAdvanced with leftover noise: the schedule ends above 0.
    seen: list[tuple[int, int]] = []
    sigmas = [float(s) for s in sigmas_for(SD, "karras", 8)][:4]
    SAMPLERS[name](ideal_denoiser, torch.ones(3), sigmas, 0, lambda s, n: seen.append((s, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_model_calls_per_step_as_in_comfyui() -> None:
    names = ("euler", "lms", "dpmpp_2m", "uni_pc", "heun", "dpm_2")
    calls = {name: ode_error(name, 10, to_zero=True)[1] for name in names}
    assert calls["euler"] == calls["lms"] == calls["dpmpp_2m"] == calls["uni_pc"] == 10
    assert calls["heun"] == calls["dpm_2"] == 19  # a second call per step, except on the step to 0
