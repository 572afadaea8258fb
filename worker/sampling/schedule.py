"""Noise levels (sigmas) of discrete-time diffusion models and ComfyUI's schedulers over them.

Pure tensor math on the CPU in float32, as ComfyUI computes it, so a scheduler name and step count give
ComfyUI's exact sigmas. Written here because diffusers' schedulers pick timesteps differently
(e.g. `timestep_spacing`), which would change images for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from worker.sampling.samplers import DISCARD_PENULTIMATE_SIGMA


@dataclass(frozen=True)
class DiscreteSchedule:
    """The training noise schedule of an eps/v-prediction model (SD1.x, SD2.x, SDXL)."""

    sigmas: torch.Tensor  # float32, one per training timestep, increasing
    log_sigmas: torch.Tensor
    prediction: str = "epsilon"  # or "v_prediction"

    @classmethod
    def from_betas(
        cls,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        timesteps: int = 1000,
        prediction: str = "epsilon",
    ) -> DiscreteSchedule:
        if beta_schedule == "scaled_linear":  # what SD calls "linear": linear in sqrt(beta)
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        else:
            raise ValueError(f"unsupported beta_schedule {beta_schedule!r}")
        if prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {prediction!r}")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return cls(sigmas=sigmas.float(), log_sigmas=sigmas.log().float(), prediction=prediction)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep, interpolating in log space."""
        t = torch.clamp(timestep.float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def timestep(self, sigma: float) -> float:
        """The training timestep whose sigma is nearest in log space (what the UNet is conditioned on)."""
        dists = (math.log(sigma) - self.log_sigmas).abs()
        return float(dists.argmin())


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def normal(s: DiscreteSchedule, steps: int, sgm: bool = False) -> torch.Tensor:
    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(torch.tensor(end))), 0, abs_tol=1e-5):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigmas = torch.stack([s.sigma(t) for t in timesteps])
    return _append_zero(sigmas) if append_zero else sigmas


def sgm_uniform(s: DiscreteSchedule, steps: int) -> torch.Tensor:
    return normal(s, steps, sgm=True)


def karras(s: DiscreteSchedule, steps: int, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, steps)
    min_inv, max_inv = s.sigma_min ** (1 / rho), s.sigma_max ** (1 / rho)
    return _append_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(s: DiscreteSchedule, steps: int) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(s.sigma_max), math.log(s.sigma_min), steps).exp())


def simple(s: DiscreteSchedule, steps: int) -> torch.Tensor:
    stride = len(s.sigmas) / steps
    picked = [float(s.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def ddim_uniform(s: DiscreteSchedule, steps: int) -> torch.Tensor:
    index = 1
    if math.isclose(float(s.sigmas[index]), 0, abs_tol=1e-5):
        steps += 1
        picked: list[float] = []
    else:
        picked = [0.0]
    stride = max(len(s.sigmas) // steps, 1)
    while index < len(s.sigmas):
        picked.append(float(s.sigmas[index]))
        index += stride
    return torch.tensor(picked[::-1], dtype=torch.float32)


def beta(s: DiscreteSchedule, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Training sigmas at the Beta(alpha, beta) quantiles 1, 1 - 1/steps, ..., 1/steps of the timestep range
    (arXiv:2407.12173): dense at both ends. Timesteps are rounded half to even (numpy's rint) and a timestep
    equal to the one before it is dropped, so many steps may give fewer sigmas, as in ComfyUI."""
    from scipy import stats  # scipy's beta quantile function, which ComfyUI uses; imported on first use

    last = len(s.sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    timesteps = np.rint(stats.beta.ppf(quantiles, alpha, beta) * last)
    picked: list[float] = []
    previous = None
    for t in timesteps:
        if t != previous:
            picked.append(float(s.sigmas[int(t)]))
        previous = t
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


SCHEDULERS: dict[str, Callable[[DiscreteSchedule, int], torch.Tensor]] = {
    "normal": normal,
    "karras": karras,
    "exponential": exponential,
    "sgm_uniform": sgm_uniform,
    "simple": simple,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
}


def sigmas_for(
    s: DiscreteSchedule, scheduler: str, steps: int, denoise: float = 1.0, sampler: str | None = None
) -> torch.Tensor:
    """ComfyUI's KSampler sigmas: with denoise < 1 it schedules steps/denoise steps and keeps the last
    steps+1 sigmas, so img2img starts part-way down the same schedule. For the samplers in
    DISCARD_PENULTIMATE_SIGMA (dpm_2, dpm_2_ancestral, uni_pc, uni_pc_bh2) every schedule is made one step
    longer and loses its second-to-last sigma, as ComfyUI does for them."""
    make = SCHEDULERS[scheduler]

    def calculate(count: int) -> torch.Tensor:
        if sampler in DISCARD_PENULTIMATE_SIGMA:
            longer = make(s, count + 1)
            return torch.cat([longer[:-2], longer[-1:]])
        return make(s, count)

    if denoise > 0.9999:
        return calculate(steps)
    if denoise <= 0.0:
        return torch.zeros(0)
    total = int(steps / denoise)
    return calculate(total)[-(steps + 1):]


def step_window(
    sigmas: torch.Tensor, start_step: int | None, last_step: int | None, force_full_denoise: bool
) -> torch.Tensor | None:
    """The part of a schedule KSamplerAdvanced samples (ComfyUI's KSampler.sample): up to sigma index
    `last_step` (then ending at 0 when `force_full_denoise`, i.e. return_with_leftover_noise disabled) and from
    index `start_step`. None when start_step leaves no step to take: ComfyUI then returns the latent as it
    came."""
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0.0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return None
        sigmas = sigmas[start_step:]
    return sigmas
