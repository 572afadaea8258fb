"""Tiny checkpoints in the layouts users download: single-file SD1.x / SDXL in the original LDM key layout.

Built from tiny diffusers modules by mapping diffusers names back to LDM names (worker/models/ldm_names.py,
the inverse of diffusers' single-file converters), plus a config folder like the ones the image ships in
models/configs/. A round-trip test checks that diffusers' converters turn these files back into exactly the
weights they came from, so the files have the layout real checkpoints have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from worker.models.ldm_names import unet_to_ldm, vae_to_ldm


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers' CLIPTextModel names (flattened or not) -> 'text_model.*' under `prefix`."""
    return {prefix + "text_model." + key.removeprefix("text_model."): value for key, value in state.items()}


def clip_g_to_openclip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers' CLIPTextModelWithProjection -> OpenCLIP names, q/k/v fused as in_proj."""
    state = {key.removeprefix("text_model."): value for key, value in state.items()}
    out = {
        prefix + "token_embedding.weight": state["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": state["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": state["final_layer_norm.weight"],
        prefix + "ln_final.bias": state["final_layer_norm.bias"],
        prefix + "text_projection": state["text_projection.weight"].T.contiguous(),
    }
    layers = {int(key.split(".")[2]) for key in state if key.startswith("encoder.layers.")}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            for old, new in names.items():
                out[f"{dst}{new}.{kind}"] = state[f"{src}{old}.{kind}"]
    return out


def _copy_configs(source: Path, target: Path) -> None:
    """A config folder: everything of a diffusers folder except the weights."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"), dirs_exist_ok=True)


def write_sd1_single_file(diffusers_dir: Path, file: Path, config_dir: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(diffusers_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(diffusers_dir, subfolder="vae")
    text = CLIPTextModel.from_pretrained(diffusers_dir, subfolder="text_encoder")
    state = unet_to_ldm(unet.state_dict(), dict(unet.config))
    state |= vae_to_ldm(vae.state_dict(), dict(vae.config))
    state |= clip_to_ldm(text.state_dict(), "cond_stage_model.transformer.")
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    _copy_configs(diffusers_dir, config_dir)


def build_tiny_sdxl(folder: Path, seed: int = 7) -> None:
    """A tiny SDXL in diffusers layout: text_time conditioning, two text encoders (the second with a
    projection), linear attention projections, tokenizer_2 padding with '!' as SDXL's does."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from worker.models.tiny import ensure_tiny_checkpoint

    sd1 = ensure_tiny_checkpoint(folder.parent / ".tiny-sd1-source")
    text_config = {
        "vocab_size": 514, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 3,
        "max_position_embeddings": 77, "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=48, attention_head_dim=8, norm_num_groups=16, use_linear_projection=True,
            transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=16 + 6 * 8,
        )
        text_l = CLIPTextModel(CLIPTextConfig(hidden_size=32, **text_config))
        text_g = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=16, projection_dim=16, **text_config))
        vae = AutoencoderKL.from_pretrained(sd1, subfolder="vae")
        vae.register_to_config(scaling_factor=0.13025)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_l.save_pretrained(folder / "text_encoder")
    text_g.save_pretrained(folder / "text_encoder_2")
    CLIPTokenizer.from_pretrained(sd1, subfolder="tokenizer").save_pretrained(folder / "tokenizer")
    CLIPTokenizer.from_pretrained(sd1, subfolder="tokenizer", pad_token="!").save_pretrained(folder / "tokenizer_2")
    shutil.copytree(sd1 / "scheduler", folder / "scheduler", dirs_exist_ok=True)
    index = json.loads((sd1 / "model_index.json").read_text())
    index.update({"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers",
                  "CLIPTextModelWithProjection"], "tokenizer_2": ["transformers", "CLIPTokenizer"]})
    (folder / "model_index.json").write_text(json.dumps(index))


def write_sdxl_single_file(diffusers_dir: Path, file: Path, config_dir: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(diffusers_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(diffusers_dir, subfolder="vae")
    text_l = CLIPTextModel.from_pretrained(diffusers_dir, subfolder="text_encoder")
    text_g = CLIPTextModelWithProjection.from_pretrained(diffusers_dir, subfolder="text_encoder_2")
    state = unet_to_ldm(unet.state_dict(), dict(unet.config))
    state |= vae_to_ldm(vae.state_dict(), dict(vae.config))
    state |= clip_to_ldm(text_l.state_dict(), "conditioner.embedders.0.transformer.")
    state |= clip_g_to_openclip(text_g.state_dict(), "conditioner.embedders.1.model.")
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    _copy_configs(diffusers_dir, config_dir)
