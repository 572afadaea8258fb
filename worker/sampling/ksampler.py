"""ComfyUI's KSampler procedure: seeded CPU noise, sigma schedule, classifier-free guidance, sampler."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from worker.models.sd import Cond, Denoiser
from worker.sampling.samplers import SAMPLERS
from worker.sampling.schedule import sigmas_for

SAMPLER_NAMES = tuple(SAMPLERS)


def initial_noise(shape: torch.Size | tuple[int, ...], seed: int) -> torch.Tensor:
    """ComfyUI draws the starting noise for the whole batch on the CPU from the seed, so a seed gives
    the same image on any GPU."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, dtype=torch.float32, generator=generator, device="cpu")


def _contexts(conds: list[Cond], batch: int, device: torch.device) -> list[tuple[torch.Tensor, float]]:
    return [(c.embeds.to(device).expand(batch, -1, -1), c.strength) for c in conds]


def _repeat_to(context: torch.Tensor, length: int) -> torch.Tensor:
    # Repeating the whole token sequence leaves cross-attention's result unchanged (each key appears
    # k times, softmax renormalizes), which lets prompts of different lengths share one forward pass.
    return context.repeat(1, length // context.shape[1], 1)


def guided_denoiser(
    model: Denoiser, positive: list[Cond], negative: list[Cond], cfg: float, batch: int
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """`f(x, sigma) -> denoised` with classifier-free guidance: uncond + cfg * (cond - uncond).

    Every (entry, latent batch) pair runs in one UNet call; several entries of one side are averaged
    by strength. cfg == 1 skips the negative side entirely, as ComfyUI does."""
    pos = _contexts(positive, batch, model.device)
    neg = [] if math.isclose(cfg, 1.0) else _contexts(negative, batch, model.device)
    contexts = pos + neg
    length = math.lcm(*(c.shape[1] for c, _ in contexts))
    context = torch.cat([_repeat_to(c, length) for c, _ in contexts])
    entries = positive + ([] if not neg else negative)
    # SDXL also conditions on the pooled text embedding: one row per context row.
    pooled = None
    if all(c.pooled is not None for c in entries):
        pooled = torch.cat([c.pooled.to(model.device).expand(batch, -1) for c in entries])
    copies = len(contexts)

    def side(parts: list[torch.Tensor], entries: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
        if len(parts) == 1:
            return parts[0]
        total = sum(strength for _, strength in entries)
        return sum(p * (strength / total) for p, (_, strength) in zip(parts, entries, strict=True))

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        out = model(x.repeat(copies, 1, 1, 1), sigma, context, pooled)
        parts = list(out.split(batch))
        cond = side(parts[: len(pos)], pos)
        if not neg:
            return cond
        uncond = side(parts[len(pos):], neg)
        return uncond + (cond - uncond) * cfg

    return denoise


def ksample(
    model: Denoiser,
    latent: torch.Tensor,
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list[Cond],
    negative: list[Cond],
    denoise: float = 1.0,
    on_step: Callable[[int, int], None] = lambda step, steps: None,
) -> torch.Tensor:
    """Sample from `latent` (VAE space, [B, C, H, W]); returns latents in VAE space on the CPU."""
    sigmas = sigmas_for(model.schedule, scheduler, steps, denoise)
    if len(sigmas) < 2:
        return latent.clone()
    sigma_list = [float(s) for s in sigmas]
    noise = initial_noise(latent.shape, seed).to(model.device)
    start = latent.to(model.device, torch.float32) * model.latent_scale
    # From pure noise (sigma at the schedule's top) ComfyUI scales noise to unit variance of x_T.
    full = sigma_list[0] >= model.schedule.sigma_max or math.isclose(
        sigma_list[0], model.schedule.sigma_max, rel_tol=1e-5
    )
    x = start + noise * ((1.0 + sigma_list[0] ** 2) ** 0.5 if full else sigma_list[0])
    denoiser = guided_denoiser(model, positive, negative, cfg, latent.shape[0])
    with torch.inference_mode(), model.patched():  # LoRAs merged for this sampling only
        x = SAMPLERS[sampler_name](denoiser, x, sigma_list, seed, on_step)
    return (x / model.latent_scale).cpu()
