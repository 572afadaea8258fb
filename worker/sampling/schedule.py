"""Noise levels (sigmas) of discrete-time diffusion models and ComfyUI's schedulers over them.

Pure tensor math on the CPU in float32, as ComfyUI computes it, so a scheduler name and step count give
ComfyUI's exact sigmas. Written here because diffusers' schedulers pick timesteps differently
(e.g. `timestep_spacing`), which would change images for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


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


SCHEDULERS: dict[str, Callable[[DiscreteSchedule, int], torch.Tensor]] = {
    "normal": normal,
    "karras": karras,
    "exponential": exponential,
    "sgm_uniform": sgm_uniform,
    "simple": simple,
    "ddim_uniform": ddim_uniform,
}


def sigmas_for(s: DiscreteSchedule, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """ComfyUI's KSampler sigmas: with denoise < 1 it schedules steps/denoise steps and keeps the last
    steps+1 sigmas, so img2img starts part-way down the same schedule."""
    make = SCHEDULERS[scheduler]
    if denoise > 0.9999:
        return make(s, steps)
    if denoise <= 0.0:
        return torch.zeros(0)
    total = int(steps / denoise)
    return make(s, total)[-(steps + 1):]
