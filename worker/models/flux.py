"""Flux.1 (dev, schnell) from ComfyUI's split files: the transformer (`models/unet` or `models/diffusion_models`,
original BFL layout), CLIP-L and T5-XXL (`models/clip` or `models/text_encoders`, transformers' layout) and the
16-channel VAE (`models/vae`, through VAELoader).

Architecture configs and tokenizers come from a config folder in `models/configs/` (a diffusers FLUX.1 folder
without weights) whose shapes match the files. The sampling follows ComfyUI: rectified flow (CONST) with
ModelSamplingFlux (dev: shift 1.15 over a 10000-entry table) or ModelSamplingDiscreteFlow (schnell: shift 1.0,
multiplier 1.0, 1000 entries), latent format Flux (scale 0.3611, shift 0.1159), guidance from FluxGuidance
(default 3.5), 2x2 patches with circular padding, the pooled CLIP-L output and T5's hidden states.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from worker.errors import UserError
from worker.models import lora, text_cache
from worker.models.prompt import parse_weights
from worker.models.sd import Cond, TextEncoder

UNET_PREFIX = "model.diffusion_model."
# comfy/latent_formats.py Flux
LATENT_SCALE = 0.3611
LATENT_SHIFT = 0.1159
DEFAULT_GUIDANCE = 3.5  # comfy/model_base.py Flux.extra_conds: guidance when no FluxGuidance node set one
DEV_SHIFT = 1.15  # comfy/model_sampling.py ModelSamplingFlux default (supported_models.Flux has no setting)
T5_MIN_LENGTH = 256  # comfy/text_encoders/flux.py T5XXLTokenizer(min_length=256), no maximum
# diffusers' convert_flux_transformer_checkpoint_to_diffusers splits single blocks' linear1 with these widths.
_DIFFUSERS_INNER_DIM = 3072
_DIFFUSERS_MLP_DIM = 4 * _DIFFUSERS_INNER_DIM
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")


# --- noise schedule ------------------------------------------------------------------------------------


def _flux_time_shift(mu: float, sigma: float, t: torch.Tensor) -> torch.Tensor:
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def _time_snr_shift(alpha: float, t: torch.Tensor) -> torch.Tensor:
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


@dataclass(frozen=True)
class FlowSchedule:
    """A rectified-flow model's noise levels, with DiscreteSchedule's interface so ComfyUI's schedulers
    (schedule.py) run over it unchanged: `sigmas` (float32, increasing), sigma_min/sigma_max, timestep(sigma)
    and sigma(timestep). `kind` "flux" is ComfyUI's ModelSamplingFlux (timestep = sigma, sigma(t) =
    flux_time_shift(shift, 1, t)); "discrete_flow" its ModelSamplingDiscreteFlow (timestep = sigma * multiplier,
    sigma(t) = time_snr_shift(shift, t / multiplier))."""

    sigmas: torch.Tensor
    kind: str
    shift: float
    multiplier: float = 1.0
    prediction: str = "flow"

    @classmethod
    def flux(cls, shift: float = DEV_SHIFT, timesteps: int = 10000) -> FlowSchedule:
        t = torch.arange(1, timesteps + 1, 1) / timesteps
        return cls(sigmas=_flux_time_shift(shift, 1.0, t), kind="flux", shift=shift)

    @classmethod
    def discrete_flow(cls, shift: float = 1.0, multiplier: float = 1000, timesteps: int = 1000) -> FlowSchedule:
        t = (torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier
        return cls(sigmas=_time_snr_shift(shift, t / multiplier), kind="discrete_flow", shift=shift,
                   multiplier=multiplier)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: float) -> float:
        return sigma if self.kind == "flux" else sigma * self.multiplier

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        if self.kind == "flux":
            return _flux_time_shift(self.shift, 1.0, timestep)
        return _time_snr_shift(self.shift, timestep / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        """The sigma `percent` of the way through sampling (0: pure noise, sigma 1), as ComfyUI's."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        t = 1.0 - percent
        return float(_flux_time_shift(self.shift, 1.0, t) if self.kind == "flux" else _time_snr_shift(self.shift, t))


# --- MODEL ---------------------------------------------------------------------------------------------


@dataclass
class FluxDenoiser:
    """MODEL: a Flux transformer predicting the flow velocity v; denoised = x - sigma * v (ComfyUI's CONST)."""

    transformer: Any
    schedule: FlowSchedule
    device: torch.device
    dtype: torch.dtype
    name: str
    family: str = "flux-dev"  # or "flux-schnell" (no guidance embedding)
    latent_scale: float = LATENT_SCALE
    latent_shift: float = LATENT_SHIFT
    default_guidance: float | None = DEFAULT_GUIDANCE  # None: the model has no guidance input
    vae_factor: int = 8
    patch: int = 2
    # LoRAs (file, strength) merged into the transformer while a sampler runs.
    patches: tuple[tuple[lora.LoraFile, float], ...] = ()

    def with_lora(self, file: lora.LoraFile, strength: float) -> FluxDenoiser:
        if lora.matched(self.transformer, "transformer", file, None) == 0:
            raise UserError(f"LoRA {file.name!r} matches no layer of this {self.family} model")
        return replace(self, patches=(*self.patches, (file, strength)))

    def patched(self) -> contextlib.AbstractContextManager[None]:
        """The transformer with this MODEL's LoRAs merged in, restored on exit."""
        return lora.applied(self.transformer, "transformer", self.patches)

    # ComfyUI's latent format and CONST noise scaling.
    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.latent_shift) * self.latent_scale

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.latent_scale + self.latent_shift

    @staticmethod
    def noise_scaling(sigma: float, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return sigma * noise + (1.0 - sigma) * latent

    @staticmethod
    def inverse_noise_scaling(sigma: float, latent: torch.Tensor) -> torch.Tensor:
        return latent / (1.0 - sigma)

    def __call__(
        self,
        x: torch.Tensor,
        sigma: float,
        context: torch.Tensor,
        pooled: torch.Tensor | None = None,
        latent_size: tuple[int, int] | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        config = self.transformer.config
        if pooled is None or pooled.shape[-1] != config.pooled_projection_dim:
            raise UserError("a Flux model needs conditioning from a Flux CLIP (DualCLIPLoader type 'flux'): "
                            f"pooled CLIP-L output of width {config.pooled_projection_dim} missing")
        if context.shape[-1] != config.joint_attention_dim:
            raise UserError(f"a Flux model needs T5 text embeddings of width {config.joint_attention_dim}, got "
                            f"{context.shape[-1]} (use DualCLIPLoader type 'flux')")
        batch, channels, height, width = x.shape
        p = self.patch
        pad_h, pad_w = (-height) % p, (-width) % p
        # ComfyUI's pad_to_patch_size: circular padding up to whole patches, cut off again afterwards.
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="circular") if pad_h or pad_w else x
        rows, cols = padded.shape[2] // p, padded.shape[3] // p
        tokens = padded.reshape(batch, channels, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        tokens = tokens.reshape(batch, rows * cols, channels * p * p)
        img_ids = torch.zeros(rows, cols, 3, device=x.device)
        img_ids[..., 1] = torch.arange(rows, device=x.device, dtype=torch.float32)[:, None]
        img_ids[..., 2] = torch.arange(cols, device=x.device, dtype=torch.float32)[None, :]
        txt_ids = torch.zeros(context.shape[1], 3, device=x.device)
        timestep = torch.full((batch,), self.schedule.timestep(sigma), device=x.device)
        if self.default_guidance is None:
            guidance = None
        elif guidance is None:
            guidance = torch.full((batch,), self.default_guidance, device=x.device)
        out = self.transformer(
            hidden_states=tokens.to(self.dtype),
            encoder_hidden_states=context.to(self.dtype),
            pooled_projections=pooled.to(self.dtype),
            timestep=timestep,
            img_ids=img_ids.reshape(rows * cols, 3),
            txt_ids=txt_ids,
            guidance=None if guidance is None else guidance.to(x.device, torch.float32),
            return_dict=False,
        )[0].float()
        out = out.reshape(batch, rows, cols, channels, p, p).permute(0, 3, 1, 4, 2, 5)
        out = out.reshape(batch, channels, rows * p, cols * p)[:, :, :height, :width]
        return x - out * sigma


# --- CLIP ----------------------------------------------------------------------------------------------


@dataclass
class T5Encoder:
    """T5-XXL as ComfyUI's Flux uses it: no start token, an end token, padded to at least 256 tokens, no
    attention mask, no length limit; (word:1.2) weights as for CLIP (distance from the empty prompt)."""

    tokenizer: Any
    model: Any
    device: torch.device
    min_length: int = T5_MIN_LENGTH

    def encode(self, text: str) -> Cond:
        return text_cache.cached(self.model, (text, self.min_length), lambda: self._encode(text))

    def _encode(self, text: str) -> Cond:
        tokens: list[tuple[int, float]] = []
        for segment, weight in parse_weights(text):
            for word in segment.replace("\n", " ").split(" "):
                if word:
                    ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
                    tokens += [(int(t), weight) for t in ids]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        length = max(len(tokens) + 1, self.min_length)
        ids = [t for t, _ in tokens] + [eos]
        weights = [w for _, w in tokens] + [1.0]
        rows = [ids + [pad] * (length - len(ids))]
        weights += [1.0] * (length - len(weights))
        weighted = any(w != 1.0 for w in weights)
        if weighted:
            rows.append([eos] + [pad] * (length - 1))
        with torch.inference_mode():
            hidden = self.model(torch.tensor(rows, device=self.device)).last_hidden_state.float()
            if weighted:
                empty = hidden[-1]
                w = torch.tensor(weights, device=hidden.device).unsqueeze(-1)
                hidden = torch.where(w != 1.0, (hidden[0] - empty) * w + empty, hidden[0])[None]
        return Cond(embeds=hidden[0:1])


@dataclass
class FluxTextEncoder:
    """Flux's CLIP: T5's hidden states are the text tokens, CLIP-L's pooled output the vector input."""

    clip_l: TextEncoder
    t5: T5Encoder

    def with_layer(self, layer: int) -> FluxTextEncoder:
        return replace(self, clip_l=self.clip_l.with_layer(layer))

    def lora_matches(self, file: lora.LoraFile) -> int:
        return self.clip_l.lora_matches(file)  # Flux LoRAs train CLIP-L at most, never T5

    def with_lora(self, file: lora.LoraFile, strength: float) -> FluxTextEncoder:
        return replace(self, clip_l=self.clip_l.with_lora(file, strength))

    def encode_pair(self, clip_l_text: str, t5_text: str) -> Cond:
        return Cond(embeds=self.t5.encode(t5_text).embeds, pooled=self.clip_l.encode(clip_l_text).pooled)

    def encode(self, text: str) -> Cond:
        return self.encode_pair(text, text)


# --- loading -------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def strip_unet_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(key.startswith(UNET_PREFIX) for key in state):
        return {key.removeprefix(UNET_PREFIX): value for key, value in state.items() if key.startswith(UNET_PREFIX)}
    return state


def _describe(state: dict[str, torch.Tensor]) -> str:
    if any(key.startswith(UNET_PREFIX + "input_blocks.") or key.startswith("input_blocks.") for key in state):
        return "a Stable Diffusion UNet (load SD checkpoints with CheckpointLoaderSimple)"
    if any("joint_blocks." in key for key in state):
        return "an SD3 transformer (not supported yet)"
    if any("encoder.block." in key or "embeddings.token_embedding" in key for key in state):
        return "a text encoder (load it with DualCLIPLoader or CLIPLoader)"
    if any(key.startswith("encoder.conv_in") or key.startswith("decoder.conv_in") for key in state):
        return "a VAE (load it with VAELoader)"
    return "an unrecognized layout"


@dataclass(frozen=True)
class FluxShape:
    inner: int
    in_channels: int
    context: int
    pooled: int
    layers: int
    single_layers: int
    guidance: bool


def flux_shape(state: dict[str, torch.Tensor], name: str) -> FluxShape:
    """The architecture of a Flux transformer in BFL's layout, or a UserError naming what the file is."""
    needed = ("img_in.weight", "txt_in.weight", "vector_in.in_layer.weight", "double_blocks.0.img_attn.qkv.weight",
              "single_blocks.0.linear1.weight", "final_layer.linear.weight")
    if not all(key in state for key in needed):
        raise UserError(f"{name} is not a Flux transformer: it looks like {_describe(state)}; UNETLoader loads "
                        "Flux.1 dev/schnell transformers (double_blocks/single_blocks)")

    def count(prefix: str) -> int:
        return len({key.split(".")[1] for key in state if key.startswith(prefix)})

    return FluxShape(
        inner=int(state["img_in.weight"].shape[0]),
        in_channels=int(state["img_in.weight"].shape[1]),
        context=int(state["txt_in.weight"].shape[1]),
        pooled=int(state["vector_in.in_layer.weight"].shape[1]),
        layers=count("double_blocks."),
        single_layers=count("single_blocks."),
        guidance="guidance_in.in_layer.weight" in state,
    )


def find_flux_config(shape: FluxShape, config_dirs: list[Path]) -> Path:
    """The first config folder whose transformer has this file's shapes (guidance is taken from the file, so
    FLUX.1-schnell's configs serve dev files too)."""
    for folder in config_dirs:
        config = _read_json(folder / "transformer" / "config.json")
        if not config or config.get("_class_name") != "FluxTransformer2DModel":
            continue
        if (
            config.get("num_attention_heads", 0) * config.get("attention_head_dim", 0) == shape.inner
            and config.get("in_channels") == shape.in_channels
            and config.get("joint_attention_dim") == shape.context
            and config.get("pooled_projection_dim") == shape.pooled
            and config.get("num_layers") == shape.layers
            and config.get("num_single_layers") == shape.single_layers
        ):
            return folder
    names = ", ".join(f.name for f in config_dirs) or "none"
    raise UserError(
        f"no config folder in models/configs matches this Flux transformer (width {shape.inner}, "
        f"{shape.layers}+{shape.single_layers} blocks, text width {shape.context}); found: {names}. "
        "Bake FLUX.1's configs into the image with --configs flux-schnell (or put the folder there)."
    )


def flux_transformer_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BFL's layout -> diffusers' FluxTransformer2DModel names, by diffusers' own converter.

    The converter hard-codes Flux.1's width (3072) where it splits a single block's fused linear1 into
    q, k, v and the MLP input; for another width each part is zero-padded to those sizes first and cut back
    after. For Flux.1 files nothing is padded: the converter runs as it is."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    state = dict(strip_unet_prefix(state))  # the converter pops from the dict it gets
    inner = int(state["img_in.weight"].shape[0])
    widths: dict[int, int] = {}
    if inner != _DIFFUSERS_INNER_DIM:
        for key in [k for k in state if k.startswith("single_blocks.") and ".linear1." in k]:
            mlp = state[key].shape[0] - 3 * inner
            if inner > _DIFFUSERS_INNER_DIM or mlp > _DIFFUSERS_MLP_DIM or mlp <= 0:
                raise UserError(f"unsupported Flux transformer width {inner}")
            parts = torch.split(state[key], (inner, inner, inner, mlp))
            sizes = (_DIFFUSERS_INNER_DIM,) * 3 + (_DIFFUSERS_MLP_DIM,)
            state[key] = torch.cat([
                torch.cat([part, part.new_zeros((size - part.shape[0], *part.shape[1:]))])
                for part, size in zip(parts, sizes, strict=True)
            ])
            widths[int(key.split(".")[1])] = mlp
    converted = convert_flux_transformer_checkpoint_to_diffusers(state)
    for block, mlp in widths.items():
        prefix = f"single_transformer_blocks.{block}."
        for kind in ("weight", "bias"):
            for name in ("to_q", "to_k", "to_v"):
                converted[f"{prefix}attn.{name}.{kind}"] = converted[f"{prefix}attn.{name}.{kind}"][:inner].clone()
            converted[f"{prefix}proj_mlp.{kind}"] = converted[f"{prefix}proj_mlp.{kind}"][:mlp].clone()
    return converted


def load_flux_transformer(state: dict[str, torch.Tensor], shape: FluxShape, config: Path, dtype: torch.dtype) -> Any:
    from diffusers import FluxTransformer2DModel

    converted = flux_transformer_to_diffusers(state)
    device = next(iter(converted.values())).device
    try:
        return FluxTransformer2DModel.from_single_file(
            converted, config=str(config), subfolder="transformer", torch_dtype=dtype, local_files_only=True,
            guidance_embeds=shape.guidance, device=device,
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot load the Flux transformer with the config {config.name}: {exc}") from exc


def load_unet(path: Path, name: str, config_dirs: list[Path], device: torch.device, dtype: torch.dtype,
              weight_dtype: str = "default") -> FluxDenoiser:
    """UNETLoader: a Flux.1 transformer file; dev (guidance embedding) or schnell (none) from the weights, as
    ComfyUI tells Flux from FluxSchnell. fp8 weight dtypes store the weights in fp8 and compute in `dtype`."""
    from worker.models.single_file import read_device, read_state_dict

    if path.is_dir():
        raise UserError(f"{name} is a folder; UNETLoader loads single Flux transformer files")
    # Flux runs in bf16 where the worker would use fp16 (same memory; ComfyUI does not run schnell in fp16, and
    # fp16 overflows in Flux's activations).
    dtype = torch.bfloat16 if dtype == torch.float16 else dtype
    # fp8 storage is cast on the CPU, so the device never holds the full-precision weights.
    where = read_device(path, device) if weight_dtype == "default" else torch.device("cpu")
    state = strip_unet_prefix(read_state_dict(path, where))
    shape = flux_shape(state, name)
    config = find_flux_config(shape, config_dirs)
    transformer = load_flux_transformer(state, shape, config, dtype)
    del state
    transformer.eval().requires_grad_(False)
    if weight_dtype != "default":  # cast while still on the CPU: the device only ever holds the fp8 weights
        storage = torch.float8_e5m2 if weight_dtype == "fp8_e5m2" else torch.float8_e4m3fn
        transformer.enable_layerwise_casting(storage_dtype=storage, compute_dtype=dtype)
    transformer.to(device)
    if shape.guidance:  # comfy/supported_models.py Flux: ModelSamplingFlux, shift 1.15
        schedule, family, guidance = FlowSchedule.flux(DEV_SHIFT), "flux-dev", DEFAULT_GUIDANCE
    else:  # FluxSchnell: ModelSamplingDiscreteFlow with shift 1.0, multiplier 1.0
        schedule, family, guidance = FlowSchedule.discrete_flow(shift=1.0, multiplier=1.0), "flux-schnell", None
    return FluxDenoiser(transformer=transformer, schedule=schedule, device=device, dtype=dtype, name=name,
                        family=family, default_guidance=guidance)


def _prefix_of(state: dict[str, torch.Tensor], suffix: str) -> str | None:
    return next((key[: -len(suffix)] for key in state if key.endswith(suffix)), None)


def _kind(state: dict[str, torch.Tensor]) -> str:
    if _prefix_of(state, "encoder.final_layer_norm.weight") is not None and any(".layer.0.SelfAttention." in k
                                                                               for k in state):
        return "t5"
    if _prefix_of(state, "embeddings.token_embedding.weight") is not None:
        return "clip"
    return "unknown"


def _load_t5(state: dict[str, torch.Tensor], config: Path, dtype: torch.dtype) -> Any:
    from transformers import T5Config, T5EncoderModel

    prefix = _prefix_of(state, "encoder.final_layer_norm.weight") or ""
    weights = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if "shared.weight" not in weights and "encoder.embed_tokens.weight" in weights:
        weights["shared.weight"] = weights["encoder.embed_tokens.weight"]
    with torch.device("meta"):  # no random init of billions of weights that the file replaces anyway
        model = T5EncoderModel(T5Config.from_pretrained(config / "text_encoder_2", local_files_only=True))
    missing, _ = model.load_state_dict(weights, strict=False, assign=True)
    if model.encoder.embed_tokens.weight.is_meta:
        model.encoder.embed_tokens.weight = model.shared.weight
    missing = [key for key in missing if key != "encoder.embed_tokens.weight"]
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing or left:
        raise UserError(f"the T5 file lacks {len(missing or left)} weights of T5EncoderModel (e.g. {(missing or left)[0]})")
    return model.to(dtype)


def _text_config_matches(folder: Path, kind: str, state: dict[str, torch.Tensor]) -> bool:
    if kind == "t5":
        config = _read_json(folder / "text_encoder_2" / "config.json")
        prefix = _prefix_of(state, "encoder.final_layer_norm.weight") or ""
        width = int(state[prefix + "encoder.final_layer_norm.weight"].shape[0])
        layers = len({k[len(prefix):].split(".")[2] for k in state if k.startswith(prefix + "encoder.block.")})
        return bool(config) and config.get("d_model") == width and config.get("num_layers") == layers
    config = _read_json(folder / "text_encoder" / "config.json")
    prefix = _prefix_of(state, "embeddings.token_embedding.weight") or ""
    width = int(state[prefix + "embeddings.token_embedding.weight"].shape[1])
    layers = len({k.split("encoder.layers.")[1].split(".")[0] for k in state if "encoder.layers." in k})
    return bool(config) and config.get("hidden_size") == width and config.get("num_hidden_layers") == layers


def _clip_l(state: dict[str, torch.Tensor], folder: Path, device: torch.device, dtype: torch.dtype,
            layer: int = -1) -> TextEncoder:
    from transformers import CLIPTokenizer

    from worker.models.single_file import load_clip_l

    prefix = _prefix_of(state, "embeddings.token_embedding.weight") or ""
    prefix = prefix.removesuffix("text_model.")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    model = load_clip_l(state, prefix, folder / "text_encoder").to(device, dtype).eval().requires_grad_(False)
    return TextEncoder(tokenizer=tokenizer, model=model, device=device, layer=layer,
                       chunk_len=min(int(tokenizer.model_max_length), model.config.max_position_embeddings))


CLIP_TYPES = ("flux",)  # DualCLIPLoader types supported here
SINGLE_CLIP_TYPES = ("stable_diffusion",)  # CLIPLoader types supported here


def load_clip(files: list[tuple[str, Path]], clip_type: str, config_dirs: list[Path], device: torch.device,
              dtype: torch.dtype) -> Any:
    """DualCLIPLoader (type flux: CLIP-L + T5-XXL in either order) and CLIPLoader (type stable_diffusion:
    a CLIP-L for SD1.x), from files in transformers' layout."""
    from worker.models.single_file import read_device, read_state_dict

    supported = CLIP_TYPES if len(files) == 2 else SINGLE_CLIP_TYPES
    loader = "DualCLIPLoader" if len(files) == 2 else "CLIPLoader"
    if clip_type not in supported:
        raise UserError(f"{loader} type {clip_type!r} is not supported yet; supported: {', '.join(supported)}")
    states: dict[str, dict[str, torch.Tensor]] = {}
    for name, path in files:
        if path.is_dir():
            raise UserError(f"{name} is a folder; {loader} loads single text encoder files")
        state = read_state_dict(path, read_device(path, device))
        kind = _kind(state)
        if kind == "unknown" or kind in states:
            wanted = "one CLIP-L and one T5-XXL file" if loader == "DualCLIPLoader" else "a CLIP-L file"
            what = "a second " + kind.upper().replace("CLIP", "CLIP-L") if kind in states else _describe(state)
            raise UserError(f"{name}: {loader} type {clip_type!r} needs {wanted}; this is {what}")
        states[kind] = state
    needed = {"clip", "t5"} if clip_type == "flux" else {"clip"}
    if set(states) != needed:
        raise UserError(f"{loader} type {clip_type!r} needs "
                        + ("one CLIP-L and one T5-XXL file" if clip_type == "flux" else "a CLIP-L file"))
    for folder in config_dirs:
        if all(_text_config_matches(folder, kind, state) for kind, state in states.items()):
            break
    else:
        names = ", ".join(f.name for f in config_dirs) or "none"
        raise UserError(f"no config folder in models/configs has text encoders matching these files "
                        f"({', '.join(sorted(states))}); found: {names}. Bake FLUX.1's configs into the image "
                        "with --configs flux-schnell (SD1.5's with sd15), or put the folder there.")
    if clip_type == "stable_diffusion":
        return _clip_l(states["clip"], folder, device, dtype)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"config folder {folder.name} has no usable T5 tokenizer in tokenizer_2/: {exc}") from exc
    t5 = _load_t5(states["t5"], folder, dtype).to(device).eval().requires_grad_(False)
    return FluxTextEncoder(clip_l=_clip_l(states["clip"], folder, device, dtype),
                           t5=T5Encoder(tokenizer=tokenizer, model=t5, device=device))
