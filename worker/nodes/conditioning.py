"""Nodes that make and combine CONDITIONING (a list of Cond entries, as ComfyUI's list of [tensor, dict])."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from worker.engine import ExecutionContext, Input, node
from worker.errors import UserError
from worker.models.flux import FluxTextEncoder
from worker.models.sd import Cond, TextEncoder

log = logging.getLogger(__name__)


@node(
    "CLIPTextEncode",
    inputs={"text": Input("STRING", multiline=True), "clip": Input("CLIP")},
    outputs=("CONDITIONING",),
)
def clip_text_encode(ctx: ExecutionContext, text: str, clip: TextEncoder) -> tuple[list[Cond]]:
    """Encode a prompt; supports ComfyUI's (word:1.2) weights and prompts longer than 75 tokens."""
    log.debug("job %s node %s prompt: %s", ctx.job_id, ctx.node_id, text)
    return ([clip.encode(text)],)


@node(
    "CLIPSetLastLayer",
    inputs={"clip": Input("CLIP"), "stop_at_clip_layer": Input("INT", default=-1, min=-24, max=-1)},
    outputs=("CLIP",),
)
def clip_set_last_layer(ctx: ExecutionContext, clip: Any, stop_at_clip_layer: int) -> tuple[Any]:
    """Take the text embeddings from an earlier layer ("clip skip": -2 is the usual choice)."""
    return (stop_at_layer(clip, stop_at_clip_layer),)


def stop_at_layer(clip: Any, layer: int) -> Any:
    """`clip` stopping at `layer`. As in ComfyUI, an encoder with fewer layers than asked uses its last one;
    an encoder made of several (SDXL's two) applies this to each of them."""
    if isinstance(clip, TextEncoder):
        layers = getattr(clip.model.config, "num_hidden_layers", None)
        return clip.with_layer(-1 if layers is not None and -layer > layers else layer)
    if dataclasses.is_dataclass(clip):
        parts = {
            field.name: stop_at_layer(getattr(clip, field.name), layer)
            for field in dataclasses.fields(clip)
            if isinstance(getattr(clip, field.name), TextEncoder)
        }
        if parts:
            return dataclasses.replace(clip, **parts)
    return clip.with_layer(layer)


@node(
    "ConditioningCombine",
    inputs={"conditioning_1": Input("CONDITIONING"), "conditioning_2": Input("CONDITIONING")},
    outputs=("CONDITIONING",),
)
def conditioning_combine(
    ctx: ExecutionContext, conditioning_1: list[Cond], conditioning_2: list[Cond]
) -> tuple[list[Cond]]:
    """Both lists' entries: the sampler averages their predictions (weighted by strength and area)."""
    return ([*conditioning_1, *conditioning_2],)


@node(
    "ConditioningSetArea",
    inputs={
        "conditioning": Input("CONDITIONING"),
        "width": Input("INT", default=64, min=64, max="max_side"),
        "height": Input("INT", default=64, min=64, max="max_side"),
        "x": Input("INT", default=0, min=0, max="max_side"),
        "y": Input("INT", default=0, min=0, max="max_side"),
        "strength": Input("FLOAT", default=1.0, min=0.0, max=10.0),
    },
    outputs=("CONDITIONING",),
)
def conditioning_set_area(
    ctx: ExecutionContext, conditioning: list[Cond], width: int, height: int, x: int, y: int, strength: float
) -> tuple[list[Cond]]:
    """Limit each entry to a rectangle of the image (pixels, floored to the latent's 8-pixel grid) with a
    weight: the sampler runs it on that part only and blends it in with feathered edges."""
    area = (height // 8, width // 8, y // 8, x // 8)
    return ([dataclasses.replace(c, area=area, strength=strength) for c in conditioning],)


@node(
    "FluxGuidance",
    inputs={"conditioning": Input("CONDITIONING"), "guidance": Input("FLOAT", default=3.5, min=0.0, max=100.0)},
    outputs=("CONDITIONING",),
)
def flux_guidance(ctx: ExecutionContext, conditioning: list[Cond], guidance: float) -> tuple[list[Cond]]:
    """Set the distilled guidance a Flux dev model is conditioned on (ComfyUI's default 3.5; schnell ignores it)."""
    return ([dataclasses.replace(c, guidance=guidance) for c in conditioning],)


@node(
    "CLIPTextEncodeFlux",
    inputs={
        "clip": Input("CLIP"),
        "clip_l": Input("STRING", multiline=True),
        "t5xxl": Input("STRING", multiline=True),
        "guidance": Input("FLOAT", default=3.5, min=0.0, max=100.0),
    },
    outputs=("CONDITIONING",),
)
def clip_text_encode_flux(
    ctx: ExecutionContext, clip: Any, clip_l: str, t5xxl: str, guidance: float
) -> tuple[list[Cond]]:
    """Encode separate prompts for Flux's CLIP-L (pooled vector) and T5-XXL (text tokens), with a guidance."""
    if not isinstance(clip, FluxTextEncoder):
        raise UserError("CLIPTextEncodeFlux needs a Flux CLIP (DualCLIPLoader type 'flux')")
    return ([dataclasses.replace(clip.encode_pair(clip_l, t5xxl), guidance=guidance)],)
