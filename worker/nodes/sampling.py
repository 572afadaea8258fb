"""The KSampler node."""

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
        on_step=ctx.step,
    )
    return ({**latent_image, "samples": samples},)
