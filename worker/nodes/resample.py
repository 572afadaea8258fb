"""Resizing of IMAGE and LATENT tensors with ComfyUI's methods (its comfy.utils.common_upscale).

Everything works on channels-first tensors [B, C, H, W]: torch's interpolation modes as ComfyUI calls them
(no antialiasing, align_corners left at its default), Pillow's Lanczos on 8-bit pixels (so the result is
quantized to 1/255 steps, as in ComfyUI), and "bislerp", which interpolates latent vectors along great
circles instead of straight lines. `crop="center"` first trims the input to the target's aspect ratio.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
CROP_METHODS = ("disabled", "center")


def center_crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The middle part of `samples` with the aspect ratio of width x height (trimmed on one axis only)."""
    old_h, old_w = samples.shape[-2], samples.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    top = left = 0
    if old_aspect > new_aspect:
        left = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        top = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples[..., top:old_h - top, left:old_w - left]


def resize(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """`samples` [B, C, H, W] resized to height x width."""
    if crop == "center":
        samples = center_crop_to_aspect(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    if method == "lanczos":
        return lanczos(samples, width, height)
    return F.interpolate(samples, size=(height, width), mode=method)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's Lanczos filter, image by image, through 8-bit pixels."""
    resized = []
    for image in samples:
        pixels = np.clip(255.0 * image.movedim(0, -1).float().cpu().numpy(), 0, 255).astype(np.uint8)
        single = pixels.shape[-1] == 1
        out = Image.fromarray(pixels[..., 0] if single else pixels).resize(
            (width, height), resample=Image.Resampling.LANCZOS
        )
        array = np.asarray(out, dtype=np.float32) / 255.0
        resized.append(torch.from_numpy(array[..., None] if single else array).movedim(-1, 0))
    return torch.stack(resized).to(samples.device, samples.dtype)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rows of `a` and `b` ([N, C]) interpolated by `t` ([N, 1]): the direction along the great circle, the
    length linearly. Nearly equal directions keep `a`; opposite ones fall back to a straight line."""
    a_len = a.norm(dim=-1, keepdim=True)
    b_len = b.norm(dim=-1, keepdim=True)
    a_dir = torch.where(a_len == 0, torch.zeros_like(a), a / a_len)
    b_dir = torch.where(b_len == 0, torch.zeros_like(b), b / b_len)
    cos = (a_dir * b_dir).sum(dim=1)
    angle = torch.acos(cos)
    sin = torch.sin(angle)
    s = t.squeeze(1)
    out = (torch.sin((1.0 - s) * angle) / sin).unsqueeze(1) * a_dir + (torch.sin(s * angle) / sin).unsqueeze(1) * b_dir
    out = out * (a_len * (1.0 - t) + b_len * t)
    out = torch.where((cos > 1 - 1e-5).unsqueeze(1), a, out)
    return torch.where((cos < 1e-5 - 1).unsqueeze(1), a * (1.0 - t) + b * t, out)


def _neighbours(old: int, new: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `new` output positions along an axis of length `old`: the source index on each side and
    the fraction between them, where bilinear interpolation (align_corners=False) samples."""
    index = torch.arange(old, dtype=torch.float32, device=device).reshape(1, 1, 1, -1)
    position = F.interpolate(index, size=(1, new), mode="bilinear")
    fraction = position - position.floor()
    after = index + 1
    after[..., -1] -= 1  # the last sample has no right neighbour: itself
    right = F.interpolate(after, size=(1, new), mode="bilinear")
    return position.to(torch.int64).flatten(), right.to(torch.int64).flatten(), fraction.flatten()


def _slerp_channels(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`_slerp` over the channel vectors of [N, C, H, W] tensors; `t` is [N, 1, H, W]."""
    n, c, h, w = a.shape
    rows = [v.movedim(1, -1).reshape(-1, v.shape[1]) for v in (a, b, t)]
    return _slerp(*rows).reshape(n, h, w, c).movedim(-1, 1)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear resizing with spherical interpolation between latent vectors: first along the width, then
    along the height."""
    dtype = samples.dtype
    x = samples.float()
    n, _, h, w = x.shape
    left, right, fraction = _neighbours(w, width, x.device)
    x = _slerp_channels(x[..., left], x[..., right], fraction.reshape(1, 1, 1, -1).expand(n, 1, h, -1))
    top, bottom, fraction = _neighbours(h, height, x.device)
    x = _slerp_channels(
        x[:, :, top, :], x[:, :, bottom, :], fraction.reshape(1, 1, -1, 1).expand(n, 1, -1, width)
    )
    return x.to(dtype)
