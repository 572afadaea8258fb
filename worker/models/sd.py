"""Stable Diffusion family parts as the nodes see them: MODEL (denoiser), CLIP (text encoder), VAE.

Each wraps a diffusers/transformers module that stays resident on the device; the wrappers add the
ComfyUI semantics around them (sigma-space denoising, prompt weights, latent scaling conventions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from worker.errors import UserError
from worker.models.prompt import chunk_words, parse_weights
from worker.sampling.schedule import DiscreteSchedule


@dataclass(frozen=True)
class Cond:
    """One CONDITIONING entry: token embeddings [1, tokens, dim] plus what some models need besides."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    strength: float = 1.0


@dataclass
class Denoiser:
    """MODEL: a UNet predicting noise (or v) for a noise level sigma, turned into a denoised estimate."""

    unet: Any
    schedule: DiscreteSchedule
    device: torch.device
    dtype: torch.dtype
    name: str
    latent_scale: float = 0.18215  # VAE latents are multiplied by this on the way into sampling

    def __call__(self, x: torch.Tensor, sigma: float, context: torch.Tensor) -> torch.Tensor:
        """Denoised x0 for latents `x` (float32, [B, C, H, W]) at noise level `sigma`."""
        scale = (sigma**2 + 1.0) ** -0.5
        timestep = torch.full((x.shape[0],), self.schedule.timestep(sigma), device=x.device)
        out = self.unet(
            (x * scale).to(self.dtype), timestep, encoder_hidden_states=context.to(self.dtype), return_dict=False
        )[0].float()
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

    def with_layer(self, layer: int) -> TextEncoder:
        return replace(self, layer=layer)

    def _words(self, text: str) -> list[tuple[list[int], float]]:
        words: list[tuple[list[int], float]] = []
        for segment, weight in parse_weights(text):
            for word in segment.replace("\n", " ").split(" "):
                if word:
                    ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
                    words.append((list(ids), weight))
        return words

    def encode(self, text: str) -> Cond:
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
        with torch.inference_mode():
            tokens = torch.tensor(ids, device=self.device)
            out = self.model(tokens, output_hidden_states=self.layer != -1, return_dict=True)
            if self.layer == -1:
                hidden = out.last_hidden_state
            else:
                # transformers >= 5.6 flattened CLIPTextModel (no .text_model); older versions wrap it.
                final_norm = getattr(self.model, "text_model", self.model).final_layer_norm
                hidden = final_norm(out.hidden_states[self.layer])
            hidden = hidden.float()
            pooled = out.pooler_output[0:1].float()
            if weighted:
                empty = hidden[-1]
                w = torch.tensor(weights, device=hidden.device).unsqueeze(-1)
                hidden = torch.where(w != 1.0, (hidden[:-1] - empty) * w + empty, hidden[:-1])
            embeds = hidden.reshape(1, -1, hidden.shape[-1])
        return Cond(embeds=embeds, pooled=pooled)


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
    clip: TextEncoder
    vae: Vae


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path.name} of checkpoint folder {path.parent.name}: {exc}") from exc


def load_diffusers_folder(path: Path, name: str, device: torch.device, dtype: torch.dtype) -> Checkpoint:
    """Load an SD1.x/SD2.x checkpoint saved in diffusers' folder layout (model_index.json + parts)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    index = _read_json(path / "model_index.json")
    if "text_encoder_2" in index or "transformer" in index:
        raise UserError(
            f"checkpoint {name!r}: {index.get('_class_name', 'this pipeline')} folders are not supported yet; "
            "supported: Stable Diffusion 1.x/2.x in diffusers layout"
        )
    missing = [part for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (path / part).is_dir()]
    if missing:
        raise UserError(f"checkpoint {name!r} is missing the folder(s) {', '.join(missing)}")
    common = {"local_files_only": True, "torch_dtype": dtype}
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **common)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **common)
    text_model = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **common)
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    for module in (unet, vae, text_model):
        module.to(device).eval().requires_grad_(False)

    sched = _read_json(path / "scheduler" / "scheduler_config.json")
    schedule = DiscreteSchedule.from_betas(
        beta_start=sched.get("beta_start", 0.00085),
        beta_end=sched.get("beta_end", 0.012),
        beta_schedule=sched.get("beta_schedule", "scaled_linear"),
        timesteps=sched.get("num_train_timesteps", 1000),
        prediction=sched.get("prediction_type", "epsilon"),
    )
    vae_scale = float(vae.config.get("scaling_factor", 0.18215))
    downscale = 2 ** (len(vae.config["block_out_channels"]) - 1)
    return Checkpoint(
        name=name,
        model=Denoiser(
            unet=unet, schedule=schedule, device=device, dtype=dtype, name=name, latent_scale=vae_scale
        ),
        clip=TextEncoder(
            tokenizer=tokenizer,
            model=text_model,
            device=device,
            chunk_len=min(int(tokenizer.model_max_length), text_model.config.max_position_embeddings),
        ),
        vae=Vae(model=vae, device=device, dtype=dtype, scale=vae_scale, downscale=downscale),
    )
