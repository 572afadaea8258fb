"""Samplers against reference outputs and ComfyUI's noise semantics.

REFERENCE holds outputs of independent implementations on one small problem, computed once and written
down here: the k-diffusion package (crowsonkb/k-diffusion 0.1.1.post1, `k_diffusion.sampling.sample_*`, of
which ComfyUI's comfy/k_diffusion/sampling.py is a fork) run on the same denoiser, sigmas and starting
latent, given ComfyUI's noise sources: for the ancestral samplers a CPU generator seeded with seed + 1 drawing
`torch.randn(x.shape)` per step (ComfyUI's default_noise_sampler), for the SDE samplers k-diffusion's
`BrownianTreeNoiseSampler(x, smallest non-zero sigma, largest sigma, seed=seed)` (the same torchsde tree
ComfyUI builds on the CPU). k-diffusion's dpmpp_sde asks the tree for exp(-(-log sigma)) where ComfyUI asks
for sigma itself; the tree rounds query times to 6 decimals, so that float32 round trip can move a query
and change the noise (by 1e-4 here): its queries were mapped back to the schedule's sigmas.

lms and uni_pc stop at a non-zero sigma: k-diffusion's lms has no final "denoise to 0" step (ComfyUI added
one), and UniPC is not in k-diffusion; the uni_pc values come from a float32 transcription of ComfyUI's
UniPC in its own variance-preserving form (comfy/extra_samplers/uni_pc.py), which the sigma-space form here
must agree with.
"""

from __future__ import annotations

import pytest
import torch
import torchsde

from worker.sampling.noise import BrownianNoise, StepNoise
from worker.sampling.samplers import SAMPLERS
from worker.sampling.schedule import DiscreteSchedule, sigmas_for

pytestmark = pytest.mark.filterwarnings("ignore:Should have t")

SD = DiscreteSchedule.from_betas()
SEED = 42
ENDS_ABOVE_ZERO = ("lms", "uni_pc", "uni_pc_bh2")


def denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Not linear, so that every term of every update rule shows in the result."""
    return x * 0.25 / (0.25 + sigma**2) + 0.1 * torch.sin(3 * x) / (1 + sigma)


REFERENCE = {
    "heun": [1.061213, -0.628450, -1.140949, 0.849201, -0.998309, -1.043809, 0.742427, 0.947397],
    "dpm_2": [0.870492, -0.307870, -1.067551, 0.507894, -0.758063, -0.841371, 0.399130, 0.645583],
    "lms": [0.672324, -0.199241, -0.880294, 0.332654, -0.550608, -0.636536, 0.257557, 0.455986],
    "dpmpp_2m": [0.913733, -0.343023, -1.082729, 0.551214, -0.792510, -0.878405, 0.432778, 0.702158],
    "euler_ancestral": [-0.248219, 0.164852, 0.750582, -0.046681, -0.136816, -0.245247, 0.076939, 0.524079],
    "dpm_2_ancestral": [-0.711760, 0.501477, 1.118652, 0.016128, -0.132952, -0.718020, 0.457317, 1.057383],
    "dpmpp_2s_ancestral": [-0.623646, 0.429058, 0.955284, -0.189636, -0.013142, -0.456704, 0.401524, 0.745049],
    "dpmpp_sde": [0.991555, 0.841185, -0.119054, -0.399906, -0.114597, -0.527935, -0.556324, 0.647945],
    "dpmpp_2m_sde": [0.987864, 0.827378, 0.311346, -0.357963, -0.179769, -0.706045, -0.822026, 0.562347],
    "dpmpp_3m_sde": [1.454549, 1.159160, 0.779313, -0.804226, -0.425409, -1.053209, -1.400752, 0.949520],
    "uni_pc": [0.704867, -0.201742, -0.950275, 0.336571, -0.512836, -0.645171, 0.260444, 0.423618],
    "uni_pc_bh2": [0.695248, -0.193091, -0.930228, 0.324125, -0.505023, -0.637288, 0.248137, 0.418262],
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_sampler_matches_the_reference_implementation(name: str) -> None:
    # karras, 6 steps, SD1.x sigmas (with the extra step dpm_2/uni_pc get), latent [1, 2, 2, 2], seed 42.
    sigmas = [float(s) for s in sigmas_for(SD, "karras", 6, sampler=name)]
    if name in ENDS_ABOVE_ZERO:
        sigmas = sigmas[:-1]
    x = torch.randn(1, 2, 2, 2, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    out = SAMPLERS[name](denoiser, x, sigmas, SEED, lambda step, steps: None)
    torch.testing.assert_close(out.flatten(), torch.tensor(REFERENCE[name]), atol=1e-5, rtol=0)


def test_ancestral_noise_on_the_cpu_is_a_generator_seeded_with_seed_plus_one() -> None:
    # ComfyUI's default_noise_sampler: the initial noise used seed on the CPU, so the CPU noise uses seed + 1.
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    out = SAMPLERS["euler_ancestral"](lambda x, sigma: torch.zeros_like(x), x, [2.0, 1.0], SEED, lambda s, n: None)
    sigma_down, sigma_up = 0.5, 0.75**0.5  # ancestral split of 2 -> 1
    fresh = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED + 1))
    expected = x * (sigma_down / 2.0) + fresh * sigma_up
    torch.testing.assert_close(out, expected)


def test_step_noise_draws_the_whole_batch_from_one_generator() -> None:
    noise = StepNoise(torch.zeros(3, 4, 2, 2), seed=5)
    generator = torch.Generator().manual_seed(6)
    assert torch.equal(noise(), torch.randn(3, 4, 2, 2, generator=generator))
    assert torch.equal(noise(), torch.randn(3, 4, 2, 2, generator=generator))  # then the next draw


def test_step_noise_at_the_top_of_the_seed_range_wraps_instead_of_failing() -> None:
    top = 0xFFFF_FFFF_FFFF_FFFF
    wrapped = torch.randn(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(StepNoise(torch.zeros(4), seed=top)(), wrapped)


def test_brownian_noise_is_the_seeded_torchsde_tree_increment() -> None:
    # ComfyUI's BrownianTreeNoiseSampler: one torchsde.BrownianTree over [min non-zero sigma, max sigma] with
    # the seed as entropy; noise(s, t) = (W(t) - W(s)) / sqrt(|t - s|), here with s > t.
    x = torch.zeros(2, 3, 4, 4)
    sigmas = [10.0, 4.0, 1.0, 0.25, 0.0]
    noise = BrownianNoise(x, sigmas, seed=SEED)
    tree = torchsde.BrownianTree(0.25, torch.zeros(2, 3, 4, 4), 10.0, entropy=SEED)
    torch.testing.assert_close(noise(4.0, 1.0), -tree(1.0, 4.0) / 3.0**0.5)
    torch.testing.assert_close(noise(10.0, 4.0), -tree(4.0, 10.0) / 6.0**0.5)


def test_brownian_noise_depends_on_the_interval_not_on_the_query_order() -> None:
    x = torch.zeros(1000)
    sigmas = [8.0, 2.0, 0.5, 0.0]
    forward = BrownianNoise(x, sigmas, seed=3)
    a, b = forward(8.0, 2.0), forward(2.0, 0.5)
    backward = BrownianNoise(x, sigmas, seed=3)
    b_again, a_again = backward(2.0, 0.5), backward(8.0, 2.0)
    assert torch.equal(a, a_again) and torch.equal(b, b_again)
    # Standard normal per interval, disjoint intervals independent; another seed, another path.
    assert float(a.std()) == pytest.approx(1.0, abs=0.1)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.1
    assert not torch.equal(a, BrownianNoise(x, sigmas, seed=4)(8.0, 2.0))
    # Overlapping intervals are correlated as Brownian increments are: corr = sqrt(6 / 7.5) for [2, 8] in [0.5, 8].
    whole = forward(8.0, 0.5)
    assert float(torch.corrcoef(torch.stack([a, whole]))[0, 1]) == pytest.approx((6 / 7.5) ** 0.5, abs=0.05)


def test_sde_samplers_use_the_same_noise_on_the_cpu_whichever_variant() -> None:
    # The _gpu variants keep the tree on the latent's device; on the CPU that is the same tree.
    sigmas = [float(s) for s in sigmas_for(SD, "karras", 5)]
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    for name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        plain = SAMPLERS[name](denoiser, x, sigmas, SEED, lambda s, n: None)
        assert torch.equal(plain, SAMPLERS[f"{name}_gpu"](denoiser, x, sigmas, SEED, lambda s, n: None))
