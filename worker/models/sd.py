"""Stable Diffusion family parts as the nodes see them: MODEL (denoiser), CLIP (text encoder), VAE.

Each wraps a diffusers/transformers module that stays resident on the device; the wrappers add the
ComfyUI semantics around them (sigma-space denoising, prompt weights, latent scaling conventions).
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from worker.errors import UserError
from worker.models import lora, text_cache
from worker.models.prompt import chunk_words, parse_weights
from worker.sampling.capture import UNetRunner
from worker.sampling.schedule import DiscreteSchedule


@functools.lru_cache(maxsize=32)
def _size_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's size conditioning, made once per size: a fresh tensor from a Python list every step would be a
    blocking host-to-device copy inside the sampler loop."""
    return torch.tensor([height, width, 0, 0, height, width], device=device, dtype=dtype)


@dataclass(frozen=True)
class Cond:
    """One CONDITIONING entry: token embeddings [1, tokens, dim] plus what some models need besides."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    strength: float = 1.0
    # ConditioningSetArea: (height, width, y, x) in latent pixels, as ComfyUI's "area"; None: the whole image.
    area: tuple[int, int, int, int] | None = None
    # FluxGuidance: the distilled guidance a Flux dev model is conditioned on; None: the model's default.
    guidance: float | None = None


@dataclass
class Denoiser:
    """MODEL: a UNet predicting noise (or v) for a noise level sigma, turned into a denoised estimate."""

    unet: Any
    schedule: DiscreteSchedule
    device: torch.device
    dtype: torch.dtype
    name: str
    latent_scale: float = 0.18215  # VAE latents are multiplied by this on the way into sampling
    family: str = "sd1"  # "sdxl" adds pooled text and size conditioning
    vae_factor: int = 8
    # LoRAs (file, strength) merged into the UNet while a sampler runs (see patched()).
    patches: tuple[tuple[lora.LoraFile, float], ...] = ()
    # How the UNet is called: eagerly, or replayed from captured CUDA graphs (DENOISER_CAPTURE).
    runner: UNetRunner | None = None

    def __post_init__(self) -> None:
        if self.runner is None:
            self.runner = UNetRunner(self.unet)

    def with_lora(self, file: lora.LoraFile, strength: float) -> Denoiser:
        if lora.matched(self.unet, "unet", file, dict(self.unet.config)) == 0:
            raise UserError(f"LoRA {file.name!r} matches no layer of this {self.family} model")
        return replace(self, patches=(*self.patches, (file, strength)))

    def patched(self) -> contextlib.AbstractContextManager[None]:
        """The UNet with this MODEL's LoRAs merged in, restored on exit."""
        return lora.applied(self.unet, "unet", self.patches, dict(self.unet.config))

    def __call__(
        self,
        x: torch.Tensor,
        sigma: float,
        context: torch.Tensor,
        pooled: torch.Tensor | None = None,
        latent_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Denoised x0 for latents `x` (float32, [B, C, H, W]) at noise level `sigma`; `context` and `pooled`
        hold one row per row of `x`."""
        scale = (sigma**2 + 1.0) ** -0.5
        timestep = torch.full((x.shape[0],), self.schedule.timestep(sigma), device=x.device)
        extra = None
        if self.family == "sdxl":
            if pooled is None:
                raise UserError("an SDXL model needs conditioning from an SDXL text encoder (pooled output missing)")
            # ComfyUI's defaults: original and target size = the whole latent's pixel size (also when `x` is
            # an area crop of it), no crop.
            rows, cols = latent_size or (x.shape[2], x.shape[3])
            height, width = rows * self.vae_factor, cols * self.vae_factor
            time_ids = _size_ids(height, width, x.device, self.dtype)
            extra = {"text_embeds": pooled.to(self.dtype), "time_ids": time_ids.expand(x.shape[0], -1)}
        assert self.runner is not None
        out = self.runner((x * scale).to(self.dtype), timestep, context.to(self.dtype), extra).float()
        if self.schedule.prediction == "v_prediction":
            return x * (scale**2) - out * sigma * scale
        return x - out * sigma


@dataclass
class TextEncoder:
    """CLIP: tokenizer + CLIP text model; `layer` is -1 for the last layer, -2 for 'clip skip 2'..."""

    tokenizer: Any
    model: Any
    device: torch.device
    layer: int = -1
    chunk_len: int = 77
    # SD1 applies the final layer norm to an earlier layer's output ("clip skip"); SDXL's encoders do not.
    norm_hidden: bool = True
    lora_component: str = "te1"  # how LoRA files address this encoder ("te2" for SDXL's CLIP-G)
    patches: tuple[tuple[lora.LoraFile, float], ...] = ()

    def with_layer(self, layer: int) -> TextEncoder:
        return replace(self, layer=layer)

    def lora_matches(self, file: lora.LoraFile) -> int:
        return lora.matched(self.model, self.lora_component, file, None)

    def with_lora(self, file: lora.LoraFile, strength: float) -> TextEncoder:
        return replace(self, patches=(*self.patches, (file, strength)))

    def _words(self, text: str) -> list[tuple[list[int], float]]:
        words: list[tuple[list[int], float]] = []
        for segment, weight in parse_weights(text):
            for word in segment.replace("\n", " ").split(" "):
                if word:
                    ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
                    words.append((list(ids), weight))
        return words

    def encode(self, text: str) -> Cond:
        key = (text, self.layer, self.norm_hidden, self.chunk_len, text_cache.patches_key(self.patches))
        return text_cache.cached(self.model, key, lambda: self._encode(text))

    def _encode(self, text: str) -> Cond:
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        chunks = chunk_words(self._words(text), chunk_len=self.chunk_len - 2)
        ids, weights = [], []
        for chunk in chunks:
            row = [bos] + [t for t, _ in chunk] + [eos]
            row_w = [1.0] + [w for _, w in chunk] + [1.0]
            ids.append(row + [pad] * (self.chunk_len - len(row)))
            weights.append(row_w + [1.0] * (self.chunk_len - len(row_w)))
        weighted = any(w != 1.0 for row in weights for w in row)
        if weighted:  # weights scale each token's distance from the empty prompt's embedding
            ids.append([bos, eos] + [pad] * (self.chunk_len - 2))
        with torch.inference_mode(), lora.applied(self.model, self.lora_component, self.patches):
            tokens = torch.tensor(ids, device=self.device)
            out = self.model(tokens, output_hidden_states=self.layer != -1, return_dict=True)
            if self.layer == -1:
                hidden = out.last_hidden_state
            else:
                # transformers >= 5.6 flattened CLIPTextModel (no .text_model); older versions wrap it.
                hidden = out.hidden_states[self.layer]
                if self.norm_hidden:
                    hidden = getattr(self.model, "text_model", self.model).final_layer_norm(hidden)
            hidden = hidden.float()
            # CLIP-G (SDXL) projects the end token's state; plain CLIP's pooled output is unused by SD1.
            pooled = getattr(out, "text_embeds", None)
            pooled = (pooled if pooled is not None else out.pooler_output)[0:1].float()
            if weighted:
                empty = hidden[-1]
                w = torch.tensor(weights, device=hidden.device).unsqueeze(-1)
                hidden = torch.where(w != 1.0, (hidden[:-1] - empty) * w + empty, hidden[:-1])
            embeds = hidden.reshape(1, -1, hidden.shape[-1])
        return Cond(embeds=embeds, pooled=pooled)


@dataclass
class DualTextEncoder:
    """SDXL's CLIP: CLIP-L and OpenCLIP-G side by side; their token embeddings are concatenated (768 + 1280
    features in the real models) and the pooled output comes from G, as ComfyUI does."""

    clip_l: TextEncoder
    clip_g: TextEncoder

    def with_layer(self, layer: int) -> DualTextEncoder:
        return DualTextEncoder(self.clip_l.with_layer(layer), self.clip_g.with_layer(layer))

    def lora_matches(self, file: lora.LoraFile) -> int:
        return self.clip_l.lora_matches(file) + self.clip_g.lora_matches(file)

    def with_lora(self, file: lora.LoraFile, strength: float) -> DualTextEncoder:
        return DualTextEncoder(self.clip_l.with_lora(file, strength), self.clip_g.with_lora(file, strength))

    def encode(self, text: str) -> Cond:
        low, high = self.clip_l.encode(text), self.clip_g.encode(text)
        return Cond(embeds=torch.cat([low.embeds, high.embeds], dim=-1), pooled=high.pooled)


@dataclass
class Vae:
    """VAE: pixels [B, H, W, 3] in 0..1 <-> latents [B, 4, H/8, W/8] in the VAE's own (unscaled) space,
    as ComfyUI keeps them; `scale` (0.18215 for SD1) is applied by the sampler."""

    model: Any
    device: torch.device
    dtype: torch.dtype
    scale: float
    downscale: int

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels[..., :3].movedim(-1, 1).to(self.device, self.dtype) * 2.0 - 1.0
        with torch.inference_mode():
            # The distribution's mean, not a sample: encoding the same image twice gives the same latent.
            return self.model.encode(x).latent_dist.mode().float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = self.model.decode(latents.to(self.device, self.dtype), return_dict=False)[0]
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).cpu()


@dataclass
class Checkpoint:
    name: str
    model: Denoiser
    clip: TextEncoder | DualTextEncoder
    vae: Vae


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path.name} of checkpoint folder {path.parent.name}: {exc}") from exc


def _schedule(config: dict[str, Any]) -> DiscreteSchedule:
    return DiscreteSchedule.from_betas(
        beta_start=config.get("beta_start", 0.00085),
        beta_end=config.get("beta_end", 0.012),
        beta_schedule=config.get("beta_schedule", "scaled_linear"),
        timesteps=config.get("num_train_timesteps", 1000),
        prediction=config.get("prediction_type", "epsilon"),
    )


def vae_dtype_for(family: str, dtype: torch.dtype) -> torch.dtype:
    """SDXL's VAE overflows in fp16 (NaN images); bf16 has fp32's range at fp16's cost. A standalone VAE
    ("any") may be SDXL's, so it gets bf16 too."""
    return torch.bfloat16 if family in ("sdxl", "any") and dtype == torch.float16 else dtype


def assemble(
    name: str,
    family: str,
    parts: dict[str, Any],
    scheduler_config: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
) -> Checkpoint:
    """Wrap loaded modules (unet, vae, text_encoder, tokenizer, and for SDXL text_encoder_2, tokenizer_2)
    into the MODEL/CLIP/VAE objects, moved to the device once."""
    unet, vae = parts["unet"], parts["vae"]
    unet.to(device, dtype)
    vae.to(device, vae_dtype_for(family, dtype))
    encoders = []
    for model_key, tokenizer_key in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        if model_key not in parts:
            continue
        text_model, tokenizer = parts[model_key].to(device, dtype), parts[tokenizer_key]
        encoders.append(
            TextEncoder(
                tokenizer=tokenizer,
                model=text_model,
                device=device,
                chunk_len=min(int(tokenizer.model_max_length), text_model.config.max_position_embeddings),
                # ComfyUI's SDXL encoders read the penultimate layer without the final norm.
                layer=-2 if family == "sdxl" else -1,
                norm_hidden=family != "sdxl",
                lora_component="te2" if model_key == "text_encoder_2" else "te1",
            )
        )
    for module in (unet, vae, *(e.model for e in encoders)):
        module.eval().requires_grad_(False)
    clip: TextEncoder | DualTextEncoder = encoders[0] if family != "sdxl" else DualTextEncoder(*encoders)
    vae_scale = float(vae.config.get("scaling_factor", 0.18215))
    downscale = 2 ** (len(vae.config["block_out_channels"]) - 1)
    return Checkpoint(
        name=name,
        model=Denoiser(
            unet=unet, schedule=_schedule(scheduler_config), device=device, dtype=dtype, name=name,
            latent_scale=vae_scale, family=family, vae_factor=downscale,
        ),
        clip=clip,
        vae=Vae(model=vae, device=device, dtype=vae_dtype_for(family, dtype), scale=vae_scale, downscale=downscale),
    )


def load_diffusers_folder(path: Path, name: str, device: torch.device, dtype: torch.dtype) -> Checkpoint:
    """An SD1.x or SDXL checkpoint in diffusers' folder layout (model_index.json + one folder per part)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from worker.models.single_file import read_device

    index = _read_json(path / "model_index.json")
    if "transformer" in index or "unet" not in index:
        raise UserError(
            f"checkpoint {name!r}: {index.get('_class_name', 'this pipeline')} folders are not supported yet; "
            "supported: Stable Diffusion 1.x and SDXL in diffusers layout"
        )
    family = "sdxl" if "text_encoder_2" in index else "sd1"
    needed = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
    needed += ["text_encoder_2", "tokenizer_2"] if family == "sdxl" else []
    missing = [part for part in needed if not (path / part).is_dir()]
    if missing:
        raise UserError(f"checkpoint {name!r} is missing the folder(s) {', '.join(missing)}")
    # Weights go from the files straight to their device (safetensors reads each tensor there).
    common = {"local_files_only": True, "torch_dtype": dtype, "device_map": str(read_device(path, device))}
    parts: dict[str, Any] = {
        "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet", **common),
        "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", **common),
        "text_encoder": CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **common),
        "tokenizer": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True),
    }
    if family == "sdxl":
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            path, subfolder="text_encoder_2", **common
        )
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", local_files_only=True)
    return assemble(name, family, parts, _read_json(path / "scheduler" / "scheduler_config.json"), device, dtype)


def load_single_file(
    path: Path, name: str, config_dirs: list[Path], device: torch.device, dtype: torch.dtype
) -> Checkpoint:
    """An SD1.x or SDXL checkpoint as one file in the original layout (what civitai and ComfyUI use)."""
    from transformers import CLIPTokenizer

    from worker.models import single_file as sf

    state = sf.read_state_dict(path, sf.read_device(path, device))
    family = sf.detect_family(state)
    config = sf.find_config(family, state, config_dirs)
    unet, vae = sf.load_unet_and_vae(state, config, dtype)
    parts: dict[str, Any] = {"unet": unet, "vae": vae}
    parts["tokenizer"] = CLIPTokenizer.from_pretrained(config, subfolder="tokenizer", local_files_only=True)
    if family == "sdxl":
        parts["text_encoder"] = sf.load_clip_l(state, sf.SDXL_CLIP_L_PREFIX, config / "text_encoder")
        parts["text_encoder_2"] = sf.load_clip_g(state, sf.SDXL_CLIP_G_PREFIX, config / "text_encoder_2")
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(config, subfolder="tokenizer_2", local_files_only=True)
    else:
        parts["text_encoder"] = sf.load_clip_l(state, sf.SD1_CLIP_PREFIX, config / "text_encoder")
    del state
    return assemble(name, family, parts, _read_json(config / "scheduler" / "scheduler_config.json"), device, dtype)
