"""Nodes that read the job's input images, transform images, and save output images."""

from __future__ import annotations

import io
import time

import numpy as np
import torch
from PIL import Image, ImageOps

from worker.engine import ExecutionContext, Input, SavedImage, node
from worker.errors import UserError
from worker.imaging import load_image
from worker.names import relative_name_problem
from worker.nodes.resample import CROP_METHODS, IMAGE_METHODS, resize

# ComfyUI's file pickers sometimes export a name with the folder annotated: "photo.png [input]".
_ANNOTATION = " [input]"


@node(
    "LoadImage",
    inputs={"image": Input("COMBO", choices_from="input_images")},
    outputs=("IMAGE", "MASK"),
)
def load_image_node(ctx: ExecutionContext, image: str) -> tuple[torch.Tensor, torch.Tensor]:
    """An image sent with the job in input.images, referenced by its name."""
    return load_image(ctx.input_images[strip_annotation(image)])


def strip_annotation(name: str) -> str:
    return name[: -len(_ANNOTATION)] if name.endswith(_ANNOTATION) else name


def _prefix_parts(prefix: str, image: torch.Tensor) -> tuple[str, str]:
    """ComfyUI's filename_prefix: %width%/%height%/%year%... filled in, folders before the last '/'."""
    now = time.localtime()
    for key, value in {
        "%width%": str(image.shape[2]),
        "%height%": str(image.shape[1]),
        "%year%": f"{now.tm_year}",
        "%month%": f"{now.tm_mon:02}",
        "%day%": f"{now.tm_mday:02}",
        "%hour%": f"{now.tm_hour:02}",
        "%minute%": f"{now.tm_min:02}",
        "%second%": f"{now.tm_sec:02}",
    }.items():
        prefix = prefix.replace(key, value)
    problem = relative_name_problem(prefix)
    if problem is not None:
        raise UserError(f"filename_prefix {prefix!r} is not allowed: {problem}")
    folder, _, name = prefix.rpartition("/")
    return folder, name


@node(
    "SaveImage",
    inputs={"images": Input("IMAGE"), "filename_prefix": Input("STRING", default="ComfyUI", path_like=True)},
    output_node=True,
)
def save_image(ctx: ExecutionContext, images: torch.Tensor, filename_prefix: str) -> tuple[()]:
    """Return every image of the batch as <prefix>_<counter>_.png."""
    folder, name = _prefix_parts(filename_prefix, images)
    for image in images:
        counter = ctx.next_counter(f"{folder}/{name}")
        ctx.save(
            SavedImage(node_id=ctx.node_id, filename=f"{name}_{counter:05}_.png", subfolder=folder,
                       pixels=image)
        )
    return ()


@node("PreviewImage", inputs={"images": Input("IMAGE")}, output_node=True, temp_output=True)
def preview_image(ctx: ExecutionContext, images: torch.Tensor) -> tuple[()]:
    """Shown in ComfyUI's UI only; a worker returns nothing for it, so it is never run."""
    return ()


MASK_CHANNELS = ("alpha", "red", "green", "blue")


@node(
    "LoadImageMask",
    inputs={"image": Input("COMBO", choices_from="input_images"), "channel": Input("COMBO", choices=MASK_CHANNELS)},
    outputs=("MASK",),
)
def load_image_mask(ctx: ExecutionContext, image: str, channel: str) -> tuple[torch.Tensor]:
    """One channel of an input image as a MASK [1, H, W]; alpha is inverted (transparent = 1), as ComfyUI."""
    return (mask_from_channel(ctx.input_images[strip_annotation(image)], channel),)


def mask_from_channel(data: bytes, channel: str) -> torch.Tensor:
    """ComfyUI's LoadImageMask: the first frame, EXIF orientation applied, converted to RGBA (an image
    without alpha is opaque, so its alpha mask is all 0), the channel scaled to 0..1."""
    with Image.open(io.BytesIO(data)) as opened:
        frame = ImageOps.exif_transpose(opened)
        if frame.getbands() != ("R", "G", "B", "A"):
            if frame.mode == "I":  # 16-bit grayscale
                frame = frame.point(lambda v: v * (1 / 255))
            frame = frame.convert("RGBA")
        band = channel[0].upper()
        values = torch.from_numpy(np.asarray(frame.getchannel(band), dtype=np.float32) / 255.0)
    return (1.0 - values if band == "A" else values).unsqueeze(0)


@node(
    "ImageScale",
    inputs={
        "image": Input("IMAGE"),
        "upscale_method": Input("COMBO", choices=IMAGE_METHODS),
        "width": Input("INT", default=512, min=0, max="max_side"),
        "height": Input("INT", default=512, min=0, max="max_side"),
        "crop": Input("COMBO", choices=CROP_METHODS),
    },
    outputs=("IMAGE",),
)
def image_scale(
    ctx: ExecutionContext, image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str
) -> tuple[torch.Tensor]:
    """Resize to width x height; a side of 0 keeps the aspect ratio, both 0 leave the image as it is."""
    if width == 0 and height == 0:
        return (image,)
    in_h, in_w = image.shape[1], image.shape[2]
    if width == 0:
        width = max(1, round(in_w * height / in_h))
    elif height == 0:
        height = max(1, round(in_h * width / in_w))
    return (resize(image.movedim(-1, 1), width, height, upscale_method, crop).movedim(1, -1),)


@node(
    "ImageScaleBy",
    inputs={
        "image": Input("IMAGE"),
        "upscale_method": Input("COMBO", choices=IMAGE_METHODS),
        "scale_by": Input("FLOAT", default=1.0, min=0.01, max=8.0),
    },
    outputs=("IMAGE",),
)
def image_scale_by(
    ctx: ExecutionContext, image: torch.Tensor, upscale_method: str, scale_by: float
) -> tuple[torch.Tensor]:
    """Resize both sides by a factor (rounded to whole pixels)."""
    width, height = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
    if width < 1 or height < 1:
        raise UserError(f"scaling a {image.shape[2]}x{image.shape[1]} image by {scale_by:g} leaves no pixels")
    return (resize(image.movedim(-1, 1), width, height, upscale_method).movedim(1, -1),)


@node("ImageInvert", inputs={"image": Input("IMAGE")}, outputs=("IMAGE",))
def image_invert(ctx: ExecutionContext, image: torch.Tensor) -> tuple[torch.Tensor]:
    """1 - pixel for every channel."""
    return (1.0 - image,)
