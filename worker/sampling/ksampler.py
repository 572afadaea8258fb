"""ComfyUI's KSampler procedure: seeded CPU noise, sigma schedule, classifier-free guidance, sampler."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from worker.models.flux import FluxDenoiser
from worker.models.sd import Cond, Denoiser
from worker.sampling.flow_samplers import FLOW_SAMPLERS
from worker.sampling.samplers import RANDOM_INPAINT_NOISE, SAMPLERS
from worker.sampling.schedule import sigmas_for, step_window

SAMPLER_NAMES = tuple(SAMPLERS)
def initial_noise(shape: torch.Size | tuple[int, ...], seed: int) -> torch.Tensor:
    """ComfyUI draws the starting noise for the whole batch on the CPU from the seed, so a seed gives
    the same image on any GPU."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, dtype=torch.float32, generator=generator, device="cpu")


FEATHER = 8  # latent pixels over which an area's weight ramps up along edges inside the image (ComfyUI's)
TINY_COUNT = 1e-37  # ComfyUI's starting weight sum: a side whose weights are all 0 predicts 0, not NaN


def _repeat_to(context: torch.Tensor, length: int) -> torch.Tensor:
    # Repeating the whole token sequence leaves cross-attention's result unchanged (each key appears
    # k times, softmax renormalizes), which lets prompts of different lengths share one forward pass.
    return context.repeat(1, length // context.shape[1], 1)


def _inside(inner: tuple[int, ...], outer: tuple[int, ...]) -> bool:
    h, w, y, x = inner
    oh, ow, oy, ox = outer
    return y >= oy and x >= ox and y + h <= oy + oh and x + w <= ox + ow


def _with_matching_areas(conds: list[Cond], others: list[Cond]) -> list[Cond]:
    """`conds` plus, for every area entry of the other side that `conds` has no entry for, a copy of that
    entry (area, strength) with the embeddings of the smallest entry of `conds` that covers it. ComfyUI
    does this so that guidance inside an area compares like with like."""
    out = list(conds)
    for other in others:
        if other.area is None:
            continue
        smallest: Cond | None = None
        for candidate in out:
            if candidate.area is None:
                smallest = smallest or candidate
            elif _inside(other.area, candidate.area) and (
                smallest is None
                or smallest.area is None
                or math.prod(smallest.area[:2]) > math.prod(candidate.area[:2])
            ):
                smallest = candidate
        if smallest is not None and smallest.area != other.area:
            out.append(replace(other, embeds=smallest.embeds, pooled=smallest.pooled))
    return out


def _region(cond: Cond, height: int, width: int) -> tuple[int, int, int, int] | None:
    """(h, w, y, x) of the latent that `cond` applies to, cut at the latent's edges; None if outside it."""
    if cond.area is None:
        return height, width, 0, 0
    h, w, y, x = cond.area
    h, w = min(h, height - y), min(w, width - x)
    return (h, w, y, x) if h > 0 and w > 0 else None


def _edge_ramp(length: int, start: bool, end: bool) -> torch.Tensor:
    """1 along an axis, ramping (t + 1) / FEATHER over the first/last FEATHER pixels on the sides asked."""
    weights = torch.ones(length)
    n = min(FEATHER, length)
    ramp = torch.arange(1, n + 1, dtype=torch.float32) / FEATHER
    if start:
        weights[:n] *= ramp
    if end:
        weights[length - n:] *= ramp.flip(0)
    return weights


def _weight(cond: Cond, region: tuple[int, int, int, int], height: int, width: int) -> float | torch.Tensor:
    """How much an entry's prediction counts at each latent pixel of its region: its strength, feathered
    along area edges that lie inside the image (ComfyUI's get_area_and_mult)."""
    if cond.area is None:
        return cond.strength
    h, w, y, x = cond.area
    rows = _edge_ramp(region[0], y != 0, y + h < height)
    cols = _edge_ramp(region[1], x != 0, x + w < width)
    return (cond.strength * rows[:, None] * cols[None, :]).reshape(1, 1, region[0], region[1])


@dataclass
class _Run:
    """Entries whose regions have one size, evaluated in one UNet call."""

    entries: list[tuple[int, tuple[int, int, int, int], float | torch.Tensor]]  # (side, region, weight)
    context: torch.Tensor
    pooled: torch.Tensor | None
    guidance: torch.Tensor | None = None  # Flux: one guidance value per row (FluxGuidance)


def guided_denoiser(
    model: Denoiser, positive: list[Cond], negative: list[Cond], cfg: float, batch: int
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """`f(x, sigma) -> denoised` with classifier-free guidance: uncond + cfg * (cond - uncond), each side
    computed as ComfyUI's calc_cond_batch does.

    Each side is the average of its entries' predictions weighted by strength; an entry with an area
    (ConditioningSetArea) is run on that part of the latent only and weighted there with feathered edges.
    Entries whose regions have the same size share one UNet call. cfg == 1 skips the negative side
    entirely, as ComfyUI does."""
    negative = _with_matching_areas(negative, positive)
    positive = _with_matching_areas(positive, negative)
    sides = [positive] if math.isclose(cfg, 1.0) else [positive, negative]
    planned: dict[tuple[int, int], list[_Run]] = {}

    def plan(height: int, width: int) -> list[_Run]:
        groups: dict[tuple[int, int], list[tuple[int, Cond, tuple[int, int, int, int]]]] = {}
        for side, conds in enumerate(sides):
            for cond in conds:
                region = _region(cond, height, width)
                if region is not None:
                    groups.setdefault(region[:2], []).append((side, cond, region))
        runs = []
        for members in groups.values():
            length = math.lcm(*(c.embeds.shape[1] for _, c, _ in members))
            context = torch.cat(
                [_repeat_to(c.embeds.to(model.device), length).expand(batch, -1, -1) for _, c, _ in members]
            )
            # SDXL also conditions on the pooled text embedding: one row per context row.
            pooled = None
            if all(c.pooled is not None for _, c, _ in members):
                pooled = torch.cat([c.pooled.to(model.device).expand(batch, -1) for _, c, _ in members])
            # Flux's guidance embedding: each entry's FluxGuidance value, else the model's default (3.5).
            guidance = None
            default_guidance = getattr(model, "default_guidance", None)
            if default_guidance is not None:
                values = [default_guidance if c.guidance is None else c.guidance for _, c, _ in members]
                guidance = torch.tensor(values, device=model.device).repeat_interleave(batch)
            entries = []
            for side, cond, region in members:
                weight = _weight(cond, region, height, width)
                entries.append((side, region, weight if isinstance(weight, float) else weight.to(model.device)))
            runs.append(_Run(entries, context, pooled, guidance))
        return runs

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        if size not in planned:
            planned[size] = plan(*size)
        totals = [torch.zeros_like(x) for _ in sides]
        counts = [torch.full_like(x, TINY_COUNT) for _ in sides]
        for run in planned[size]:
            crops = [x[:, :, y:y + h, x0:x0 + w] for _, (h, w, y, x0), _ in run.entries]
            extra = {} if run.guidance is None else {"guidance": run.guidance}
            out = model(torch.cat(crops), sigma, run.context, run.pooled, latent_size=size, **extra)
            for (side, (h, w, y, x0), weight), pred in zip(run.entries, out.split(batch), strict=True):
                totals[side][:, :, y:y + h, x0:x0 + w] += pred * weight
                counts[side][:, :, y:y + h, x0:x0 + w] += weight
        cond = totals[0] / counts[0]
        if len(sides) == 1:
            return cond
        uncond = totals[1] / counts[1]
        return uncond + (cond - uncond) * cfg

    return denoise


def prepare_noise_mask(mask: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """A LATENT's noise_mask ([B, 1, H, W] or [B, H, W], any size) resized bilinearly to the latent
    [B, C, h, w], repeated over channels and over the batch (or cut to it), as ComfyUI's prepare_mask."""
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    mask = F.interpolate(mask, size=tuple(shape[2:]), mode="bilinear").repeat(1, shape[1], 1, 1)
    if mask.shape[0] < shape[0]:
        mask = mask.repeat(math.ceil(shape[0] / mask.shape[0]), 1, 1, 1)
    return mask[: shape[0]]


def inpainting_denoiser(
    denoiser: Callable[[torch.Tensor, float], torch.Tensor], mask: torch.Tensor, latent: torch.Tensor,
    noise: torch.Tensor, noise_scaling: Callable[[float, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """ComfyUI's KSamplerX0Inpaint: where `mask` is 0 the model sees the original latent noised to the
    current sigma and its prediction is replaced by the original latent, so only the masked area changes.
    `noise_scaling(sigma, noise, latent)` is the model's (flow models mix instead of adding)."""
    keep = 1.0 - mask

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        noised = latent + noise * sigma if noise_scaling is None else noise_scaling(sigma, noise, latent)
        x = x * mask + noised * keep
        return denoiser(x, sigma) * mask + latent * keep

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
    noise_mask: torch.Tensor | None = None,
    on_step: Callable[[int, int], None] = lambda step, steps: None,
    add_noise: bool = True,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> torch.Tensor:
    """Sample from `latent` (VAE space, [B, C, H, W]); returns latents in VAE space on the CPU.
    `noise_mask` (a LATENT's, 1 = change) limits the change to the masked area (inpainting)."""
    sigmas = step_window(  # KSamplerAdvanced's start/end steps; KSampler leaves them None
        sigmas_for(model.schedule, scheduler, steps, denoise, sampler=sampler_name),
        start_step,
        last_step,
        force_full_denoise,
    )
    if sigmas is None or len(sigmas) < 2:
        return latent.clone()
    sigma_list = [float(s) for s in sigmas]
    # add_noise off (KSamplerAdvanced): ComfyUI samples with all-zero noise; the seed still seeds the sampler.
    noise = (initial_noise(latent.shape, seed) if add_noise else torch.zeros(latent.shape)).to(model.device)
    flow = isinstance(model, FluxDenoiser)
    if flow:  # rectified flow (ComfyUI's CONST): the latent format's shift and scale, noise mixed in
        start = model.process_in(latent.to(model.device, torch.float32))
        x = model.noise_scaling(sigma_list[0], noise, start)
    else:
        start = latent.to(model.device, torch.float32) * model.latent_scale
        # From pure noise (sigma at the schedule's top) ComfyUI scales noise to unit variance of x_T.
        full = sigma_list[0] >= model.schedule.sigma_max or math.isclose(
            sigma_list[0], model.schedule.sigma_max, rel_tol=1e-5
        )
        x = start + noise * ((1.0 + sigma_list[0] ** 2) ** 0.5 if full else sigma_list[0])
    denoiser = guided_denoiser(model, positive, negative, cfg, latent.shape[0])
    if noise_mask is not None:
        mask = prepare_noise_mask(noise_mask, x.shape).to(model.device)
        # ComfyUI's "ddim" re-noises the kept area with its own CPU noise from seed + 1; the others reuse
        # the initial noise.
        kept_noise = initial_noise(latent.shape, (seed + 1) % 2**64).to(model.device) \
            if sampler_name in RANDOM_INPAINT_NOISE else noise
        denoiser = inpainting_denoiser(denoiser, mask, start, kept_noise, model.noise_scaling if flow else None)
    sampler = FLOW_SAMPLERS.get(sampler_name, SAMPLERS[sampler_name]) if flow else SAMPLERS[sampler_name]
    if getattr(sampler, "takes_first_sigma", False):  # flow SDE samplers start just below sigma 1
        sampler = functools.partial(sampler, first_sigma=model.schedule.percent_to_sigma(1e-4))
    with torch.inference_mode(), model.patched():  # LoRAs merged for this sampling only
        x = sampler(denoiser, x, sigma_list, seed, on_step)
    if flow:
        return model.process_out(model.inverse_noise_scaling(sigma_list[-1], x)).cpu()
    return (x / model.latent_scale).cpu()
