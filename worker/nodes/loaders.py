"""Nodes that hand out resident models."""

from __future__ import annotations

from typing import Any

from worker.engine import ExecutionContext, Input, node
from worker.models.flux import CLIP_TYPES, SINGLE_CLIP_TYPES, WEIGHT_DTYPES


@node(
    "CheckpointLoaderSimple",
    inputs={"ckpt_name": Input("COMBO", choices_from="checkpoints")},
    outputs=("MODEL", "CLIP", "VAE"),
)
def checkpoint_loader_simple(ctx: ExecutionContext, ckpt_name: str) -> tuple[Any, ...]:
    """Load a checkpoint from models/checkpoints (kept resident across jobs)."""
    checkpoint = ctx.models.checkpoint(ckpt_name)
    return checkpoint.model, checkpoint.clip, checkpoint.vae


def _lora_strength_input() -> Input:
    return Input("FLOAT", default=1.0, min=-100.0, max=100.0)


@node(
    "LoraLoader",
    inputs={
        "model": Input("MODEL"),
        "clip": Input("CLIP"),
        "lora_name": Input("COMBO", choices_from="loras"),
        "strength_model": _lora_strength_input(),
        "strength_clip": _lora_strength_input(),
    },
    outputs=("MODEL", "CLIP"),
)
def lora_loader(
    ctx: ExecutionContext, model: Any, clip: Any, lora_name: str, strength_model: float, strength_clip: float
) -> tuple[Any, Any]:
    """Apply a LoRA from models/loras to the model and text encoder (merged while they run, then removed)."""
    lora = ctx.models.lora(lora_name)
    if strength_model != 0 and (lora.targets.get("unet") or lora.targets.get("transformer")):
        model = model.with_lora(lora, strength_model)  # raises when no layer matches (wrong model family)
    if strength_clip != 0 and (lora.targets.get("te1") or lora.targets.get("te2")):
        clip = clip.with_lora(lora, strength_clip)
    return model, clip


@node(
    "LoraLoaderModelOnly",
    inputs={
        "model": Input("MODEL"),
        "lora_name": Input("COMBO", choices_from="loras"),
        "strength_model": _lora_strength_input(),
    },
    outputs=("MODEL",),
)
def lora_loader_model_only(ctx: ExecutionContext, model: Any, lora_name: str, strength_model: float) -> tuple[Any]:
    """Apply a LoRA to the model only."""
    return (model.with_lora(ctx.models.lora(lora_name), strength_model) if strength_model != 0 else model,)


@node("VAELoader", inputs={"vae_name": Input("COMBO", choices_from="vae")}, outputs=("VAE",))
def vae_loader(ctx: ExecutionContext, vae_name: str) -> tuple[Any]:
    """Load a VAE from models/vae (kept resident), e.g. to replace a checkpoint's own."""
    return (ctx.models.vae(vae_name),)


@node(
    "UNETLoader",
    inputs={
        "unet_name": Input("COMBO", choices_from="unet"),
        "weight_dtype": Input("COMBO", choices=WEIGHT_DTYPES),
    },
    outputs=("MODEL",),
)
def unet_loader(ctx: ExecutionContext, unet_name: str, weight_dtype: str) -> tuple[Any]:
    """Load a diffusion model from models/unet or models/diffusion_models: Flux.1 dev or schnell (kept resident);
    fp8 weight dtypes keep the weights in fp8 and compute in the worker's dtype."""
    return (ctx.models.unet(unet_name, weight_dtype),)


@node(
    "DualCLIPLoader",
    inputs={
        "clip_name1": Input("COMBO", choices_from="clip"),
        "clip_name2": Input("COMBO", choices_from="clip"),
        "type": Input("COMBO", choices=CLIP_TYPES),
        "device": Input("COMBO", choices=("default", "cpu"), optional=True),
    },
    outputs=("CLIP",),
)
def dual_clip_loader(
    ctx: ExecutionContext, clip_name1: str, clip_name2: str, type: str, device: str = "default"
) -> tuple[Any]:
    """Load two text encoders from models/clip or models/text_encoders: type flux takes CLIP-L and T5-XXL (either
    order). `device` is accepted for compatibility; the encoders stay on the worker's device."""
    return (ctx.models.clip((clip_name1, clip_name2), type),)


@node(
    "CLIPLoader",
    inputs={
        "clip_name": Input("COMBO", choices_from="clip"),
        "type": Input("COMBO", choices=SINGLE_CLIP_TYPES),
        "device": Input("COMBO", choices=("default", "cpu"), optional=True),
    },
    outputs=("CLIP",),
)
def clip_loader(ctx: ExecutionContext, clip_name: str, type: str, device: str = "default") -> tuple[Any]:
    """Load one text encoder from models/clip or models/text_encoders: type stable_diffusion takes a CLIP-L
    (SD1.x's text encoder)."""
    return (ctx.models.clip((clip_name,), type),)
