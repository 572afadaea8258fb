"""The KSampler and KSamplerAdvanced nodes."""

from __future__ import annotations

from typing import Any

from worker.engine import ExecutionContext, Input, node
from worker.models.sd import Cond, Denoiser
from worker.sampling.ksampler import SAMPLER_NAMES, ksample
from worker.sampling.schedule import SCHEDULERS

MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF


@node(
    "KSampler",
    inputs={
        "model": Input("MODEL"),
        "seed": Input("INT", default=0, min=0, max=MAX_SEED),
        "steps": Input("INT", default=20, min=1, max="max_steps"),
        "cfg": Input("FLOAT", default=8.0, min=0.0, max=100.0),
        "sampler_name": Input("COMBO", choices=SAMPLER_NAMES),
        "scheduler": Input("COMBO", choices=tuple(SCHEDULERS)),
        "positive": Input("CONDITIONING"),
        "negative": Input("CONDITIONING"),
        "latent_image": Input("LATENT"),
        "denoise": Input("FLOAT", default=1.0, min=0.0, max=1.0),
    },
    outputs=("LATENT",),
)
def ksampler(
    ctx: ExecutionContext,
    model: Denoiser,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list[Cond],
    negative: list[Cond],
    latent_image: dict[str, Any],
    denoise: float,
) -> tuple[dict[str, Any]]:
    """Denoise a latent with a sampler and scheduler; same seed and settings give the same latent."""
    samples = ksample(
        model,
        latent_image["samples"],
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler=scheduler,
        positive=positive,
        negative=negative,
        denoise=denoise,
        noise_mask=latent_image.get("noise_mask"),
        on_step=ctx.step,
    )
    return ({**latent_image, "samples": samples},)


@node(
    "KSamplerAdvanced",
    inputs={
        "model": Input("MODEL"),
        "add_noise": Input("COMBO", choices=("enable", "disable")),
        "noise_seed": Input("INT", default=0, min=0, max=MAX_SEED),
        "steps": Input("INT", default=20, min=1, max="max_steps"),
        "cfg": Input("FLOAT", default=8.0, min=0.0, max=100.0),
        "sampler_name": Input("COMBO", choices=SAMPLER_NAMES),
        "scheduler": Input("COMBO", choices=tuple(SCHEDULERS)),
        "positive": Input("CONDITIONING"),
        "negative": Input("CONDITIONING"),
        "latent_image": Input("LATENT"),
        "start_at_step": Input("INT", default=0, min=0, max=10000),
        "end_at_step": Input("INT", default=10000, min=0, max=10000),
        "return_with_leftover_noise": Input("COMBO", choices=("disable", "enable")),
    },
    outputs=("LATENT",),
)
def ksampler_advanced(
    ctx: ExecutionContext,
    model: Denoiser,
    add_noise: str,
    noise_seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list[Cond],
    negative: list[Cond],
    latent_image: dict[str, Any],
    start_at_step: int,
    end_at_step: int,
    return_with_leftover_noise: str,
) -> tuple[dict[str, Any]]:
    """Run steps start_at_step..end_at_step of a `steps`-step schedule: with add_noise disabled the latent is
    taken as already noisy, with return_with_leftover_noise enabled the result keeps the noise of the last
    sigma reached (so a second KSamplerAdvanced can go on from there), as in ComfyUI."""
    samples = ksample(
        model,
        latent_image["samples"],
        seed=noise_seed,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler=scheduler,
        positive=positive,
        negative=negative,
        noise_mask=latent_image.get("noise_mask"),
        on_step=ctx.step,
        add_noise=add_noise == "enable",
        start_step=start_at_step,
        last_step=end_at_step,
        force_full_denoise=return_with_leftover_noise != "enable",
    )
    return ({**latent_image, "samples": samples},)
