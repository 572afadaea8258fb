"""Nodes that read the job's input images and save output images."""

from __future__ import annotations

import time

import torch

from worker.engine import ExecutionContext, Input, SavedImage, node
from worker.errors import UserError
from worker.imaging import load_image, to_uint8
from worker.names import relative_name_problem

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
        ctx.saved.append(
            SavedImage(node_id=ctx.node_id, filename=f"{name}_{counter:05}_.png", subfolder=folder,
                       pixels=to_uint8(image))
        )
    return ()


@node("PreviewImage", inputs={"images": Input("IMAGE")}, output_node=True, temp_output=True)
def preview_image(ctx: ExecutionContext, images: torch.Tensor) -> tuple[()]:
    """Shown in ComfyUI's UI only; a worker returns nothing for it, so it is never run."""
    return ()
