"""Tiny Flux.1 files in the layouts ComfyUI users have: the transformer in BFL's original layout
(double_blocks/single_blocks), CLIP-L and T5 in transformers' layout, the 16-channel VAE in the original layout,
and a config folder like FLUX.1-schnell's (configs and tokenizers, no weights).

`flux_to_bfl` inverts diffusers' convert_flux_transformer_checkpoint_to_diffusers; a round-trip test checks that
the worker's loading (diffusers' converter) restores exactly the weights the file was written from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

TRANSFORMER = {
    "patch_size": 1, "in_channels": 64, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 16,
    "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": [4, 6, 6],
}
T5 = {
    "vocab_size": 40, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
    "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16, "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}
_RENAMES = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
_DOUBLE = {
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2", "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
}
_NORMS = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
          "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first])


def flux_to_bfl(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """diffusers' FluxTransformer2DModel state -> BFL's original names (fused qkv, fused single-block linear1,
    AdaLayerNormContinuous's (scale, shift) -> (shift, scale))."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        return state.pop(key)

    for kind in ("weight", "bias"):
        for new, old in _RENAMES.items():
            if f"{new}.{kind}" in state:
                out[f"{old}.{kind}"] = take(f"{new}.{kind}")
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(take(f"norm_out.linear.{kind}"))
    doubles = {int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")}
    for i in sorted(doubles):
        src, dst = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for kind in ("weight", "bias"):
            for new, old in _DOUBLE.items():
                out[f"{dst}{old}.{kind}"] = take(f"{src}{new}.{kind}")
            out[f"{dst}img_attn.qkv.{kind}"] = torch.cat([take(f"{src}attn.to_{p}.{kind}") for p in "qkv"])
            out[f"{dst}txt_attn.qkv.{kind}"] = torch.cat([take(f"{src}attn.add_{p}_proj.{kind}") for p in "qkv"])
        for new, old in _NORMS.items():
            out[f"{dst}{old}.scale"] = take(f"{src}{new}.weight")
    singles = {int(k.split(".")[1]) for k in state if k.startswith("single_transformer_blocks.")}
    for i in sorted(singles):
        src, dst = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}modulation.lin.{kind}"] = take(f"{src}norm.linear.{kind}")
            parts = [take(f"{src}attn.to_{p}.{kind}") for p in "qkv"] + [take(f"{src}proj_mlp.{kind}")]
            out[f"{dst}linear1.{kind}"] = torch.cat(parts)
            out[f"{dst}linear2.{kind}"] = take(f"{src}proj_out.{kind}")
        out[f"{dst}norm.query_norm.scale"] = take(f"{src}attn.norm_q.weight")
        out[f"{dst}norm.key_norm.scale"] = take(f"{src}attn.norm_k.weight")
    assert not state, f"unmapped: {sorted(state)}"
    return {prefix + key: value.contiguous() for key, value in out.items()}


def tiny_flux_transformer(guidance: bool, seed: int = 5, **overrides: Any) -> Any:
    from diffusers import FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FluxTransformer2DModel(**{**TRANSFORMER, "guidance_embeds": guidance, **overrides})
        # diffusers zero-initializes some output layers; random weights make every input matter.
        for param in model.parameters():
            torch.nn.init.normal_(param, std=0.2)
    return model


def _t5_tokenizer(folder: Path) -> None:
    """A T5-style tokenizer (sentencepiece-like Unigram over single letters, Metaspace) built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [(c, -3.0) for c in letters]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(folder)


def write_tiny_flux(root: Path, sd_source: Path) -> dict[str, Any]:
    """Under `root`: unet/ (dev, with ComfyUI's model.diffusion_model. prefix), diffusion_models/ (schnell),
    clip/clip_l, text_encoders/t5, vae/ae, configs/tiny-flux. `sd_source` is the tiny SD folder whose text
    encoder and tokenizer serve as CLIP-L. Returns the diffusers modules the files were written from."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from worker.models.ldm_names import vae_to_ldm

    for name in ("unet", "diffusion_models", "clip", "text_encoders", "vae", "configs/tiny-flux"):
        (root / name).mkdir(parents=True, exist_ok=True)
    config = root / "configs" / "tiny-flux"
    dev, schnell = tiny_flux_transformer(True, seed=5), tiny_flux_transformer(False, seed=6)
    save_file(flux_to_bfl(dev.state_dict(), prefix="model.diffusion_model."), str(root / "unet" / "flux-tiny-dev.sft"))
    save_file(flux_to_bfl(schnell.state_dict()), str(root / "diffusion_models" / "flux-tiny-schnell.safetensors"))
    schnell.save_config(config / "transformer")  # the baked configs are schnell's: guidance comes from the file

    clip = CLIPTextModel.from_pretrained(sd_source, subfolder="text_encoder")
    clip_state = {"text_model." + k.removeprefix("text_model."): v.contiguous() for k, v in clip.state_dict().items()}
    save_file(clip_state, str(root / "clip" / "clip_l.safetensors"))
    clip.config.save_pretrained(config / "text_encoder")
    from transformers import CLIPTokenizer

    CLIPTokenizer.from_pretrained(sd_source, subfolder="tokenizer").save_pretrained(config / "tokenizer")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(8)
        t5 = T5EncoderModel(T5Config(**T5))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(16, 16, 32, 32), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=16, norm_num_groups=8, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
            scaling_factor=0.3611, shift_factor=0.1159,
        )
    t5_state = {k: v.contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(t5_state, str(root / "text_encoders" / "t5-tiny.sft"))  # tied to shared.weight
    t5.config.save_pretrained(config / "text_encoder_2")
    _t5_tokenizer(config / "tokenizer_2")
    bare = {k.removeprefix("first_stage_model."): v.contiguous()
            for k, v in vae_to_ldm(vae.state_dict(), dict(vae.config)).items()}
    save_file(bare, str(root / "vae" / "ae-tiny.safetensors"))
    vae.save_config(config / "vae")
    (config / "scheduler").mkdir(exist_ok=True)
    (config / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0, "use_dynamic_shifting": False}))
    (config / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    }))
    return {"dev": dev, "schnell": schnell, "t5": t5, "vae": vae, "clip": clip}


def flux_workflow(
    *, unet: str = "flux-tiny-dev.sft", clip_l: str = "clip_l.safetensors", t5: str = "t5-tiny.sft",
    vae: str = "ae-tiny.safetensors", seed: int = 1, steps: int = 3, width: int = 64, height: int = 48,
    guidance: float | None = 3.5, sampler: str = "euler", scheduler: str = "simple", prompt: str = "a red cube",
    clip_type: str = "flux", weight_dtype: str = "default",
) -> dict[str, Any]:
    """ComfyUI's Flux default graph (API format) at test size; guidance None leaves out FluxGuidance."""
    graph: dict[str, Any] = {
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["11", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["10", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
        "10": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": t5, "clip_name2": clip_l, "type": clip_type}},
        "12": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": weight_dtype}},
        "13": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0,
            "model": ["12", 0], "positive": ["26", 0] if guidance is not None else ["6", 0], "negative": ["33", 0],
            "latent_image": ["27", 0]}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "33": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["11", 0]}},
    }
    if guidance is not None:
        graph["26"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": guidance}}
    return graph
