"""Single-file checkpoints as ComfyUI users have them (`checkpoints/*.safetensors`, original LDM key layout).

The family is read from the keys; the architecture config (and tokenizer files) come from a diffusers-format
config folder in `models/configs/` whose shapes match the file (the image fetches SD1.5's and SDXL's at
build: configs and tokenizers only, no weights). diffusers' own converters turn the UNet and VAE weights
into its layout; the CLIP text encoders are renamed here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from worker.errors import UserError

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
FAMILIES = ("sd1", "sdxl")


def read_device(path: Path, device: torch.device) -> torch.device:
    """Where to read a model file: straight onto the GPU (no CPU copy, no later host-to-device move) when the
    file and the model built from it (at most about twice the file) fit in free device memory, else the CPU."""
    if device.type != "cuda":
        return torch.device("cpu")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    free, _ = torch.cuda.mem_get_info(device)
    if 2 * size < free:
        return device
    log.info("reading %s (%.1f GB) through the CPU: %.1f GB free on %s", path.name, size / 1e9, free / 1e9, device)
    return torch.device("cpu")


def read_state_dict(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a pickled .ckpt/.pt read with weights_only (no code runs), placed
    on `device` as they are read."""
    try:
        if path.suffix.lower() in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            return load_file(str(path), device=str(device))
        loaded = torch.load(path, map_location=device, weights_only=True)
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


def _empty(model_class: Any, config: Path, device: torch.device) -> Any:
    """A text model with uninitialised weights on `device`: the file's weights overwrite them, so random init
    (seconds for OpenCLIP-G on a CPU) would be wasted. Buffers such as position ids are still built."""
    from transformers import CLIPTextConfig
    from transformers.initialization import no_init_weights

    with no_init_weights(), torch.device(device):
        return model_class(CLIPTextConfig.from_pretrained(config, local_files_only=True))


def load_clip_l(state: dict[str, torch.Tensor], prefix: str, config: Path, device: torch.device | None = None) -> Any:
    from transformers import CLIPTextModel

    model = _empty(CLIPTextModel, config, device or _device_of(state))
    return _load_text_model(model, _strip(state, prefix), "CLIP-L text encoder")


def load_clip_g(state: dict[str, torch.Tensor], prefix: str, config: Path, device: torch.device | None = None) -> Any:
    """OpenCLIP ViT-bigG (SDXL's second encoder): fused q/k/v and OpenCLIP names -> transformers'."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModelWithProjection

    model = _empty(CLIPTextModelWithProjection, config, device or _device_of(state))
    weights = convert_open_clip_checkpoint(model, state, prefix=prefix)
    return _load_text_model(model, weights, "OpenCLIP-G text encoder")


def _device_of(state: dict[str, torch.Tensor]) -> torch.device:
    return next(iter(state.values())).device if state else torch.device("cpu")


def load_unet_and_vae(state: dict[str, torch.Tensor], config: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Built on the meta device and filled from `state`, on the device the state was read to."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    common = {"config": str(config), "torch_dtype": dtype, "local_files_only": True, "device": _device_of(state)}
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


def load_vae_file(path: Path, config_dirs: list[Path], dtype: torch.dtype, device: torch.device | None = None) -> Any:
    """A standalone VAE (models/vae): original layout (encoder.*/decoder.*, optionally under
    first_stage_model.) or a diffusers VAE folder (config.json + weights)."""
    from diffusers import AutoencoderKL

    device = read_device(path, device or torch.device("cpu"))
    if path.is_dir():
        return AutoencoderKL.from_pretrained(path, torch_dtype=dtype, local_files_only=True, device_map=str(device))
    state = read_state_dict(path, device)
    state = {key.removeprefix("first_stage_model."): value for key, value in state.items()}
    if "encoder.conv_in.weight" not in state or "decoder.conv_in.weight" not in state:
        raise UserError(f"{path.name} is not a VAE (no encoder.conv_in / decoder.conv_in weights)")
    config = find_vae_config(state, config_dirs)
    return AutoencoderKL.from_single_file(
        state, config=str(config), subfolder="vae", torch_dtype=dtype, local_files_only=True, device=device
    )
