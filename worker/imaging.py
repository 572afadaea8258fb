"""Conversions between image bytes, Pillow images and ComfyUI's IMAGE/MASK tensors.

IMAGE is float32 [B, H, W, 3] in 0..1 on the CPU; MASK is float32 [B, H, W] where 1 marks the area to
change (ComfyUI derives it from the alpha channel: transparent = masked).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence, PngImagePlugin, UnidentifiedImageError

from worker.errors import UserError

try:  # fast lossless PNG writer; optional so an exotic platform without its wheel still works
    import fpng as _fpng
except ImportError:
    _fpng = None

# Pillow's own decompression-bomb guard is replaced by the worker's pixel limit, checked before decoding.
Image.MAX_IMAGE_PIXELS = None


def probe_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Check that `data` is an image Pillow can read and not too large; returns (format, width, height).
    Reads the header and verifies the file structure without decoding pixels."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format or "unknown", img.size
            if width * height > max_pixels:
                raise UserError(f"is {width}x{height} pixels; the limit is {max_pixels} pixels")
            img.verify()
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError("is not a readable image: no known format (PNG, JPEG, WebP, GIF, BMP, TIFF...)") from None
    except Exception as exc:  # truncated or corrupt file
        raise UserError(f"is not a readable image ({type(exc).__name__}: {exc})") from None
    return fmt, width, height


def load_image(data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode image bytes as ComfyUI's LoadImage does: EXIF orientation applied, every frame of the
    first frame's size as one batch, RGB pixels and a mask from alpha (64x64 zeros when there is none)."""
    images, masks = [], []
    with Image.open(io.BytesIO(data)) as opened:
        size = None
        for frame in ImageSequence.Iterator(opened):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":  # 16-bit grayscale
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            elif rgb.size != size:
                continue
            images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0))
            if "A" in frame.getbands():
                alpha = np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
                masks.append(1.0 - torch.from_numpy(alpha))
            else:
                masks.append(torch.zeros(64, 64, dtype=torch.float32))
    if len({m.shape for m in masks}) > 1:  # mixed alpha/no-alpha frames: keep shapes stackable
        masks = [m if m.shape == images[0].shape[:2] else torch.zeros(images[0].shape[:2]) for m in masks]
    return torch.stack(images), torch.stack(masks)


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """One IMAGE item [H, W, C] in 0..1 to uint8, truncating as ComfyUI's SaveImage does (uint8 passes)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image
    # torch's kernels use every core where numpy's use one: ~1 ms instead of ~8 ms for 1024x1024.
    tensor = torch.as_tensor(image).detach().cpu().float()
    return (tensor * 255.0).clamp_(0, 255).to(torch.uint8).numpy()


def encode_png(pixels: np.ndarray, text: dict[str, Any] | None = None, compress_level: int = 4) -> bytes:
    """Lossless PNG; `text` entries become text chunks (ComfyUI stores 'prompt' and 'workflow' there).

    fpng encodes a 1024x1024 RGB image in a few ms where Pillow's zlib takes ~150 ms (files ~10 % larger);
    Pillow remains the fallback for what fpng does not take (other dtypes or channel counts)."""
    texts = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (text or {}).items()}
    if _fpng is not None and pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        return add_png_text(_fpng.from_ndarray(np.ascontiguousarray(pixels)), texts)
    info = None
    if texts:
        info = PngImagePlugin.PngInfo()
        for key, value in texts.items():
            info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def add_png_text(png: bytes, text: dict[str, str]) -> bytes:
    """Insert text chunks before IEND: tEXt when the value is Latin-1 (as Pillow writes it), else iTXt
    (UTF-8), so prompts in any language survive."""
    if not text:
        return png
    end = png.rindex(b"IEND") - 4  # the IEND chunk starts with its 4-byte length
    chunks = []
    for key, value in text.items():
        try:
            chunks.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:
            chunks.append(_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")))
    return png[:end] + b"".join(chunks) + png[end:]


# Output formats: file extension and MIME type.
FORMATS = {"png": (".png", "image/png"), "jpeg": (".jpg", "image/jpeg"), "webp": (".webp", "image/webp")}
# JPEG keeps EXIF in one APP1 segment of at most 64 KiB; a larger workflow is left out of a JPEG.
_JPEG_MAX_EXIF = 65_000


def encode_image(pixels: np.ndarray, fmt: str, quality: int = 90, text: dict[str, Any] | None = None) -> bytes:
    """PNG (text chunks) or lossy JPEG/WebP. JPEG/WebP carry `text` in EXIF as ComfyUI's WebP nodes write it:
    'prompt' in tag 0x0110 (Model), other entries ('workflow') from tag 0x010F (Make) downwards."""
    if fmt == "png":
        return encode_png(pixels, text)
    image = Image.fromarray(pixels).convert("RGB")
    exif = Image.Exif()
    tag = 0x010F
    for key, value in (text or {}).items():
        value = value if isinstance(value, str) else json.dumps(value)
        if key == "prompt":
            exif[0x0110] = f"prompt:{value}"
        else:
            exif[tag] = f"{key}:{value}"
            tag -= 1
    exif_bytes = exif.tobytes() if text else b""
    if fmt == "jpeg" and len(exif_bytes) > _JPEG_MAX_EXIF:
        exif_bytes = b""
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=quality, exif=exif_bytes)
    elif fmt == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=4, exif=exif_bytes)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return buffer.getvalue()
