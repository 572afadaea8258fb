"""Single-file checkpoints as ComfyUI users have them (`checkpoints/*.safetensors`, original LDM key layout).

The family is read from the keys; the architecture config (and tokenizer files) come from a diffusers-format
config folder in `models/configs/` whose shapes match the file (the image fetches SD1.5's and SDXL's at
build: configs and tokenizers only, no weights). diffusers' own converters turn the UNet and VAE weights
into its layout; the CLIP text encoders are renamed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from worker.errors import UserError

UNET_PREFIX = "model.diffusion_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
FAMILIES = ("sd1", "sdxl")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a pickled .ckpt/.pt read with weights_only (no code runs)."""
    try:
        if path.suffix.lower() in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read {path.name}: {type(exc).__name__}: {exc}") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise UserError(f"{path.name} does not hold a state dict")
    return loaded


def detect_family(state: dict[str, torch.Tensor]) -> str:
    """'sd1' or 'sdxl' from the keys, or a UserError naming what the file looks like."""
    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in state)

    if has(UNET_PREFIX):
        if has(SDXL_CLIP_G_PREFIX):
            return "sdxl"
        if has(SD1_CLIP_PREFIX):
            return "sd1"
        if has(SD2_CLIP_PREFIX):
            raise UserError("Stable Diffusion 2.x checkpoints are not supported yet; supported: SD1.x, SDXL")
        raise UserError("the file holds a UNet but no text encoder; load it with UNETLoader")
    if any("double_blocks." in key for key in state):
        raise UserError("this is a Flux transformer; put it in models/unet (diffusion_models) and use UNETLoader")
    raise UserError("unrecognized checkpoint layout; supported single files: SD1.x and SDXL checkpoints")


def _unet_shape(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(model_channels, cross-attention context dim) of an LDM UNet."""
    channels = state[UNET_PREFIX + "input_blocks.0.0.weight"].shape[0]
    context = next(value.shape[1] for key, value in state.items() if key.endswith("attn2.to_k.weight"))
    return int(channels), int(context)


def find_config(family: str, state: dict[str, torch.Tensor], config_dirs: list[Path]) -> Path:
    """The first config folder whose UNet matches the file's family and shapes."""
    channels, context = _unet_shape(state)
    for folder in config_dirs:
        try:
            unet = json.loads((folder / "unet" / "config.json").read_text())
        except (OSError, ValueError):
            continue
        is_xl = unet.get("addition_embed_type") == "text_time"
        if (
            is_xl == (family == "sdxl")
            and unet.get("block_out_channels", [None])[0] == channels
            and unet.get("cross_attention_dim") == context
        ):
            return folder
    names = ", ".join(f.name for f in config_dirs) or "none"
    raise UserError(
        f"no config folder in models/configs matches this {family} checkpoint (channels {channels}, context "
        f"{context}); found: {names}. The Docker image ships configs for SD1.5 and SDXL."
    )


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _load_text_model(model: Any, weights: dict[str, torch.Tensor], what: str) -> Any:
    if not hasattr(model, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        weights = {key.removeprefix("text_model."): value for key, value in weights.items()}
    weights = {key: value for key, value in weights.items() if not key.endswith("position_ids")}
    missing, _ = model.load_state_dict(weights, strict=False)
    if missing:
        raise UserError(f"checkpoint lacks {len(missing)} {what} weights (e.g. {missing[0]})")
    return model


def load_clip_l(state: dict[str, torch.Tensor], prefix: str, config: Path) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig.from_pretrained(config, local_files_only=True))
    return _load_text_model(model, _strip(state, prefix), "CLIP-L text encoder")


def load_clip_g(state: dict[str, torch.Tensor], prefix: str, config: Path) -> Any:
    """OpenCLIP ViT-bigG (SDXL's second encoder): fused q/k/v and OpenCLIP names -> transformers'."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config, local_files_only=True))
    weights = convert_open_clip_checkpoint(model, state, prefix=prefix)
    return _load_text_model(model, weights, "OpenCLIP-G text encoder")


def load_unet_and_vae(state: dict[str, torch.Tensor], config: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    common = {"config": str(config), "torch_dtype": dtype, "local_files_only": True}
    unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", **common)
    vae = AutoencoderKL.from_single_file(state, subfolder="vae", **common)
    return unet, vae


def find_vae_config(state: dict[str, torch.Tensor], config_dirs: list[Path]) -> Path:
    """A config folder whose VAE has this file's width and latent channels."""
    width = int(state["encoder.conv_in.weight"].shape[0])
    latent = int(state["decoder.conv_in.weight"].shape[1])
    for folder in config_dirs:
        try:
            vae = json.loads((folder / "vae" / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if vae.get("block_out_channels", [None])[0] == width and vae.get("latent_channels") == latent:
            return folder
    raise UserError(f"no config folder in models/configs has a VAE of width {width} with {latent} latent channels")


def load_vae_file(path: Path, config_dirs: list[Path], dtype: torch.dtype) -> Any:
    """A standalone VAE (models/vae): original layout (encoder.*/decoder.*, optionally under
    first_stage_model.) or a diffusers VAE folder (config.json + weights)."""
    from diffusers import AutoencoderKL

    if path.is_dir():
        return AutoencoderKL.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    state = read_state_dict(path)
    state = {key.removeprefix("first_stage_model."): value for key, value in state.items()}
    if "encoder.conv_in.weight" not in state or "decoder.conv_in.weight" not in state:
        raise UserError(f"{path.name} is not a VAE (no encoder.conv_in / decoder.conv_in weights)")
    config = find_vae_config(state, config_dirs)
    return AutoencoderKL.from_single_file(
        state, config=str(config), subfolder="vae", torch_dtype=dtype, local_files_only=True
    )
