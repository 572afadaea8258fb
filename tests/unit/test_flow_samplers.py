"""The flow-model (Flux) versions of the stochastic samplers, checked on a problem with a known answer: data
x0 ~ N(MU, S^2) per element, x_sigma = (1 - sigma) x0 + sigma noise, and the exact denoiser E[x0 | x_sigma].
A sampler that adds noise the flow way ends with the data's mean; the sigma-space formulas (which ComfyUI does
not use for these models) end far from it, which is why the flow versions exist."""

from __future__ import annotations

import pytest
import torch

from worker.models.flux import FlowSchedule
from worker.sampling.flow_samplers import FLOW_SAMPLERS
from worker.sampling.samplers import SAMPLERS
from worker.sampling.schedule import sigmas_for

# torchsde warns when a query time is rounded just past the tree's end; the worker silences it (noise.py).
pytestmark = pytest.mark.filterwarnings("ignore:Should have t")

MU, S = 0.5, 0.3
SCHEDULE = FlowSchedule.flux()
SIGMAS = [float(s) for s in sigmas_for(SCHEDULE, "simple", 30)]


def exact_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    gain = (1 - sigma) * S**2 / ((1 - sigma) ** 2 * S**2 + sigma**2)
    return MU + gain * (x - (1 - sigma) * MU)


def run(sampler, seed: int = 7) -> torch.Tensor:
    x = torch.randn(1, 4, 100, 100, generator=torch.Generator().manual_seed(0)) * SIGMAS[0]
    extra = {"first_sigma": SCHEDULE.percent_to_sigma(1e-4)} if getattr(sampler, "takes_first_sigma", False) else {}
    return sampler(exact_denoiser, x, SIGMAS, seed, lambda i, n: None, **extra)


@pytest.mark.parametrize("name", sorted(FLOW_SAMPLERS))
def test_flow_sampler_lands_on_the_data_distribution(name: str) -> None:
    assert SIGMAS[0] == 1.0  # from pure noise, where half log-SNR is infinite
    out = run(FLOW_SAMPLERS[name])
    assert torch.isfinite(out).all()
    assert float(out.mean()) == pytest.approx(MU, abs=0.01)
    assert 0.15 < float(out.std()) < 0.36  # the coarse lcm is lowest; 30 steps of the others are near S
    sigma_space = run(SAMPLERS[name])
    assert abs(float(sigma_space.mean()) - MU) > 0.1  # what the flow version corrects


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m_sde", "lcm"])
def test_flow_samplers_follow_the_seed(name: str) -> None:
    assert torch.equal(run(FLOW_SAMPLERS[name], seed=3), run(FLOW_SAMPLERS[name], seed=3))
    assert not torch.equal(run(FLOW_SAMPLERS[name], seed=3), run(FLOW_SAMPLERS[name], seed=4))


def test_first_sigma_moves_just_below_one_as_comfyui_offsets_it() -> None:
    assert SCHEDULE.percent_to_sigma(1e-4) == pytest.approx(0.99996833, abs=1e-8)  # shift 1.15
    assert FlowSchedule.discrete_flow().percent_to_sigma(1e-4) == pytest.approx(0.9999)
    assert SCHEDULE.percent_to_sigma(0.0) == 1.0 and SCHEDULE.percent_to_sigma(1.0) == 0.0
    seen: list[float] = []

    def spy(x: torch.Tensor, sigma: float) -> torch.Tensor:
        seen.append(sigma)
        return exact_denoiser(x, sigma)

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    FLOW_SAMPLERS["dpmpp_2m_sde"](spy, x, SIGMAS[:4], 1, lambda i, n: None, first_sigma=0.99996833)
    assert seen[0] == pytest.approx(0.99996833, abs=1e-7) and seen[1] == SIGMAS[1]
