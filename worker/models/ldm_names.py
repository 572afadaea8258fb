"""Original (LDM) parameter names of diffusers UNet and VAE modules: the inverse of diffusers' single-file
converters. Needed to find the modules that LoRA files written against the original layout refer to (SDXL
LoRAs from kohya name UNet layers `input_blocks_4_1_...`), and by the tests to write original-layout files.
A round-trip test checks it against diffusers' converters."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_ldm_name(key: str, config: dict[str, Any]) -> str:
    """'down_blocks.1.attentions.0.proj_in.weight' -> 'input_blocks.4.1.proj_in.weight' (no prefix)."""
    top = dict(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    top.update(DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"])
    per = config["layers_per_block"] + 1
    up_has_attention = ["CrossAttn" in kind for kind in config["up_block_types"]]
    parts = key.split(".")
    if key in top:
        return top[key]
    if parts[0] == "down_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":
            new = f"input_blocks.{(block + 1) * per}.0.op.{parts[-1]}"
        else:
            index = 1 + block * per + int(parts[3])
            new = f"input_blocks.{index}.{0 if kind == 'resnets' else 1}." + _rest(parts[4:], kind)
    elif parts[0] == "mid_block":
        kind, index = parts[1], int(parts[2])
        slot = 1 if kind == "attentions" else (0 if index == 0 else 2)
        new = f"middle_block.{slot}." + _rest(parts[3:], kind)
    elif parts[0] == "up_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":
            new = f"output_blocks.{block * per + per - 1}.{2 if up_has_attention[block] else 1}.conv.{parts[-1]}"
        else:
            index = block * per + int(parts[3])
            new = f"output_blocks.{index}.{0 if kind == 'resnets' else 1}." + _rest(parts[4:], kind)
    else:
        raise KeyError(f"no LDM name for UNet key {key}")
    return new


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {"model.diffusion_model." + unet_ldm_name(key, config): value for key, value in state.items()}


def _rest(parts: list[str], kind: str) -> str:
    if kind == "resnets" and parts[0] in _RESNET:
        return ".".join([_RESNET[parts[0]], *parts[1:]])
    return ".".join(parts)


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    top = dict(DIFFUSERS_TO_LDM_MAPPING["vae"])
    blocks = len(config["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if key in top:
            out["first_stage_model." + top[key]] = value
            continue
        side, group = parts[0], parts[1]
        if group in ("down_blocks", "up_blocks"):
            index = int(parts[2]) if group == "down_blocks" else blocks - 1 - int(parts[2])
            level = f"{side}.{'down' if group == 'down_blocks' else 'up'}.{index}"
            if parts[3] == "resnets":
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{level}.block.{parts[4]}.{rest}"
            else:  # downsamplers.0.conv.* / upsamplers.0.conv.*
                new = f"{level}.{'downsample' if group == 'down_blocks' else 'upsample'}.conv.{parts[-1]}"
        elif group == "mid_block" and parts[2] == "resnets":
            rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            new = f"{side}.mid.block_{int(parts[3]) + 1}.{rest}"
        elif group == "mid_block":
            inner = ".".join(parts[4:-1])
            new = f"{side}.mid.attn_1.{_VAE_ATTENTION[inner]}.{parts[-1]}"
            if parts[-1] == "weight" and inner != "group_norm":
                value = value[:, :, None, None]  # LDM keeps these as 1x1 convolutions
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
        out["first_stage_model." + new] = value
    return out


