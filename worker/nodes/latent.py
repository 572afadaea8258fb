"""Nodes that make latents and move between pixels and latents."""

from __future__ import annotations

from typing import Any

import torch

from worker.engine import ExecutionContext, Input, node
from worker.errors import UserError
from worker.models.sd import Vae

LATENT_CHANNELS = 4
DECODE_CHUNK = 4  # images decoded per VAE call: bounds peak memory for large batches


@node(
    "EmptyLatentImage",
    inputs={
        "width": Input("INT", default=512, min=16, max="max_side", multiple_of=8),
        "height": Input("INT", default=512, min=16, max="max_side", multiple_of=8),
        "batch_size": Input("INT", default=1, min=1, max="max_batch"),
    },
    outputs=("LATENT",),
)
def empty_latent_image(ctx: ExecutionContext, width: int, height: int, batch_size: int) -> tuple[dict[str, Any]]:
    """A batch of zero latents for an image of width x height."""
    return ({"samples": torch.zeros(batch_size, LATENT_CHANNELS, height // 8, width // 8)},)


@node("VAEDecode", inputs={"samples": Input("LATENT"), "vae": Input("VAE")}, outputs=("IMAGE",))
def vae_decode(ctx: ExecutionContext, samples: dict[str, Any], vae: Vae) -> tuple[torch.Tensor]:
    """Latents to pixels [B, H, W, 3] in 0..1."""
    latents = samples["samples"]
    images = []
    for start in range(0, latents.shape[0], DECODE_CHUNK):
        ctx.check()
        images.append(vae.decode(latents[start:start + DECODE_CHUNK]))
    return (torch.cat(images),)


@node("VAEEncode", inputs={"pixels": Input("IMAGE"), "vae": Input("VAE")}, outputs=("LATENT",))
def vae_encode(ctx: ExecutionContext, pixels: torch.Tensor, vae: Vae) -> tuple[dict[str, Any]]:
    """Pixels to latents; sides that are not multiples of the VAE's factor are center-cropped, as ComfyUI."""
    f = vae.downscale
    height, width = (pixels.shape[1] // f) * f, (pixels.shape[2] // f) * f
    if height == 0 or width == 0:
        raise UserError(f"image of {pixels.shape[2]}x{pixels.shape[1]} is smaller than {f}x{f} pixels")
    top, left = (pixels.shape[1] % f) // 2, (pixels.shape[2] % f) // 2
    cropped = pixels[:, top:top + height, left:left + width, :]
    latents = [vae.encode(cropped[i:i + DECODE_CHUNK]) for i in range(0, cropped.shape[0], DECODE_CHUNK)]
    return ({"samples": torch.cat(latents).cpu()},)
