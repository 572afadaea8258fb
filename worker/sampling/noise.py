"""The noise the stochastic samplers add while they sample, seeded from the KSampler seed as ComfyUI seeds it.

Two sources, as in ComfyUI:

- `StepNoise` (ancestral samplers, lcm): fresh standard normal noise of the latent's shape per call, from a
  generator on the latent's device. On the CPU ComfyUI seeds it with seed + 1, so that its draws are not the
  initial noise again (that one comes from a CPU generator seeded with the seed itself); on a GPU it seeds
  the device's generator with the seed.
- `BrownianNoise` (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde): increments of one Brownian motion over sigma,
  sampled by torchsde's `BrownianTree` (the library ComfyUI and k-diffusion use) with the seed as entropy.
  The path does not depend on the order or position of the queries, so the noise a step sees is fixed by
  the seed and the sigma interval alone. The tree lives on the CPU (the `_gpu` sampler variants put it on
  the latent's device instead, as ComfyUI's do), so the plain variants give the same noise on any device.

Both are called as `noise(sigma, sigma_next)` with Python floats; neither syncs the device.
"""

from __future__ import annotations

import warnings

import torch
import torchsde

_SEED_SPACE = 1 << 64  # torch.Generator.manual_seed takes seeds below 2**64

# The tree rounds its ends to its tolerance (6 decimals), so a query at the largest sigma itself lands a hair
# past the rounded end; torchsde clamps it (as it does in ComfyUI) and warns on every such query.
warnings.filterwarnings("ignore", message=r"Should have t[ab]", category=UserWarning, module=r"torchsde\.")


def _f32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


class StepNoise:
    """ComfyUI's `default_noise_sampler` with the KSampler seed."""

    def __init__(self, x: torch.Tensor, seed: int):
        if x.device.type == "cpu":
            # ComfyUI adds 1 on the CPU. At the very top of the seed range it would overflow the generator's
            # seed (ComfyUI fails there); wrap around instead.
            seed = (seed + 1) % _SEED_SPACE
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        self.generator = torch.Generator(device=x.device)
        self.generator.manual_seed(seed)

    def __call__(self, sigma: float = 0.0, sigma_next: float = 0.0) -> torch.Tensor:
        return torch.randn(self.shape, dtype=self.dtype, device=self.device, generator=self.generator)


class BrownianNoise:
    """ComfyUI's `BrownianTreeNoiseSampler` over [smallest non-zero sigma, largest sigma], seeded with the
    KSampler seed: `noise(s, t)` is the Brownian increment between s and t divided by sqrt(|t - s|), so a
    standard normal sample for every interval, correlated between overlapping intervals as a Brownian
    motion's increments are."""

    def __init__(self, x: torch.Tensor, sigmas: list[float], seed: int, on_cpu: bool = True):
        low = min((s for s in sigmas if s > 0), default=0.0)
        high = max(sigmas, default=0.0)
        tree_device = torch.device("cpu") if on_cpu else x.device
        start = torch.zeros(x.shape, dtype=x.dtype, device=tree_device)
        self.tree = torchsde.BrownianTree(low, start, high, entropy=seed)
        self.device, self.dtype = x.device, x.dtype

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        # The sigmas are float32 values (they come from float32 schedules); the tree rounds query times to
        # its tolerance (1e-6) in any case.
        low, high, sign = (sigma_next, sigma, -1) if sigma_next < sigma else (sigma, sigma_next, 1)
        w = self.tree(low, high)
        scale = float((_f32(sigma_next) - _f32(sigma)).abs().sqrt())  # float32, as ComfyUI computes it
        return (w * sign / scale).to(device=self.device, dtype=self.dtype)
