"""Upscaling with a model (ESRGAN family and the other architectures spandrel loads), tile by tile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from worker.engine import ExecutionContext, Input, node
from worker.errors import UserError

TILE = 512  # input pixels per tile side, ComfyUI's starting size
OVERLAP = 32  # input pixels shared by neighbouring tiles, blended with linear ramps
MIN_TILE = 128  # out of memory with tiles smaller than this: give up, as ComfyUI


def _positions(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along an axis: every tile - overlap pixels, the last ones pulled back inside (ComfyUI's
    placement; a start that repeats is computed once)."""
    starts = [max(0, min(length - overlap, p)) for p in range(0, length, tile - overlap)]
    return sorted(set(starts))


def _ramp(length: int, feather: int) -> torch.Tensor:
    """1 in the middle, (t + 1) / feather on the t-th pixel from either end (both ramps multiply where they
    meet); flat when the tile is not longer than the feather."""
    weights = torch.ones(length)
    if feather >= length or feather <= 0:
        return weights
    ramp = torch.arange(1, feather + 1, dtype=torch.float32) / feather
    weights[:feather] *= ramp
    weights[length - feather:] *= ramp.flip(0)
    return weights


def tiled_upscale(
    image: torch.Tensor,
    model: Callable[[torch.Tensor], torch.Tensor],
    scale: int,
    out_channels: int,
    tile: int = TILE,
    overlap: int = OVERLAP,
    on_tile: Callable[[int, int], None] = lambda done, total: None,
) -> torch.Tensor:
    """`model` applied to overlapping tiles of `image` ([B, C, H, W] on the model's device) and blended
    into [B, out_channels, H * scale, W * scale] on the CPU, so the model's activations never need more
    memory than one tile's."""
    batch, _, height, width = image.shape
    tops, lefts = _positions(height, tile, overlap), _positions(width, tile, overlap)
    total, done = batch * len(tops) * len(lefts), 0
    result = torch.empty(batch, out_channels, round(height * scale), round(width * scale))
    feather = round(overlap * scale)
    for b in range(batch):
        out = torch.zeros(1, out_channels, result.shape[2], result.shape[3])
        weight = torch.zeros_like(out)
        for top in tops:
            for left in lefts:
                piece = model(image[b:b + 1, :, top:top + tile, left:left + tile]).float().cpu()
                mask = _ramp(piece.shape[2], feather)[:, None] * _ramp(piece.shape[3], feather)[None, :]
                y, x = round(top * scale), round(left * scale)
                region = (slice(None), slice(None), slice(y, y + piece.shape[2]), slice(x, x + piece.shape[3]))
                out[region] += piece * mask
                weight[region] += mask
                done += 1
                on_tile(done, total)
        result[b:b + 1] = out / weight
    return result


@node(
    "UpscaleModelLoader",
    inputs={"model_name": Input("COMBO", choices_from="upscale_models")},
    outputs=("UPSCALE_MODEL",),
)
def upscale_model_loader(ctx: ExecutionContext, model_name: str) -> tuple[Any]:
    """Load an upscale model from models/upscale_models (kept resident across jobs)."""
    return (ctx.models.upscale_model(model_name),)


@node(
    "ImageUpscaleWithModel",
    inputs={"upscale_model": Input("UPSCALE_MODEL"), "image": Input("IMAGE")},
    outputs=("IMAGE",),
)
def image_upscale_with_model(ctx: ExecutionContext, upscale_model: Any, image: torch.Tensor) -> tuple[torch.Tensor]:
    """Upscale by the model's factor in 512-pixel tiles (halved while the device runs out of memory)."""
    channels = image.shape[-1]
    if upscale_model.input_channels != channels:
        raise UserError(
            f"the upscale model takes {upscale_model.input_channels}-channel images; this image has {channels}"
        )
    parameter = next(upscale_model.model.parameters(), None)
    device = parameter.device if parameter is not None else ctx.device
    pixels = image.movedim(-1, 1).to(device, torch.float32)
    tile = TILE
    while True:
        try:
            with torch.inference_mode():
                out = tiled_upscale(
                    pixels, upscale_model, upscale_model.scale, upscale_model.output_channels, tile=tile,
                    on_tile=ctx.step,
                )
            break
        except torch.OutOfMemoryError:
            tile //= 2
            if tile < MIN_TILE:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return (out.clamp(0.0, 1.0).movedim(1, -1),)
