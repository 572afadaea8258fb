"""Nodes that make, resize and batch latents, set inpainting masks, and move between pixels and latents."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from worker.engine import ExecutionContext, Input, node
from worker.errors import UserError
from worker.models.sd import Vae
from worker.nodes.resample import CROP_METHODS, LATENT_METHODS, resize

LATENT_CHANNELS = 4
SD3_LATENT_CHANNELS = 16  # SD3 and Flux VAEs
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
    return ({"samples": _encode(vae, cropped)},)


def _encode(vae: Vae, pixels: torch.Tensor) -> torch.Tensor:
    latents = [vae.encode(pixels[i:i + DECODE_CHUNK]) for i in range(0, pixels.shape[0], DECODE_CHUNK)]
    return torch.cat(latents).cpu()


@node(
    "EmptySD3LatentImage",
    inputs={
        "width": Input("INT", default=1024, min=16, max="max_side"),
        "height": Input("INT", default=1024, min=16, max="max_side"),
        "batch_size": Input("INT", default=1, min=1, max="max_batch"),
    },
    outputs=("LATENT",),
)
def empty_sd3_latent_image(ctx: ExecutionContext, width: int, height: int, batch_size: int) -> tuple[dict[str, Any]]:
    """A batch of zero 16-channel latents (SD3, Flux) for an image of width x height."""
    return ({"samples": torch.zeros(batch_size, SD3_LATENT_CHANNELS, height // 8, width // 8)},)


def _mask_4d(mask: torch.Tensor) -> torch.Tensor:
    """MASK [H, W] or [B, H, W] (or already [B, 1, H, W]) as [B, 1, H, W] float32."""
    return mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()


@node(
    "LatentUpscale",
    inputs={
        "samples": Input("LATENT"),
        "upscale_method": Input("COMBO", choices=LATENT_METHODS),
        "width": Input("INT", default=512, min=0, max="max_side"),
        "height": Input("INT", default=512, min=0, max="max_side"),
        "crop": Input("COMBO", choices=CROP_METHODS),
    },
    outputs=("LATENT",),
)
def latent_upscale(
    ctx: ExecutionContext, samples: dict[str, Any], upscale_method: str, width: int, height: int, crop: str
) -> tuple[dict[str, Any]]:
    """Resize latents to the latent size of a width x height image (each side at least 64 pixels); a side of
    0 keeps the aspect ratio, both 0 leave the latent as it is."""
    if width == 0 and height == 0:
        return (samples,)
    latent = samples["samples"]
    if width == 0:
        height = max(64, height)
        width = max(64, round(latent.shape[3] * height / latent.shape[2]))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(latent.shape[2] * width / latent.shape[3]))
    else:
        width, height = max(64, width), max(64, height)
    return ({**samples, "samples": resize(latent, width // 8, height // 8, upscale_method, crop)},)


@node(
    "LatentUpscaleBy",
    inputs={
        "samples": Input("LATENT"),
        "upscale_method": Input("COMBO", choices=LATENT_METHODS),
        "scale_by": Input("FLOAT", default=1.5, min=0.01, max=8.0),
    },
    outputs=("LATENT",),
)
def latent_upscale_by(
    ctx: ExecutionContext, samples: dict[str, Any], upscale_method: str, scale_by: float
) -> tuple[dict[str, Any]]:
    """Resize latents by a factor (rounded to whole latent pixels)."""
    latent = samples["samples"]
    width, height = round(latent.shape[3] * scale_by), round(latent.shape[2] * scale_by)
    if width < 1 or height < 1:
        raise UserError(f"scaling a {latent.shape[3]}x{latent.shape[2]} latent by {scale_by:g} leaves no pixels")
    return ({**samples, "samples": resize(latent, width, height, upscale_method)},)


@node(
    "RepeatLatentBatch",
    inputs={"samples": Input("LATENT"), "amount": Input("INT", default=1, min=1, max=64)},
    outputs=("LATENT",),
)
def repeat_latent_batch(ctx: ExecutionContext, samples: dict[str, Any], amount: int) -> tuple[dict[str, Any]]:
    """The batch repeated `amount` times (a per-image noise mask and batch_index follow along)."""
    out = {**samples, "samples": samples["samples"].repeat(amount, 1, 1, 1)}
    mask = samples.get("noise_mask")
    if mask is not None and mask.shape[0] > 1:  # a single mask already applies to every latent
        out["noise_mask"] = mask.repeat(amount, 1, 1, 1)
    if "batch_index" in samples:
        indices = list(samples["batch_index"])
        offset = max(indices) - min(indices) + 1
        out["batch_index"] = indices + [i + k * offset for k in range(1, amount) for i in indices]
    return (out,)


@node(
    "SetLatentNoiseMask",
    inputs={"samples": Input("LATENT"), "mask": Input("MASK")},
    outputs=("LATENT",),
)
def set_latent_noise_mask(ctx: ExecutionContext, samples: dict[str, Any], mask: torch.Tensor) -> tuple[dict[str, Any]]:
    """Only the masked area (1) is denoised by the sampler; the rest keeps the input latent."""
    return ({**samples, "noise_mask": _mask_4d(mask)},)


@node(
    "VAEEncodeForInpaint",
    inputs={
        "pixels": Input("IMAGE"),
        "vae": Input("VAE"),
        "mask": Input("MASK"),
        "grow_mask_by": Input("INT", default=6, min=0, max=64),
    },
    outputs=("LATENT",),
)
def vae_encode_for_inpaint(
    ctx: ExecutionContext, pixels: torch.Tensor, vae: Vae, mask: torch.Tensor, grow_mask_by: int
) -> tuple[dict[str, Any]]:
    """Encode pixels with the masked area blanked to gray (0.5) and attach the mask, grown by `grow_mask_by`
    pixels, as the noise mask: the sampler then repaints the masked area from scratch."""
    f = vae.downscale
    height, width = (pixels.shape[1] // f) * f, (pixels.shape[2] // f) * f
    if height == 0 or width == 0:
        raise UserError(f"image of {pixels.shape[2]}x{pixels.shape[1]} is smaller than {f}x{f} pixels")
    mask = _mask_4d(mask)
    if mask.shape[0] not in (1, pixels.shape[0]):
        raise UserError(f"{mask.shape[0]} masks for {pixels.shape[0]} images; send one mask or one per image")
    mask = F.interpolate(mask, size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
    top, left = (pixels.shape[1] % f) // 2, (pixels.shape[2] % f) // 2
    pixels = pixels[:, top:top + height, left:left + width, :3]
    mask = mask[:, :, top:top + height, left:left + width]
    binary = mask.round()
    if grow_mask_by == 0:
        grown = mask
    else:  # dilation: any masked pixel within the kernel marks the pixel
        kernel = torch.ones(1, 1, grow_mask_by, grow_mask_by)
        grown = F.conv2d(binary, kernel, padding=math.ceil((grow_mask_by - 1) / 2)).clamp(0, 1)
    keep = (1.0 - binary).squeeze(1).unsqueeze(-1)
    blanked = (pixels - 0.5) * keep + 0.5
    return ({"samples": _encode(vae, blanked), "noise_mask": grown[:, :, :height, :width].round()},)
