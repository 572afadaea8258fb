"""Flux LoRA files in the formats people train and share, turned into per-layer targets of diffusers'
FluxTransformer2DModel (and CLIP-L), which worker/models/lora.py merges like any other LoRA.

diffusers' own converter reads them (kohya/sd-scripts `lora_unet_double_blocks_...` in BFL's layout with
fused q/k/v, the "mixture" `lora_transformer_...` form, XLabs, and ai-toolkit/PEFT
`transformer.<module>.lora_A/B`; BFL's control LoRAs, which also widen the input layer, are not usable here). It splits BFL's fused layers into diffusers' separate ones, with Flux.1's
sizes written into it for a single block's linear1 (q, k, v: 3072 rows each, MLP input 12288): another
width is zero-padded to those sizes first and cut back after, so any Flux-shaped model converts exactly.
"""

from __future__ import annotations

import re

import torch

from worker.errors import UserError

_FLUX_KEY = re.compile(r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks|lora_transformer_)|"
                       r"^(transformer|diffusion_model)\.transformer_blocks\.")
_LINEAR1 = re.compile(r"^lora_unet_single_blocks_\d+_linear1\.lora_up\.weight$")
_FLUX1_SPLIT = (3072, 3072, 3072, 12288)  # what diffusers' converter assumes for linear1
_MLP_RATIO = 4  # Flux's MLP is 4x its width: linear1 has 3 * width + 4 * width rows


def is_flux_lora(state: dict[str, torch.Tensor]) -> bool:
    return any(_FLUX_KEY.search(key) for key in state)


def _pad_linear1(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Zero-pad kohya linear1 up weights of a non-Flux.1 width to Flux.1's split; returns key -> width."""
    widths: dict[str, int] = {}
    for key in [k for k in state if _LINEAR1.match(k)]:
        up = state[key]
        width = up.shape[0] // (3 + _MLP_RATIO)
        if up.shape[0] == sum(_FLUX1_SPLIT) or up.shape[0] != width * (3 + _MLP_RATIO):
            continue
        parts = torch.split(up, (width, width, width, _MLP_RATIO * width))
        state[key] = torch.cat([torch.cat([p, p.new_zeros((size - p.shape[0], *p.shape[1:]))])
                                for p, size in zip(parts, _FLUX1_SPLIT, strict=True)])
        widths[key.split(".")[0].removeprefix("lora_unet_single_blocks_").removesuffix("_linear1")] = width
    return widths


_PEFT_TO_KOHYA = {".lora_A.weight": ".lora_down.weight", ".lora_B.weight": ".lora_up.weight", ".alpha": ".alpha"}
_BFL_MODULES = ("double_blocks.", "single_blocks.", "img_in", "txt_in", "time_in.", "vector_in.", "guidance_in.",
                "final_layer.")


def _as_kohya(key: str) -> str:
    """BFL module names with PEFT suffixes (ComfyUI's own LoRA format) -> the kohya names diffusers reads."""
    if not key.startswith(_BFL_MODULES):
        return key
    for suffix, kohya in _PEFT_TO_KOHYA.items():
        if key.endswith(suffix):
            return "lora_unet_" + key[: -len(suffix)].replace(".", "_") + kohya
    return key


def _fold_alphas(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scale each kohya down weight by alpha / rank and drop the alpha. diffusers' converter does this for
    most layers but not for the final layer's (it drops that alpha), where ComfyUI applies it like any other."""
    state = dict(state)
    for key in [k for k in state if k.endswith(".alpha")]:
        down_key = key.removesuffix(".alpha") + ".lora_down.weight"
        if down_key in state:
            down = state[down_key]
            state[down_key] = down * (float(state.pop(key)) / down.shape[0])
    return state


def flux_lora_state(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file in diffusers' PEFT naming: `transformer.<module>.lora_A/lora_B.weight` (alphas folded in or
    kept as `.alpha`), `text_encoder.<module>...` for CLIP-L."""
    from diffusers.loaders import FluxLoraLoaderMixin

    state = _fold_alphas({_as_kohya(key.removeprefix("diffusion_model.")): value for key, value in state.items()})
    widths = _pad_linear1(state)
    try:
        converted, alphas = FluxLoraLoaderMixin.lora_state_dict(state, return_alphas=True)
    except (ValueError, KeyError, RuntimeError, AssertionError) as exc:
        raise UserError(f"LoRA {name!r} is not a Flux LoRA this worker can read: {exc}") from exc
    for block, width in widths.items():
        prefix = f"transformer.single_transformer_blocks.{block}."
        for part, rows in (("attn.to_q", width), ("attn.to_k", width), ("attn.to_v", width),
                           ("proj_mlp", _MLP_RATIO * width)):
            key = f"{prefix}{part}.lora_B.weight"
            if key in converted:
                converted[key] = converted[key][:rows].contiguous()
    converted.update(alphas or {})
    # The converter leaves some transformer keys (norm_out, x_embedder, time_text_embed) without the prefix.
    return {key if key.startswith(("transformer.", "text_encoder")) else "transformer." + key: value
            for key, value in converted.items()}
